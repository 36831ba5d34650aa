"""streamtune's streaming runner vs NeMo 3.0's own cache-aware pipeline (``CacheAwareRNNTPipeline``), side by
side on the demo test set: do they write the same words, and what does each spend per second of audio?

    python bench/nemo_pipeline.py [--write] [--chunk-ms 560] [--streams 16]

NeMo's pipeline is built by its own ``PipelineBuilder`` from a config like NeMo's
``examples/asr/conf/asr_streaming_inference/cache_aware_rnnt.yaml`` (greedy RNN-T, no ITN, no punctuation model,
end-of-utterance detection off) on the demo ``.nemo`` at the same ``att_context_size``, fed the test set's wav
files, ``--streams`` at a time. Ours: ``StreamingRunner.streaming`` on the same audio, ``--streams`` at a time,
features included in the timing (NeMo's pipeline computes its own per chunk). Both in this process, alternating,
best of two. Untimed, per chunk mode: NeMo's log-mel chunks (recorded as its bufferer writes them) against ours, and
our runner fed those features or in its other feedings, to show where the words part.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def nemo_pipeline(model_path: Path, att_context: list[int], streams: int):
    from nemo.collections.asr.inference.factory.pipeline_builder import PipelineBuilder
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({
        "asr": {"model_name": str(model_path), "device": "cpu", "device_id": 0, "compute_dtype": "float32",
                "use_amp": False,
                "decoding": {"strategy": "greedy_batch", "fused_batch_size": -1,
                             "greedy": {"max_symbols": 10, "use_cuda_graph_decoder": False,
                                        "preserve_frame_confidence": False}}},
        "itn": {"input_case": "lower_cased", "whitelist": None, "overwrite_cache": False,
                "max_number_of_permutations_per_split": 729, "left_padding_size": 4, "batch_size": 32, "n_jobs": 1},
        "confidence": {"exclude_blank": True, "aggregation": "mean",
                       "method_cfg": {"name": "entropy", "entropy_type": "tsallis", "alpha": 0.5,
                                      "entropy_norm": "exp"}},
        "endpointing": {"stop_history_eou": -1, "residue_tokens_at_end": 0},
        "streaming": {"sample_rate": 16000, "batch_size": streams, "num_slots": 2 * streams,
                      "word_boundary_tolerance": 4, "att_context_size": att_context, "use_cache": True,
                      "use_feat_cache": True, "chunk_size_in_secs": None, "request_type": "frame"},
        "matmul_precision": "highest", "log_level": 40, "pipeline_type": "cache_aware", "asr_decoding_type": "rnnt",
        "enable_itn": False, "enable_nmt": False, "asr_output_granularity": "segment", "cache_dir": None,
        "lang": None, "return_tail_result": False})
    return PipelineBuilder.build_pipeline(cfg)


class FeatureSpy:
    """Records the log-mel chunks NeMo's pipeline computes, per stream (wraps its bufferer; behaviour unchanged)."""

    def __enter__(self):
        from collections import defaultdict

        from nemo.collections.asr.inference.streaming.buffering import cache_feature_bufferer as cfb

        self.cls, self.orig, self.chunks = cfb.BatchedCacheFeatureBufferer, \
            cfb.BatchedCacheFeatureBufferer._update_feature_buffer, defaultdict(list)
        spy = self

        def update(bufferer, slot_ids, feat_chunk):
            for i, slot in enumerate(slot_ids):
                spy.chunks[bufferer.slotidx2streamidx[slot]].append(feat_chunk[i].clone())
            return spy.orig(bufferer, slot_ids, feat_chunk)

        self.cls._update_feature_buffer = update
        return self

    def __exit__(self, *exc):
        self.cls._update_feature_buffer = self.orig

    def features(self, stream_id, frames: int):
        import torch

        return torch.cat(self.chunks[stream_id], dim=1)[:, :frames]


