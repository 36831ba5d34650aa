"""RNN-T loss on CPU: streamtune's exact loss vs NeMo's ``pytorch`` and ``warprnnt_numba``, side by side.

    python bench/rnnt_loss_cpu.py [--write] [--limit-s 600] [--threads 2]

One batch of random joint outputs per shape: B=8, durations 2 / 8 / 20 / 40 s (T = 25 / 100 / 250 / 500
encoder frames of 80 ms), U = 0.4 T labels (a 1024-piece tokenizer says ~5 tokens per second), V = 129 and
1025. Each loss runs forward + backward in a fresh process (peak RSS of that process above what its inputs
took; the fastest of up to 3 repetitions, first call not counted) under a wall-clock limit. A NeMo loss that
ran past the limit at one T is not attempted at a larger T with the same V (its cost grows at least with T x U);
the table says so.

Also measured: one log-softmax pass over the same joint output (a fresh output tensor, as autograd would
allocate): the memory-bound floor any exact loss pays at least once, forward and once backward.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BATCH = 8
DURATIONS_S = (2, 8, 20, 40)
VOCABS = (129, 1025)
LOSSES = ("streamtune", "pytorch", "warprnnt_numba")


def shape_of(duration_s: int, vocab: int) -> tuple[int, int, int, int]:
    frames = round(duration_s / 0.08)
    return BATCH, frames, round(0.4 * frames), vocab


def child(loss_name: str, shape: list[int], threads: int, reps: int) -> None:
    """One loss on one shape in this fresh process; prints ``RESULT {json}``."""
    import resource
    import time

    import torch

    torch.set_num_threads(threads)
    batch, frames, labels, vocab = shape
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, frames, labels + 1, vocab, generator=gen)
    targets = torch.randint(0, vocab - 1, (batch, labels), generator=gen)
    t_len, u_len = torch.full((batch,), frames), torch.full((batch,), labels)
    if loss_name == "log_softmax_floor":
        def run():
            torch.log_softmax(logits, dim=-1)
    else:
        if loss_name == "streamtune":
            from streamtune.ops.rnnt_loss import register

            register()
        from nemo.collections.asr.losses.rnnt import RNNTLoss

        loss = RNNTLoss(num_classes=vocab - 1, loss_name=loss_name, reduction="mean_batch")

        def run():
            x = logits.requires_grad_(True)
            x.grad = None
            loss(log_probs=x, targets=targets, input_lengths=t_len, target_lengths=u_len).backward()
    if loss_name == "streamtune":
        small = torch.randn(1, 2, 2, vocab).requires_grad_(True)  # compiles the numba lattice (cached on disk)
        loss(log_probs=small, targets=targets[:1, :1], input_lengths=torch.tensor([2]),
             target_lengths=torch.tensor([1])).backward()
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        if times[-1] > 60:  # slow enough that one run says it all
            break
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("RESULT " + json.dumps({"seconds": min(times), "runs": len(times),
                                  "peak_mib": (peak_kib - base_kib) / 1024}), flush=True)


def measure(loss_name: str, shape, threads: int, limit_s: float) -> dict:
    from bench import Watch, wait_quiet

    wait_quiet()
    reps = 4 if loss_name in ("streamtune", "log_softmax_floor") else 2
    cmd = [sys.executable, __file__, "--child", loss_name, "--shape", *map(str, shape), "--threads", str(threads),
           "--reps", str(reps)]
    with Watch() as watch:
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=limit_s)
        except subprocess.TimeoutExpired:
            return {"timeout": True, "others": 0.0}
    if proc.returncode:
        raise SystemExit(f"{loss_name} {shape} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1].splitlines()[0])
    # Other processes' load over the whole child (start-up included): a flag, not a correction.
    return {**result, "others": watch.others}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit-s", type=float, default=600, help="wall-clock limit per NeMo loss run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write the tables into BENCHMARKS.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shape", nargs=4, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.shape, args.threads, args.reps)
        return 0

    from bench import OTHERS_LIMIT, publish, run_header

    rows = {}
    for vocab in VOCABS:
        gave_up: dict[str, int] = {}
        for duration in DURATIONS_S:
            shape = shape_of(duration, vocab)
            for name in ("log_softmax_floor", *LOSSES):
                if name in gave_up:
                    rows[name, shape] = {"skipped_after": gave_up[name]}
                    continue
                r = measure(name, shape, args.threads, args.limit_s)
                rows[name, shape] = r
                if r.get("timeout"):
                    gave_up[name] = duration
                shown = "timeout" if r.get("timeout") else f"{r['seconds'] * 1000:.1f} ms, {r['peak_mib']:.0f} MiB"
                print(f"{name:18s} {shape}: {shown}", flush=True)

    def cell(name, shape):
        r = rows[name, shape]
        if "skipped_after" in r:
            return f"not run (over {args.limit_s / 60:g} min at {r['skipped_after']} s)", "-"
        if r.get("timeout"):
            return f"over {args.limit_s / 60:g} min (stopped)", "-"
        flag = " *" if r["others"] > OTHERS_LIMIT else ""
        return f"{r['seconds'] * 1000:,.1f}{flag}", f"{r['peak_mib']:,.0f}"

    table = ["| B, T, U, V | audio | ours (ms) | NeMo pytorch (ms) | NeMo warprnnt_numba (ms) | ours vs pytorch "
             "| ours vs numba | one log-softmax pass (ms) | ours / pass | peak RSS MiB: ours / pytorch / numba "
             "| ours ns per B·T·U·V |", "|" + "---|" * 11]
    for vocab in VOCABS:
        for duration in DURATIONS_S:
            shape = shape_of(duration, vocab)
            ours, torch_, numba = (rows[n, shape] for n in LOSSES)
            floor = rows["log_softmax_floor", shape]
            speedups = []
            for other in (torch_, numba):
                speedups.append(f"{other['seconds'] / ours['seconds']:,.0f}×" if "seconds" in other else "-")
            cells = {n: cell(n, shape) for n in LOSSES}
            elements = shape[0] * shape[1] * (shape[2] + 1) * shape[3]
            table.append(
                f"| {', '.join(map(str, shape))} | {duration} s | {cells['streamtune'][0]} | {cells['pytorch'][0]} | "
                f"{cells['warprnnt_numba'][0]} | {speedups[0]} | {speedups[1]} | {floor['seconds'] * 1000:,.1f} | "
                f"{ours['seconds'] / floor['seconds']:.1f} | {cells['streamtune'][1]} / {cells['pytorch'][1]} / "
                f"{cells['warprnnt_numba'][1]} | {1e9 * ours['seconds'] / elements:.2f} |")
    worst = max((r.get("others", 0.0) for r in rows.values()), default=0.0)
    text = "\n".join([
        run_header(f"python bench/rnnt_loss_cpu.py --limit-s {args.limit_s:g}",
                   f"other processes used at most {worst:.2f} cores during a run"
                   + (f" (runs marked * above {OTHERS_LIMIT})" if worst > OTHERS_LIMIT else "")),
        "",
        "Forward + backward of one batch of random joint outputs (float32; U = 0.4 T), each loss in a fresh process; "
        "the fastest of up to 4 runs (NeMo's: up to 2, one when it takes over a minute). Peak RSS is the process's "
        "high-water mark above the inputs. \"one log-softmax pass\" allocates and writes a fresh output of the "
        "joint's size: any exact loss reads the joint at least once forward and writes a gradient of its size "
        "backward, so about 2 passes is the floor. The last column is the cost per joint element: flat means cost "
        "grows with T·U·V and no faster.",
        "",
        *table,
    ])
    publish("RNN-T loss on CPU", text, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
