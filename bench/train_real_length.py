"""Fine-tuning on real-length speech on CPU: the demo model on generated 8–40 s utterances, side by side with
the demo's own 2 s clips, with streamtune's RNN-T loss and with NeMo's ``pytorch`` loss.

    python bench/train_real_length.py [--steps 200] [--write]

Needs the demo (``make demo``: its final.nemo and data). Generates, once, 300 paragraph-length utterances
(``python -m data_prep synthetic --min-words 25 --max-words 110``: about 9–45 s; those over
``data.max_duration_s=40`` are skipped and counted, as in any run) and runs the real ``train.py``, each run a
fresh process, starting from the demo's ``final.nemo`` (recipe ``recipes/demo/tiny_cpu.yaml``, validation off):

* long utterances, streamtune loss, duration bucketing (``data.num_buckets=30``, the schema's default): ``--steps``
  steps;
* long utterances, streamtune loss, no bucketing (``data.num_buckets=0``): a quarter of the steps, for the
  padding ratio and its cost;
* long utterances, NeMo ``pytorch`` loss: capped at ``--pytorch-steps`` steps and ``--limit-s`` seconds, and
  extrapolated (the table says so);
* the demo's 2 s clips as the demo trains on them (no bucketing), streamtune loss and NeMo ``pytorch`` loss:
  ``--steps`` steps each.
* the first and fourth again logging every step (a quarter of the steps each): what NeMo's training-batch WER
  decode at each logging step costs on long and on short speech.

Runs log every ``trainer.log_every_n_steps=10`` steps (the schema's default); NeMo decodes the training batch for
``training_batch_wer`` at those steps only, as in any run. Rates come from the run's own ``metrics.csv``
(``train_step_s``, ``train_audio_s``, ``train_pad_ratio``: each row the mean of the steps since the last row), the
first 10 steps (warm-up) left out. A last table splits one long batch (the median bucket) into encoder, prediction net +
joint and loss, forward and backward, with streamtune's fused joint (what training runs) and NeMo's, and times
the training-batch WER decode.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RECIPE = "recipes/demo/tiny_cpu.yaml"
DEMO_MODEL = REPO / "outputs/demo/runs/tiny_cpu/latest/final.nemo"
DEMO_DATA = REPO / "outputs/demo/data"
LONG_DATA = REPO / "outputs/bench/long"
LONG_CMD = ["-m", "data_prep", "synthetic", "--out", str(LONG_DATA), "--num-train", "300", "--num-dev", "0",
            "--num-test", "0", "--min-words", "25", "--max-words", "110", "--id-prefix", "long", "--seed", "5"]
LOG_EVERY = 10  # trainer.log_every_n_steps: the schema's default
EVERY_STEP_LONG = "8–40 s, streamtune loss, bucketing, logging every step"
EVERY_STEP_DEMO = "2 s clips (demo data), streamtune loss, logging every step"


def train_run(name: str, overrides: list[str], steps: int, limit_s: float | None = None,
              every: int | None = None) -> dict:
    """One train.py run in a fresh process; rates from its metrics.csv (steps after the warm-up)."""
    from bench import Watch, wait_quiet

    wait_quiet()
    with tempfile.TemporaryDirectory() as tmp:
        # A run capped below two logging intervals (NeMo's loss on long speech) logs every step instead.
        every = every or (LOG_EVERY if steps >= 2 * LOG_EVERY else 1)
        cmd = [sys.executable, "train.py", "--config", RECIPE, f"model.init_from={DEMO_MODEL}", "data.dev=null",
               "data.max_duration_s=40", "logger.wandb_mode=disabled", "trainer.enable_progress_bar=false",
               f"trainer.log_every_n_steps={every}", f"trainer.max_steps={steps}", f"run.output_dir={tmp}",
               *overrides]
        timed_out = False
        with Watch() as watch:
            try:
                proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=limit_s)
                if proc.returncode:
                    raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            except subprocess.TimeoutExpired:
                timed_out = True
        metrics = next(Path(tmp).glob("*/*/logs/metrics.csv"), None)
        rows = list(csv.DictReader(open(metrics))) if metrics else []
    steps_s = [float(r["train_step_s"]) for r in rows if r.get("train_step_s")]
    audio_s = [float(r["train_audio_s"]) for r in rows if r.get("train_audio_s")]
    pads = [float(r["train_pad_ratio"]) for r in rows if r.get("train_pad_ratio")]
    skip = max(1, LOG_EVERY // every)  # the first 10 steps: warm-up
    timed = slice(skip, None) if len(steps_s) > 2 * skip else slice(None)
    out = {"name": name, "steps": len(steps_s) * every, "timed_out": timed_out, "others": watch.others,
           "wall_s": watch.seconds}
    if steps_s:
        seconds = sum(steps_s[timed])
        out.update(step_s=seconds / len(steps_s[timed]), audio_s_per_s=sum(audio_s[timed]) / seconds,
                   audio_per_step_s=sum(audio_s[timed]) / len(audio_s[timed]), pad_ratio=sum(pads) / len(pads))
    print(f"{name}: {json.dumps(out)}", flush=True)
    return out


def split_one_batch(threads: int, fused: bool = True) -> tuple[dict[str, float], tuple, float, float]:
    """Encoder / prediction net + joint / loss, forward and backward, on one long batch from the median bucket,
    and the training-batch WER decode NeMo runs at each logging step.

    ``fused``: the joint's hidden layer as training runs it (``streamtune.ops.joint``), else NeMo's own code.
    """
    import time

    import torch
    from lhotse import CutSet

    from streamtune.model.build import load_model
    from streamtune.ops.joint import use_fast_joint
    from streamtune.ops.rnnt_loss import register

    torch.set_num_threads(threads)
    register()
    model = load_model(DEMO_MODEL)
    # A .nemo written by train.py names NeMo's default loss (portable); time the loss the runs above train with.
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    model.loss = RNNTLoss(num_classes=model.joint.num_classes_with_blank - 1, loss_name="streamtune")
    model.train()
    if fused:
        assert use_fast_joint(model.joint)
    cuts = sorted(CutSet.from_file(LONG_DATA / "cuts_train.jsonl.gz"), key=lambda c: c.duration)
    middle = len(cuts) // 2
    batch_cuts = cuts[middle - 1: middle + 1]  # ~50 s of audio: about one batch of data.batch_duration_s
    audio = [torch.from_numpy(c.load_audio()[0]) for c in batch_cuts]
    audio_len = torch.tensor([len(a) for a in audio])
    signal = torch.nn.utils.rnn.pad_sequence(audio, batch_first=True)
    ids = [model.tokenizer.text_to_ids(c.supervisions[0].text) for c in batch_cuts]
    tokens_len = torch.tensor([len(t) for t in ids])
    tokens = torch.nn.utils.rnn.pad_sequence([torch.tensor(t) for t in ids], batch_first=True)
    parts, wer_s = {}, 0.0
    for _ in range(3):  # the last repetition counts (the first ones warm caches and the compiled kernels)
        model.zero_grad()
        t0 = time.perf_counter()
        encoded, encoded_len = model(input_signal=signal, input_signal_length=audio_len)
        t1 = time.perf_counter()
        decoder, target_len, _ = model.decoder(targets=tokens, target_length=tokens_len)
        joint = model.joint(encoder_outputs=encoded, decoder_outputs=decoder)
        t2 = time.perf_counter()
        loss = model.loss(log_probs=joint, targets=tokens, input_lengths=encoded_len, target_lengths=target_len)
        t3 = time.perf_counter()
        (grad_joint,) = torch.autograd.grad(loss, joint, retain_graph=True)
        t4 = time.perf_counter()
        joint.backward(grad_joint)
        t5 = time.perf_counter()
        parts = {"encoder forward": t1 - t0, "prediction net + joint forward": t2 - t1, "loss forward": t3 - t2,
                 "loss backward": t4 - t3, "joint, prediction net, encoder backward": t5 - t4}
        t6 = time.perf_counter()  # what EncDecRNNTModel.training_step adds at a logging step
        model.wer.update(predictions=encoded.detach(), predictions_lengths=encoded_len, targets=tokens,
                         targets_lengths=tokens_len)
        model.wer.compute()
        model.wer.reset()
        wer_s = time.perf_counter() - t6
    return parts, tuple(joint.shape), sum(c.duration for c in batch_cuts), wer_s


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--pytorch-steps", type=int, default=3, help="cap for NeMo's pytorch loss on long speech")
    parser.add_argument("--limit-s", type=float, default=900, help="wall-clock cap for that run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write the tables into BENCHMARKS.md")
    args = parser.parse_args(argv)
    if not DEMO_MODEL.exists() or not (DEMO_DATA / "cuts_train.jsonl.gz").exists():
        raise SystemExit(f"needs the demo model and data ({DEMO_MODEL}): run `make demo` first")
    subprocess.run([sys.executable, *LONG_CMD], cwd=REPO, check=True, capture_output=True)

    from bench import OTHERS_LIMIT, publish, run_header

    threads = [f"trainer.num_threads={args.threads}"]
    # Bucketing as the schema's default (the demo recipe turns it off for its from-scratch run; see its comment).
    long = [f"data.train={LONG_DATA / 'cuts_train.jsonl.gz'}", "data.num_buckets=30", *threads]
    demo = [f"data.train={DEMO_DATA / 'cuts_train.jsonl.gz'}", *threads]
    quarter = max(3 * LOG_EVERY, args.steps // 4)
    runs = [
        ("8–40 s, streamtune loss, bucketing", long, args.steps, None),
        ("8–40 s, streamtune loss, no bucketing", [*long, "data.num_buckets=0"], quarter, None),
        ("8–40 s, NeMo pytorch loss, bucketing", [*long, "model.loss.loss_name=pytorch"], args.pytorch_steps,
         args.limit_s),
        ("2 s clips (demo data), streamtune loss", demo, args.steps, None),
        ("2 s clips (demo data), NeMo pytorch loss", [*demo, "model.loss.loss_name=pytorch"], args.steps, None),
        # NeMo decodes the training batch at every logging step: what logging every step costs each.
        (EVERY_STEP_LONG, long, quarter, None, 1),
        (EVERY_STEP_DEMO, demo, quarter, None, 1),
    ]
    results = [train_run(*run) for run in runs]
    parts, shape, batch_audio_s, wer_s = split_one_batch(args.threads)
    nemo_joint, _, _, _ = split_one_batch(args.threads, fused=False)

    def fmt(r):
        if "step_s" not in r:
            return f"| {r['name']} | 0 of {r['steps']} (no step finished in {args.limit_s:g} s) | - | - | - | - | - |"
        note = f"{r['steps']} (stopped at the {args.limit_s:g} s cap)" if r["timed_out"] else str(r["steps"])
        extrapolated = f" (extrapolated: {args.steps} steps would take {args.steps * r['step_s'] / 60:.0f} min)" \
            if r["steps"] < args.steps and "NeMo" in r["name"] else ""
        flag = " *" if r["others"] > OTHERS_LIMIT else ""
        return (f"| {r['name']} | {note}{extrapolated} | {r['step_s']:.2f}{flag} | {1 / r['step_s']:.2f} | "
                f"{r['audio_per_step_s']:.1f} | {r['audio_s_per_s']:.1f} | {r['pad_ratio']:.3f} |")

    by = {r["name"]: r for r in results}
    ours_long = by["8–40 s, streamtune loss, bucketing"]
    ours_demo = by["2 s clips (demo data), streamtune loss"]
    old_demo = by["2 s clips (demo data), NeMo pytorch loss"]
    ratio_new = ours_long["audio_s_per_s"] / ours_demo["audio_s_per_s"]
    ratio_old = ours_long["audio_s_per_s"] / old_demo["audio_s_per_s"]
    ratio_every = by[EVERY_STEP_LONG]["audio_s_per_s"] / by[EVERY_STEP_DEMO]["audio_s_per_s"]
    total, total_nemo = sum(parts.values()), sum(nemo_joint.values())
    loss_share = (parts["loss forward"] + parts["loss backward"]) / total
    worst = max(r["others"] for r in results)
    lines = [
        run_header(f"python bench/train_real_length.py --steps {args.steps}",
                   f"other processes used at most {worst:.2f} cores during a run"),
        "",
        f"Long corpus: `python {' '.join(LONG_CMD)}` (300 utterances; the run's skipped.jsonl lists those over 40 s). "
        f"Every run starts from the demo's `final.nemo` (48-piece tokenizer: ~12 tokens per second of speech), "
        f"`data.batch_duration_s=48`, 2 threads, `trainer.log_every_n_steps={LOG_EVERY}` (the schema's default; "
        "a run capped below two intervals logs every step). Each logged row is the mean of the steps since the "
        "last; rates leave out the first 10 steps (warm-up).",
        "",
        "| run | steps | s/step | steps/s | audio s/step | audio s per s | padding ratio |",
        "|---|---|---|---|---|---|---|",
        *[fmt(r) for r in results],
        "",
        f"Audio seconds per second on 8–40 s utterances vs the demo's 2 s clips: **{ratio_new:.2f}×** with "
        f"streamtune's loss on both, **{ratio_old:.2f}×** against the demo as it trained before (NeMo pytorch loss). "
        f"Target: ≥ 0.5×. Logging (so decoding the training batch) at every step instead: {ratio_every:.2f}×.",
        "",
        f"One long batch ({batch_audio_s:.1f} s of audio, joint {shape}), where the time of a step goes "
        "(last of 3 repetitions; optimiser step not included), with the joint's hidden layer as training runs it "
        "(`streamtune/ops/joint.py`: relu and dropout fused on CPU) and as NeMo computes it (the same model, the same "
        "batch, side by side in one run):",
        "",
        "| part | ms | share | ms, NeMo's joint |",
        "|---|---|---|---|",
        *[f"| {k} | {1000 * v:.0f} | {100 * v / total:.0f} % | {1000 * nemo_joint[k]:.0f} |"
          for k, v in parts.items()],
        f"| **total** | **{1000 * total:.0f}** | | **{1000 * total_nemo:.0f}** |",
        "",
        f"The loss is **{100 * loss_share:.0f} %** of that step: {batch_audio_s / total:.0f} audio seconds per second "
        f"for this batch, {batch_audio_s / total_nemo:.0f} with NeMo's joint. At each logging step NeMo also "
        f"decodes the training batch (greedy, frame by frame) for `training_batch_wer`: {1000 * wer_s:.0f} ms on "
        "this batch, once every `trainer.log_every_n_steps` steps.",
    ]
    text = "\n".join(lines)
    publish("Training on real-length speech (CPU)", text, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