def main(argv=None) -> int:
    from bench import Guard, add_demo_args, demo_inputs, publish, run_header

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk-ms", type=int, nargs="+", default=[560, 160])
    parser.add_argument("--streams", type=int, default=16)
    add_demo_args(parser)
    args = parser.parse_args(argv)

    from streamtune.data.text import normalise_text
    from streamtune.evaluation.metrics import corpus_scores
    from streamtune.model.build import load_model
    from streamtune.model.chunks import chunk_modes
    from streamtune.streaming.runner import StreamingRunner

    model_path, utts = demo_inputs(args)
    files = [u.source for u in utts]
    if not all(files):
        raise SystemExit("the test cuts must point at wav files")
    audio_s = sum(u.duration_s for u in utts)
    refs = [u.text for u in utts]
    model = load_model(model_path)
    runner = StreamingRunner(model, batch_size=args.streams)
    guard = Guard()
    guard.wait_quiet()
    lines = ["| chunk | ours WER | NeMo pipeline WER | utterances with the same words | ours RTFx | NeMo RTFx "
             "| NeMo / ours (compute per audio s) |", "|---|---|---|---|---|---|---|"]
    notes, probes = [], []
    for ms in args.chunk_ms:
        mode = next(m for m in chunk_modes(model) if m.chunk_ms == ms)
        pipe = nemo_pipeline(model_path, list(mode.att_context), args.streams)

        def ours(mode=mode):
            began = time.perf_counter()
            out = runner.streaming(mode, [runner.features(u.audio) for u in utts])
            return time.perf_counter() - began, out.texts

        def theirs(pipe=pipe):
            began = time.perf_counter()
            out = pipe.run(files)
            return time.perf_counter() - began, [out[k]["text"] for k in sorted(out)]

        # Untimed: where NeMo's pipeline departs from ours. Its log-mel (computed chunk by chunk) against ours
        # (the whole utterance's), and whether our runner reproduces its words fed its features, or in our
        # other feedings (fixed windows after silence, as an export does; NeMo-style zero-filled look-back).
        ours_feats = [runner.features(u.audio) for u in utts]
        with FeatureSpy() as spy:
            pipe.run(files)
        nemo_feats = [spy.features(k, f.shape[1]) for k, f in zip(sorted(spy.chunks), ours_feats)]
        step = spy.chunks[0][0].shape[1]  # every chunk NeMo's bufferer writes has this many frames
        diff = [(n - f[:, : n.shape[1]]).abs().amax(dim=0) for n, f in zip(nemo_feats, ours_feats)]
        where = {"boundary": [0.0], "last": [0.0], "inside": [0.0]}
        for d in diff:
            last_start = (len(d) - 1) // step * step
            for i, value in enumerate(d.tolist()):
                kind = "last" if i >= last_start else "boundary" if i and i % step in (0, step - 1) else "inside"
                where[kind].append(value)
        edge, tail, inside = (max(where[k]) for k in ("boundary", "last", "inside"))
        export = StreamingRunner(model, batch_size=args.streams, feeding="export")
        variants = {"ours on NeMo's features": runner.streaming(mode, nemo_feats).texts,
                    "ours, export feeding": export.streaming(mode, [export.features(u.audio) for u in utts]).texts,
                    "ours, zero-filled look-back": StreamingRunner(model, batch_size=args.streams,
                                                                   zero_fill_pre_cache=True)
                    .streaming(mode, ours_feats).texts}

        best = {}
        for _ in range(2):
            for name, fn in (("ours", ours), ("nemo", theirs)):
                (seconds, texts), _ = guard.run(f"{name} {ms} ms", fn)
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, texts)
        (ours_s, ours_t), (nemo_s, nemo_t) = best["ours"], best["nemo"]
        def agree(texts):
            return sum(normalise_text(a, True, True) == normalise_text(b, True, True) for a, b in zip(texts, nemo_t))

        same = agree(ours_t)
        probes.append(f"| {ms} ms | {step} | {edge:.2f} | {tail:.2f} | {inside:.2g} | "
                      + " | ".join(f"{agree(t)} ({100 * corpus_scores(refs, t)[0].words.wer:.2f} %)"
                                   for t in variants.values()) + " |")
        lines.append(f"| {ms} ms | {100 * corpus_scores(refs, ours_t)[0].words.wer:.2f} % "
                     f"| {100 * corpus_scores(refs, nemo_t)[0].words.wer:.2f} % | {same} of {len(utts)} "
                     f"| {audio_s / ours_s:.1f} | {audio_s / nemo_s:.1f} | {nemo_s / ours_s:.2f} |")
        notes += [f"* {ms} ms, `{u.id}`: ours \"{a}\", NeMo \"{b}\"" for u, a, b in zip(utts, ours_t, nemo_t)
                  if normalise_text(a, True, True) != normalise_text(b, True, True)][:3]
        print(lines[-1], flush=True)
    header = run_header(f"python bench/nemo_pipeline.py {' '.join(argv if argv is not None else sys.argv[1:])}".strip(),
                        f"demo model, {len(utts)} test utterances ({audio_s:.0f} s), {args.streams} streams at a "
                        f"time on both sides; {guard.redone} measurements redone")
    probe_head = ["| chunk | NeMo's feature chunk (frames) | log-mel max abs diff: chunk boundaries (a chunk's "
                  "last and the next one's first frame) | the utterance's last chunk | elsewhere "
                  "| ours on NeMo's features: same words as NeMo (WER) | ours, export feeding "
                  "| ours, zero-filled look-back |", "|---|---|---|---|---|---|---|---|"]
    explain = ("Ours is exact streaming: it equals offline decoding of the same model token for token "
               "(tests/test_streaming.py), so the differences are where NeMo's pipeline departs from offline "
               "decoding. Two departures were measured (untimed runs, table below): it computes the log-mel chunk "
               "by chunk with one hop of audio look-back, so the frames at every chunk boundary (whose 25 ms STFT "
               "windows reach past the audio it gives them) and the final chunk's differ from the whole "
               "utterance's; and fed exactly its features our runner still writes other "
               "words, so the features alone do not explain it. The other departure, read in its code "
               "(`CacheAwareRNNTPipeline`, `BatchedCacheFeatureBufferer`) and not isolated by a measurement: every "
               "step, the first included, takes `chunk_size[1]` frames after a pre-encode cache filled with log-mel "
               "zero (-16.6), where the model's streaming config starts with a shorter first chunk, so its chunk "
               "grid and first-step context are neither offline's nor those of our export feeding (silence before "
               "the audio, as an ONNX export runs) nor NeMo's older zero-filled look-back.")
    publish("Streaming: streamtune's runner vs NeMo's CacheAwareRNNTPipeline",
            "\n".join([header, "", *lines, "", explain, "", *probe_head, *probes, "",
                       "Differing utterances (up to 3 per chunk mode):", "", *(notes or ["* none"])]), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
