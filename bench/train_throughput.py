"""Training throughput: our train.py versus NeMo's plain Lightning ``Trainer.fit``, side by side.

    python bench/train_throughput.py [--steps 80] [--warmup 5] [--reps 2] [--write] [key=value ...]
    python bench/train_throughput.py --device cuda --full [--find-max-batch]

Both sides train the same model (the demo recipe; with ``--full`` the target's
geometry, random weights, bf16-mixed, NeMo's default RNN-T loss) on the same
data with the same seed, so they see the same batches (checked: the audio
lengths and losses of every step are compared). "ours" is ``train.main([...])``
with validation off (``data.dev=null``) and W&B disabled, in a scratch run dir;
"plain" is NeMo's own constructor on ``nemo_model_config(cfg)`` and a bare
``pl.Trainer(...).fit(model)`` with the same precision, clipping and
accumulation and nothing else (no logger, checkpoints or progress bar). Both
sides compute the joint the way train.py does (on CPU its relu + dropout fused,
``streamtune/ops/joint.py``), so the ratio is the cost of the harness alone.

Every run is a fresh process. One timing callback, the same on both sides,
times the steps after ``--warmup`` (end of the last warm-up step to end of the
last step: data loading, logging and callbacks included) and counts audio
seconds from batch[1]. Runs alternate (ours, plain, ours, ...) against drift;
medians are reported. The machine may be shared: each run waits for other
processes to go quiet, the CPU cores they use during the timed window are
measured ("others"), and on CPU a disturbed run is discarded and run again
(twice at most). ``--find-max-batch`` (CUDA) doubles data.batch_duration_s on our side
until it runs out of GPU memory. Extra ``key=value`` overrides go to both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import OTHERS_LIMIT, cpu_ticks, others_seconds, wait_quiet  # noqa: E402

RECIPE = "recipes/demo/tiny_cpu.yaml"
DATA = REPO / "outputs/demo/data"


def timer_callback(warmup: int, steps: int, sample_rate: int):
    """The one timing callback both sides use: no host sync per step (tensors are kept, read at the end)."""
    import time

    import lightning.pytorch as pl
    import torch

    class StepTimer(pl.Callback):
        def __init__(self):
            self.start = self.end = None
            self.audio, self.losses, self.first_timed, self.others = [], [], None, 0.0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.audio.append(batch[1].sum())
            loss = outputs.get("loss") if isinstance(outputs, dict) else None
            self.losses.append(loss.detach() if loss is not None else torch.tensor(float("nan")))
            step = trainer.global_step
            if step >= trainer.max_steps or (step == warmup and self.start is None):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if self.start is None:
                    self.start, self.first_timed, self.ticks = time.perf_counter(), len(self.audio), cpu_ticks()
                else:
                    self.end, ticks = time.perf_counter(), cpu_ticks()
                    self.others = others_seconds(self.ticks, ticks)

        def result(self) -> dict:
            import resource

            audio = [int(a) for a in self.audio]
            return {
                "steps": steps, "seconds": self.end - self.start,
                "audio_s": sum(audio[self.first_timed:]) / sample_rate,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
                "threads": torch.get_num_threads(), "others_cores": self.others / (self.end - self.start),
                "audio": audio, "losses": [float(x) for x in self.losses],
            }

    return StepTimer()


def child(side: str, overrides: list[str], warmup: int) -> None:
    """One run in this (fresh) process; prints ``RESULT {json}``."""
    from streamtune.config.loading import load_config

    cfg = load_config(RECIPE, overrides)
    timer = timer_callback(warmup, cfg.trainer.max_steps - warmup, cfg.model.sample_rate)
    if side in ("ours", "ours-nosync"):
        import streamtune.training.trainer
        from streamtune.stages import train
        from streamtune.training.callbacks import SkipNonFinite, Throughput

        build_trainer = streamtune.training.trainer.build_trainer

        def with_timer(*args, **kwargs):
            trainer = build_trainer(*args, **kwargs)
            if side == "ours-nosync":  # the callbacks that read a GPU value on the host every step
                trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, (SkipNonFinite, Throughput))]
            trainer.callbacks.append(timer)
            return trainer

        streamtune.training.trainer.build_trainer = with_timer
        assert train.main(["--config", RECIPE, *overrides]) == 0
    else:
        import lightning.pytorch as pl
        import torch

        from streamtune.model.nemo_config import model_class, nemo_model_config
        from streamtune.ops.joint import use_fast_joint
        from streamtune.ops.rnnt_loss import register

        register()  # the recipe's model.loss.loss_name may be streamtune's

        t = cfg.trainer
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        pl.seed_everything(cfg.run.seed, workers=True, verbose=False)
        trainer = pl.Trainer(max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices,
                             precision=t.precision, gradient_clip_val=t.gradient_clip_val,
                             accumulate_grad_batches=t.accumulate_grad_batches, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, use_distributed_sampler=False,
                             callbacks=[timer])
        model = model_class(cfg.model.target)(cfg=nemo_model_config(cfg), trainer=trainer)
        use_fast_joint(model.joint)  # as train.py's model: the ratio is the harness's cost, the losses equal
        trainer.fit(model)
    print("RESULT " + json.dumps(timer.result()), flush=True)


def run_side(side: str, overrides: list[str], warmup: int, steps: int, quiet_wait: float = 300,
             timeout: float | None = None) -> dict | None:
    """Run one side in a subprocess (after waiting for other processes to go quiet); None when out of GPU memory."""

    if quiet_wait:
        wait_quiet(quiet_wait)
    with tempfile.TemporaryDirectory() as tmp:
        args = [*overrides, f"trainer.max_steps={warmup + steps}", f"run.output_dir={tmp}"]
        proc = subprocess.run([sys.executable, __file__, "--child", side, "--warmup", str(warmup), *args],
                              cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        if "out of memory" in (proc.stdout + proc.stderr).lower():
            return None
        raise SystemExit(f"{side} run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.rsplit("RESULT ", 1)[1].splitlines()[0])


def rates(r: dict) -> tuple[float, float]:
    return r["steps"] / r["seconds"], r["audio_s"] / r["seconds"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=80, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps before timing starts")
    parser.add_argument("--reps", type=int, default=2, help="runs per side, interleaved")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--full", action="store_true", help="the target's full geometry (CUDA), bf16-mixed")
    parser.add_argument("--find-max-batch", action="store_true",
                        help="(CUDA) double data.batch_duration_s until out of memory")
    parser.add_argument("--quiet-wait", type=float, default=600,
                        help="seconds to wait, before each run, for other processes to go quiet")
    parser.add_argument("--write", action="store_true", help="write the results into BENCHMARKS.md")
    parser.add_argument("--child", choices=["ours", "ours-nosync", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for both sides")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.overrides, args.warmup)
        return 0
    if not (DATA / "cuts_train.jsonl.gz").exists() or not (DATA / "tokenizer/tokenizer.model").exists():
        raise SystemExit(f"no demo data in {DATA}: run `make demo-data` first")
    if (args.full or args.find_max_batch) and args.device != "cuda":
        raise SystemExit("--full and --find-max-batch need --device cuda")

    # Precision is explicit so that both sides run the same one (a recipe may say "auto").
    overrides = ["data.dev=null", "logger.wandb_mode=disabled"]
    if args.device == "cuda":
        overrides += ["trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed"]
    else:
        overrides += ["trainer.accelerator=cpu", "trainer.precision=32-true"]
    if args.full:
        from bench.geometry import FULL

        overrides += [*FULL, "model.loss.loss_name=default"]
    overrides += args.overrides

    # On CPU other processes take cores from the run; elsewhere loader workers would count as "others".
    cpu = args.device == "cpu"
    quiet_wait = args.quiet_wait if cpu else 0
    results = {"ours": [], "plain": []}
    for rep in range(args.reps):
        for side in results:
            for _ in range(3):  # a run disturbed by other processes is discarded and run again
                r = run_side(side, overrides, args.warmup, args.steps, quiet_wait)
                if not cpu or r["others_cores"] <= OTHERS_LIMIT:
                    break
                print(f"  discarded {side} run: other processes used {r['others_cores']:.1f} cores", flush=True)
            results[side].append(r)
            print(f"{side:5s} run {rep + 1}: {rates(r)[0]:.3f} steps/s, {rates(r)[1]:.1f} audio s/s, "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB, others {r['others_cores']:.2f} cores", flush=True)
    runs = results["ours"] + results["plain"]
    same_batches = all(r["audio"] == runs[0]["audio"] for r in runs)
    loss_diff = max(abs(a - b) for r in runs for a, b in zip(r["losses"], runs[0]["losses"]))
    gpu = args.device == "cuda"
    table = ["| side | steps/s | steps/s of each run | audio s/s | ms/step | peak RSS (MiB) |"
             + (" GPU peak (MiB) |" if gpu else "") + " others (cores, max) |",
             "|---|---|---|---|---|---|---|" + ("---|" if gpu else "")]
    med = {}
    for side, rs in results.items():
        steps_s, audio_s = (statistics.median(x) for x in zip(*map(rates, rs)))
        med[side] = steps_s
        rss = statistics.median(r["peak_rss_mib"] for r in rs)
        each = ", ".join(f"{rates(r)[0]:.2f}" for r in rs)
        row = f"| {side} | {steps_s:.3f} | {each} | {audio_s:.1f} | {1000 / steps_s:.0f} | {rss:.0f} |"
        row += f" {statistics.median(r['gpu_peak_mib'] for r in rs):.0f} |" if gpu else ""
        table.append(row + f" {max(r['others_cores'] for r in rs):.2f} |")
    ratio = med["ours"] / med["plain"]
    n = len(runs[0]["audio"])
    table += ["", f"Ratio ours/plain (steps/s): **{ratio:.3f}** (target >= 0.95). "
              f"Same batches on every run: {'yes' if same_batches else 'NO'} ({n} steps); "
              f"largest loss difference between runs: {loss_diff:.2g}."]
    busiest = max(r["others_cores"] for r in runs)
    if cpu and busiest > OTHERS_LIMIT:
        table += ["", f"**Warning: other processes used up to {busiest:.1f} cores during a timed window; "
                  "these numbers are not comparable. Rerun on a quiet machine.**"]

    if args.find_max_batch:
        table += ["", "| data.batch_duration_s (data.batch_size=null) | steps/s | audio s/s | GPU peak (MiB) |",
                  "|---|---|---|---|"]
        from streamtune.config.loading import load_config

        size = float(load_config(RECIPE, overrides).data.batch_duration_s)
        largest = None
        while size <= 65536:
            r = run_side("ours", [*overrides, f"data.batch_duration_s={size:g}", "data.batch_size=null"],
                         args.warmup, 5, quiet_wait)
            if r is None:
                table.append(f"| {size:g} | out of memory | | |")
                break
            largest = size
            table.append(f"| {size:g} | {rates(r)[0]:.3f} | {rates(r)[1]:.1f} | {r['gpu_peak_mib']:.0f} |")
            print(table[-1], flush=True)
            size *= 2
        table.append(f"\nLargest batch that fit: **{largest:g} s** of audio per batch." if largest
                     else "\nNot even the first size fit.")

    text = "\n".join(table)
    print(text)
    if args.write:
        from bench import write_section

        threads = runs[0]["threads"]
        command = shlex.join(["python", "bench/train_throughput.py", *(argv if argv is not None else sys.argv[1:])])
        write_section("Training throughput", f"`{command}` — {RECIPE} with {' '.join(overrides)}; device "
                      f"{args.device}, {os.cpu_count()} CPU cores, {threads} torch threads; {args.steps} timed steps "
                      f"after {args.warmup} warm-up steps, {args.reps} runs per side interleaved, medians. "
                      "\"ours\" = `train.main`, \"plain\" = bare `pl.Trainer.fit` on the same NeMo model.\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
