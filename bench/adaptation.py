"""Adaptation: the demo model (domain A) fine-tuned on a new domain B, WER before and after.

    python bench/adaptation.py [--steps N] [--lr LR] [--mix-a 0.5] [--threads 2] [--write]

Domain A is the demo: data ``outputs/demo/data``, model
``outputs/demo/runs/tiny_cpu/latest/final.nemo`` (both from ``make demo``).
Domain B is generated here with ``python -m data_prep synthetic``: 54 new words
(travel and weather, spelt with the demo's letters, none in its word list)
spoken by a voice the demo never heard (``en-gb-x-gbcwmd+f5``: West Midlands
accent, female variant). The demo's model is fine-tuned from its ``.nemo``
(``model.init_from``; tokenizer kept) with the demo-scale fine-tuning recipe
``recipes/demo/finetune_cpu.yaml`` on a weighted mix of B and some of A's
training data, then base and tuned models are evaluated, streaming, on A's and
B's test sets at every chunk size.

Criteria, at every chunk size: domain-B WER falls by at least 50 % relative,
domain-A WER rises by at most 20 % relative.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RECIPE = "recipes/demo/tiny_cpu.yaml"
FINETUNE = "recipes/demo/finetune_cpu.yaml"
DATA_A = "outputs/demo/data"
BASE = "outputs/demo/runs/tiny_cpu/latest/final.nemo"
OUT = "outputs/adaptation"
DATA_B = f"{OUT}/data_b"
VOICES_B = "en-gb-x-gbcwmd+f5"
WORDS_B = """
ticket station platform airport flight hotel museum bridge river mountain island forest beach city street taxi bus train
north south east west left right map
cloud rain snow storm wind sunny cold warm hot quiet
eleven twelve twenty thirty hundred
minute hour monday tuesday wednesday thursday friday saturday sunday
book check tour arrive leave
"""
# Tuned / base errors (same test set, same words): B at most half, A at most 20 % more.
MAX_B_RATIO, MAX_A_RATIO = Fraction(1, 2), Fraction(6, 5)


def run(cmd: list[str], log: list[tuple[str, float]]) -> None:
    """Run one pipeline command from the repo root (output passes through); record it and its wall time."""
    shown = "python " + shlex.join(cmd)
    print(f"\n$ {shown}", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, *cmd], cwd=REPO, check=True)
    log.append((shown, time.perf_counter() - start))


def streaming_wer(results_json: Path) -> dict[int, tuple[float, int, int]]:
    """{chunk_ms: (wer, errors, ref_words)} of the streaming decode."""
    payload = json.loads(results_json.read_text())
    return {r["chunk_ms"]: (r["wer"], r["errors"], r["ref_words"]) for r in payload["results"]
            if r["decode"] == "streaming"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-train", type=int, default=1200, help="domain-B training sentences")
    parser.add_argument("--steps", type=int, help="fine-tuning steps (default: the recipe's)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    parser.add_argument("--warmup", type=int, help="warm-up steps (default: the recipe's)")
    parser.add_argument("--mix-a", type=float, default=0.5, help="share of domain-A training data in the mix")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of training and evaluation (1 on a "
                        "machine that is busy with other work: oversubscribed threads make each step many times "
                        "slower)")
    parser.add_argument("--tuned", help="evaluate this fine-tuned .nemo instead of fine-tuning")
    parser.add_argument("--write", action="store_true", help="write the results into BENCHMARKS.md")
    args = parser.parse_args(argv)
    missing = [p for p in (BASE, f"{DATA_A}/cuts_train.jsonl.gz",
                           f"{DATA_A}/cuts_test.jsonl.gz") if not (REPO / p).exists()]
    if missing:
        print(f"missing {', '.join(missing)}: run `make demo` first (domain A is the demo)", file=sys.stderr)
        return 1
    started, log = time.perf_counter(), []
    (REPO / OUT).mkdir(parents=True, exist_ok=True)
    words_file = f"{OUT}/words_b.txt"
    (REPO / words_file).write_text(WORDS_B.lstrip())

    run(["-m", "data_prep", "synthetic", "--out", DATA_B, "--words-file", words_file, "--voices", VOICES_B,
         "--num-train", str(args.num_train), "--num-dev", "40", "--num-test", "60", "--seed", "1",
         "--id-prefix", "synthb"], log)
    tuned = args.tuned
    mix = f"[[{DATA_B}/cuts_train.jsonl.gz,{1 - args.mix_a:g}],[{DATA_A}/cuts_train.jsonl.gz,{args.mix_a:g}]]"
    if not tuned:
        extra = ([f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={max(1, args.steps // 3)}"]
                 if args.steps else []) + ([f"model.optim.lr={args.lr:g}"] if args.lr else []) + \
            ([f"model.optim.sched.warmup_steps={args.warmup}"] if args.warmup else [])
        run(["train.py", "--config", FINETUNE, f"model.init_from={BASE}", f"data.train={mix}",
             f"data.dev={DATA_B}/cuts_dev.jsonl.gz", f"run.output_dir={OUT}/runs", "run.name=adapt_b",
             f"trainer.num_threads={args.threads}", *extra], log)
        tuned = f"{OUT}/runs/adapt_b/latest/final.nemo"

    wer = {}
    for name, model in (("base", BASE), ("tuned", tuned)):
        for domain, cuts in (("A", f"{DATA_A}/cuts_test.jsonl.gz"), ("B", f"{DATA_B}/cuts_test.jsonl.gz")):
            out = f"{OUT}/eval/{name}_{domain}"
            run(["evaluate.py", "--config", RECIPE, "--model", model, "--cuts", cuts, "--out", out,
                 f"trainer.num_threads={args.threads}"], log)
            wer[name, domain] = streaming_wer(REPO / out / "results.json")

    table = ["| domain | chunk | base WER (errors/words) | tuned WER | relative change | criterion: tuned errors "
             "| holds |",
             "|---|---|---|---|---|---|---|"]
    verdict = {}
    for domain, limit, rule in (("B", MAX_B_RATIO, "≤ −50 %"), ("A", MAX_A_RATIO, "≤ +20 %")):
        for ms in sorted(wer["base", domain], reverse=True):
            (b, be, n), (t, te, _) = wer["base", domain][ms], wer["tuned", domain][ms]
            allowed = limit * be  # exact: no float rounding at the boundary
            ok = te <= allowed
            verdict[domain, ms] = ok
            change = f"{100 * (t - b) / b:+.1f} %" if b else "n/a"
            table.append(f"| {domain} | {ms} ms | {100 * b:.2f} % ({be}/{n}) | {100 * t:.2f} % ({te}/{n}) | {change} "
                         f"| ≤ {float(allowed):g} ({rule}) | {'yes' if ok else '**no**'} |")
    holds = all(verdict.values())
    total = time.perf_counter() - started
    summary = (f"Both criteria hold at every chunk size: **{'yes' if holds else 'no'}**"
               + ("" if holds else " (failing: " + ", ".join(f"{d} {ms} ms" for (d, ms), ok in verdict.items()
                                                          if not ok) + ")") + ".")
    print("\n" + "\n".join(table) + "\n\n" + summary + f"\ntotal {total:.0f} s")
    if args.write:
        from bench import write_section

        tuning = (f"Fine-tuned model given: `{args.tuned}`." if args.tuned else
                  f"Fine-tuned from A's `.nemo` (tokenizer kept) with `{FINETUNE}`"
                  + (f" ({' '.join(extra)})" if extra else " as it stands") + ", on a mix of "
                  f"{1 - args.mix_a:.0%} B and {args.mix_a:.0%} A training data (sampling weights).")
        commands = "\n".join(f"{cmd}   # {secs:.0f} s" for cmd, secs in log)
        command = shlex.join(argv if argv is not None else sys.argv[1:])
        body = f"""`python bench/adaptation.py {command}` — {total / 60:.1f} min in all.

Domain A: the demo (105 words written as the target model writes, seven espeak-ng voices), model `{BASE}`.
Domain B: {len(WORDS_B.split())} new words (travel and weather; same letters, none in A's list), voice
`{VOICES_B}` (not one of A's), {args.num_train} training sentences of 2–5 words, 60 test sentences.
{tuning}
WER is streaming (cache-aware, chunk by chunk) on each domain's test set.

{chr(10).join(table)}

{summary}

```
{commands}
```"""
        write_section("Adaptation: domain A -> B", body)
    return 0 if holds else 1


if __name__ == "__main__":
    raise SystemExit(main())
