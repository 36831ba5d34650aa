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
