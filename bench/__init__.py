"""Benchmarks: measured side by side in one run, results written into BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def write_section(title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of BENCHMARKS.md."""
    header = "# Benchmarks\n\nEach section is written by the script it names; numbers are from one run, side by side.\n"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else header
    stamp = f"_{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores_"
    section = f"## {title}\n\n{stamp}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    BENCHMARKS.write_text(text)


def cpu_ticks() -> tuple[int, int]:
    """(busy ticks of the whole machine, ticks of this process and of its children it has waited for): their
    difference is other processes' load. Children count as this process's own work: a bench that times a
    subprocess (``make demo``, a fresh-process loss run) must not call its own child a disturbance."""
    cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return sum(cpu) - cpu[3] - cpu[4], sum(int(own[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime


def others_seconds(before: tuple[int, int], after: tuple[int, int]) -> float:
    """CPU seconds other processes used between two :func:`cpu_ticks` readings."""
    return (after[0] - before[0] - after[1] + before[1]) / os.sysconf("SC_CLK_TCK")


# Cores other processes may use while a measurement runs before it is discarded and redone (or flagged).
OTHERS_LIMIT = 0.2


def others_load(seconds: float = 2.0) -> float:
    """Cores used by other processes over the next ``seconds`` (the machine may be shared)."""
    before = cpu_ticks()
    time.sleep(seconds)
    return others_seconds(before, cpu_ticks()) / seconds


def wait_quiet(max_wait_s: float = 300, log=print) -> float:
    """Wait (up to ``max_wait_s``) until other processes use at most ``OTHERS_LIMIT`` cores; returns their load."""
    deadline = time.monotonic() + max_wait_s
    while (load := others_load()) > OTHERS_LIMIT and time.monotonic() < deadline:
        log(f"  waiting: other processes use {load:.1f} cores")
        time.sleep(10)
    return load


class Watch:
    """Wall time of a block and the cores other processes used meanwhile (``with Watch() as w: ...``)."""

    def __enter__(self):
        self.ticks, self.start = cpu_ticks(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self.others = max(0.0, others_seconds(self.ticks, cpu_ticks()) / max(self.seconds, 1e-9))
        return False

    @property
    def disturbed(self) -> bool:
        return self.others > OTHERS_LIMIT


def other_benches() -> list[str]:
    """Command lines of other python processes running a ``bench/`` script."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if args and Path(args[0]).name.startswith("python") and any("bench/" in a for a in args[1:]):
            found.append(f"{proc.name}: {' '.join(args).strip()}")
    return found


def run_header(command: str, extra: str = "") -> str:
    """The first line of a BENCHMARKS.md section: the exact command, threads, and what else ran."""
    import torch

    return f"`{command}` — {torch.get_num_threads()} torch threads" + (f"; {extra}" if extra else "") + "."


class Guard:
    """Measurements on a shared machine: wait for other processes to go quiet, and redo a measurement they
    disturbed (more than ``OTHERS_LIMIT`` cores): with 2 threads on 2 cores one busy process elsewhere can slow a
    step many times over. Counts what it waited and redid, for the run header."""

    def __init__(self, log=print, max_wait_s: float = 300):
        self.log, self.max_wait_s, self.waited_s, self.redone = log, max_wait_s, 0.0, 0

    def wait_quiet(self) -> None:
        start = time.monotonic()
        wait_quiet(self.max_wait_s, self.log)
        self.waited_s += time.monotonic() - start

    def run(self, what: str, fn, attempts: int = 3):
        """``(fn(), cores other processes used meanwhile)``, redone after a wait when they used too many."""
        for attempt in range(attempts):
            with Watch() as watch:
                result = fn()
            if not watch.disturbed or attempt == attempts - 1:
                return result, watch.others
            self.redone += 1
            self.log(f"  redoing {what}: other processes used {watch.others:.2f} cores")
            self.wait_quiet()


def publish(title: str, text: str, write: bool) -> None:
    """Print a benchmark's section, and with ``--write`` put it into BENCHMARKS.md."""
    print(text)
    if write:
        write_section(title, text)


def add_model_args(parser, quick_help: str) -> None:
    """The options of the benchmarks that measure the demo model and the full geometry."""
    import argparse

    parser.add_argument("--demo-model", default="outputs/demo/runs/tiny_cpu/latest/final.nemo",
                        help="the trained demo .nemo")
    parser.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                        help="also the full 24-layer d_model-1024 geometry (random weights)")
    parser.add_argument("--quick", action="store_true", help=quick_help)


def add_demo_args(parser) -> None:
    """The options of the benchmarks that measure the trained demo model on its test set."""
    parser.add_argument("--demo-model", default="outputs/demo/runs/tiny_cpu/latest/final.nemo")
    parser.add_argument("--cuts", default="outputs/demo/data/cuts_test.jsonl.gz")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")


def demo_inputs(args) -> tuple[Path, list]:
    """(the demo model's path, its test utterances), torch set to ``--threads``; both must exist."""
    import torch

    from streamtune.data.reading import load_utterances

    torch.set_num_threads(args.threads)
    repo = Path(__file__).resolve().parent.parent
    model_path, cuts = repo / args.demo_model, repo / args.cuts
    if not model_path.exists() or not cuts.exists():
        raise SystemExit(f"{model_path} or {cuts} missing: run `make demo` first")
    return model_path, load_utterances(cuts)
