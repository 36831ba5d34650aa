"""Why NeMo's default RNN-T loss slows down on CPU, measured.

    python bench/rnnt_loss_cpu.py --model outputs/demo/runs/tiny_cpu/latest/final.nemo [--calls 60]

For one fixed batch of the demo's dev set, the joint's activations are computed
once from a freshly initialised model and once from the trained model. Each
loss (`warprnnt_numba`, NeMo's default, whose CPU path is a Python loop; and
`pytorch`) then runs forward+backward ``--calls`` times on the same
activations. Times per call are reported for the first and last tenth of the
calls, so a slowdown that comes from *repeated calls* (state that accumulates)
is told apart from one that comes from *what the model has learned* (the
activation values). Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def joint_acts(model, batch):
    from streamtune.models import joint_forward

    with torch.no_grad():
        return joint_forward(model, batch)


def time_loss(loss_name: str, num_classes: int, acts, tokens, enc_len, tok_len, calls: int) -> list[float]:
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    loss_fn = RNNTLoss(num_classes=num_classes, loss_name=loss_name, reduction="mean_batch")
    times = []
    for _ in range(calls):
        x = acts.clone().requires_grad_(True)
        start = time.perf_counter()
        loss = loss_fn(log_probs=x, targets=tokens, input_lengths=enc_len, target_lengths=tok_len)
        loss.backward()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained .nemo (the demo's final.nemo)")
    parser.add_argument("--cuts", default=str(REPO / "outputs/demo/data/cuts_dev.jsonl.gz"))
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from streamtune.data import load_utterances
    from streamtune.models import load_model

    trained = load_model(args.model)
    fresh = load_model(args.model)  # same architecture and tokenizer, weights re-initialised below
    torch.manual_seed(0)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    utts = load_utterances(args.cuts, args.batch)
    audio_len = torch.tensor([len(u.audio) for u in utts])
    audio = torch.zeros(len(utts), int(audio_len.max()))
    for i, u in enumerate(utts):
        audio[i, : len(u.audio)] = torch.from_numpy(u.audio)
    ids = [trained.tokenizer.text_to_ids(u.text) for u in utts]
    tok_len = torch.tensor([len(t) for t in ids])
    tokens = torch.zeros(len(ids), int(tok_len.max()), dtype=torch.long)
    for i, t in enumerate(ids):
        tokens[i, : len(t)] = torch.tensor(t)
    batch = (audio, audio_len, tokens, tok_len)
    num_classes = trained.joint.num_classes_with_blank - 1

    rows = []
    for which, model in (("fresh", fresh), ("trained", trained)):
        acts, toks, enc_len, t_len = joint_acts(model, batch)
        for loss_name in ("warprnnt_numba", "pytorch"):
            times = time_loss(loss_name, num_classes, acts, toks, enc_len, t_len, args.calls)
            tenth = max(1, len(times) // 10)
            first, last = statistics.median(times[:tenth]), statistics.median(times[-tenth:])
            rows.append((which, loss_name, first, last, statistics.median(times)))
            print(f"{which:8s} {loss_name:15s} first {first * 1000:8.1f} ms  last {last * 1000:8.1f} ms  "
                  f"median {statistics.median(times) * 1000:8.1f} ms", flush=True)
    # Does the Python heap matter (garbage collection triggered by the many small tensors)?
    heap_rows = []
    acts, toks, enc_len, t_len = joint_acts(trained, batch)
    for live in (0, 4_000_000):
        heap = [[i] for i in range(live)]  # noqa: F841  (kept alive on purpose)
        before = sum(s["collections"] for s in gc.get_stats())
        times = time_loss("warprnnt_numba", num_classes, acts, toks, enc_len, t_len, max(3, args.calls // 4))
        collections = sum(s["collections"] for s in gc.get_stats()) - before
        heap_rows.append((live, statistics.median(times), collections / len(times)))
        print(f"numba with {live:,} live objects: {statistics.median(times) * 1000:.1f} ms, "
              f"{collections / len(times):.1f} GC collections per call", flush=True)
        del heap
    shape = f"B={len(utts)}, T<={int(acts.shape[1])}, U<={int(acts.shape[2])}, V+1={int(acts.shape[3])}"
    table = ["| activations | loss | first calls (ms) | last calls (ms) | median (ms) |", "|---|---|---|---|---|"]
    table += [f"| {w} | {n} | {f * 1000:.1f} | {l * 1000:.1f} | {m * 1000:.1f} |" for w, n, f, l, m in rows]
    table += ["", "| live Python objects | warprnnt_numba median (ms) | GC collections per call |", "|---|---|---|"]
    table += [f"| {live:,} | {t * 1000:.1f} | {c:.1f} |" for live, t, c in heap_rows]
    text = "\n".join(table)
    print(text)
    if args.write:
        from bench import write_section

        write_section("RNN-T loss on CPU", f"`python bench/rnnt_loss_cpu.py --model {args.model} --calls {args.calls}`"
                      f" — one batch ({shape}), forward+backward, {args.threads} threads, {args.calls} calls each.\n\n"
                      + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
