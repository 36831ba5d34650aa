"""Benchmarks: measured side by side in one run, results written into BENCHMARKS.md."""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def write_section(title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of BENCHMARKS.md."""
    header = "# Benchmarks\n\nEach section is written by the script it names; numbers are from one run, side by side.\n"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else header
    stamp = f"_{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores_"
    section = f"## {title}\n\n{stamp}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    BENCHMARKS.write_text(text)


def cpu_ticks() -> tuple[int, int]:
    """(busy ticks of the whole machine, ticks of this process): their difference is other processes' load."""
    cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return sum(cpu) - cpu[3] - cpu[4], int(own[11]) + int(own[12])


def others_seconds(before: tuple[int, int], after: tuple[int, int]) -> float:
    """CPU seconds other processes used between two :func:`cpu_ticks` readings."""
    import os

    return (after[0] - before[0] - after[1] + before[1]) / os.sysconf("SC_CLK_TCK")


def mode_by_ms(model, ms: int):
    """The model's chunk mode of ``ms`` milliseconds."""
    from streamtune.models import chunk_modes

    return next(m for m in chunk_modes(model) if m.chunk_ms == ms)


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


def run_header(command: str, extra: str = "") -> str:
    """The first line of a BENCHMARKS.md section: the exact command, threads, and what else ran."""
    import torch

    return f"`{command}` — {torch.get_num_threads()} torch threads" + (f"; {extra}" if extra else "") + "."
