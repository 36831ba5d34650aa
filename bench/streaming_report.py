"""The BENCHMARKS.md section of ``bench/streaming.py``: tables, how it was measured, and what they say."""

from __future__ import annotations

HOW = """How: the features of every stream are computed first (the same work for both sides; not timed). \
Cache-aware = `StreamingRunner.streaming`, the one streaming loop evaluate and export use, timed through its \
per-step hook: `encoder.cache_aware_stream_step` per chunk with the three caches carried, then greedy RNN-T \
(`greedy_batch`) with the hypotheses carried. Buffered = NeMo's buffered RNN-T inference (`BatchedFrameASRRNNT` as \
`speech_to_text_buffered_infer_rnnt.py` drives it) re-implemented on the same features (`bench/buffered.py`): each \
step encodes a whole window, left context + chunk + look-ahead, of about 4 s (NeMo's default \
`total_buffer_in_secs`; silence before the start, padding after the end, as NeMo pads), with the same model in the \
same `att_context_size`, decodes all of it (stateless `greedy_batch` with `preserve_alignments`, as that script \
sets) and keeps the tokens of the chunk's frames. Its latency, chunk + look-ahead, equals the cache-aware chunk, \
with look-ahead 0: at a fixed latency a look-ahead L shrinks the chunk to latency - L and multiplies the buffered \
steps by latency / (latency - L), so 0 is buffered's cheapest setting (and with the chunked attention mask it gives \
each frame the same right context as cache-aware). The left context is a whole number of chunks, so that the kept \
chunk sits on the model's attention-chunk grid. Timed per step: the encoder call and the greedy RNN-T call (for all \
N streams at once). Repetitions alternate the side that goes first; a repetition during which other processes used \
more than `bench.OTHERS_LIMIT` cores is redone after they go quiet (up to 3 tries)."""


def span(xs: list[float]) -> str:
    lo, hi = f"{min(xs):.2f}", f"{max(xs):.2f}"
    return lo if lo == hi else f"{lo}-{hi}"


def findings(results: dict) -> list[str]:
    """Facts read off the tables (no more)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in results["compare"]):
        parts = []
        for n in dict.fromkeys(r["n"] for r in results["compare"] if r["model"] == model):
            rs = [r for r in results["compare"] if r["model"] == model and r["n"] == n]
            ratios, enc = [r["ratio"] for r in rs], [r["enc_ratio"] for r in rs]
            parts.append(f"N={n}: {span(ratios)} (encoder only {span(enc)}) over "
                         f"{', '.join(str(r['ms']) for r in rs)} ms")
        out.append(f"(a) {model}: buffered / cache-aware compute " + "; ".join(parts) + ".")
    for model in dict.fromkeys(r["model"] for r in results["growth"]):
        rs = [r for r in results["growth"] if r["model"] == model]
        out.append(f"(b) {model}: compute per audio second at {rs[-1]['audio_s']:g} s / at {rs[0]['audio_s']:g} s "
                   f"= {rs[-1]['cost'] / rs[0]['cost']:.2f}; {rs[0]['cache']:,.0f} cache bytes per stream.")
    return out


def report(results: dict) -> str:
    out = ["**(a) Compute per audio second, cache-aware vs buffered at the same latency.** Seconds of compute "
           "(encoder + greedy RNN-T) per second of audio per stream, N streams in one batch on both sides, median "
           "of the interleaved repetitions. Ratio = buffered / cache-aware: how many more streams the same compute "
           "serves cache-aware. \"Encoder only\" leaves out both sides' decoding (buffered decodes the whole "
           "window each step, as NeMo's buffered RNN-T does).",
           "", "| model | mode | N | audio per stream (s) | buffered window (left + chunk + look-ahead) | steps "
           "(cache-aware / buffered) | tokens/s (cache-aware / buffered) | cache-aware s/s (encoder) | buffered s/s "
           "(encoder) | **ratio** | ratio of each rep | encoder-only ratio | others (cores, max) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["compare"]:
        out.append(f"| {r['model']} | {r['mode']} | {r['n']} | {r['audio_s']:g} "
                   f"| {r['window'].describe(r['frame_ms'])} "
                   f"| {r['steps']['cache-aware']} / {r['steps']['buffered']} | {r['tokens']['cache-aware']:.1f} / "
                   f"{r['tokens']['buffered']:.1f} | {r['cache_aware_s']:.4f} ({r['cache_aware_encoder_s']:.4f}) | "
                   f"{r['buffered_s']:.4f} ({r['buffered_encoder_s']:.4f}) | **{r['ratio']:.2f}** | "
                   f"{', '.join(f'{x:.2f}' for x in r['ratios'])} | {r['enc_ratio']:.2f} | {r['others']:.2f} |")
    for s in results["sanity"]:
        out += ["", f"Both sides decode (demo model, {s['mode']}, first {s['utts']} test utterances): WER "
                f"cache-aware {100 * s['ca_wer']:.1f} %, buffered {100 * s['bu_wer']:.1f} % (buffered attends to the "
                "silence padding before the start; cache-aware masks its empty cache)."]
    out += ["", "**(b) Cache-aware cost vs audio length, and state per stream.** Cache = the three encoder cache "
            "tensors (`cache_last_channel`, `cache_last_time`, `cache_last_channel_len`) for one stream: fixed-size "
            "tensors a step reads and returns whatever the audio length; decoder state = the prediction net's LSTM "
            "state (h, c) for one stream.",
            "", "| model | mode | N | audio (s) | steps | compute (s per audio s) | each rep | cache bytes per stream "
            "| cache shapes | decoder state bytes per stream | others (cores, max) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["growth"]:
        out.append(f"| {r['model']} | {r['mode']} | {r['n']} | {r['audio_s']:g} | {r['steps']} | {r['cost']:.4f} | "
                   f"{', '.join(f'{x:.4f}' for x in r['costs'])} | {r['cache']:,.0f} | "
                   f"{' '.join('x'.join(map(str, s)) for s in r['shapes'])} | {r['decoder']:,.0f} | "
                   f"{r['others']:.2f} |")
    out += ["", "**(c) Most concurrent streams in real time.** One batch of N streams; a step = encoder step + greedy "
            "RNN-T for all N; real time when the p95 step time <= the chunk. N doubles from 1, then bisection "
            "(to within 1 stream or 3 %).",
            "", "| model | mode | max N in real time | p50 step (ms) | p95 step (ms) | probes (N: p95 ms) | "
            "others (cores, max) |", "|---|---|---|---|---|---|---|"]
    for r in results["realtime"]:
        n = f"**{r['max_n']}**" + (" (cap reached)" if r["capped"] else "")
        at = "" if r["max_n"] else " at N=1"
        probes = ", ".join(f"{k}: {v[1] * 1000:.0f}" for k, v in r["probes"].items())
        out.append(f"| {r['model']} | {r['mode']} | {n} | {r['p50'] * 1000:.1f}{at} | {r['p95'] * 1000:.1f}{at} | "
                   f"{probes} | {r['others']:.2f} |")
    out += ["", HOW, "", "Findings (read off the tables above):", "", *[f"* {x}" for x in findings(results)]]
    return "\n".join(out)
