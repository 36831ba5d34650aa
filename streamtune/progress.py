"""Progress bars for the loops that can run for minutes (evaluation, export): tqdm on a terminal, nothing in a
log file or a test."""

from __future__ import annotations

import sys
from collections.abc import Iterable


def progress(items: Iterable, desc: str, total: int | None = None, unit: str = "it") -> Iterable:
    from tqdm.auto import tqdm

    if total is None and hasattr(items, "__len__"):
        total = len(items)
    return tqdm(items, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True,
                disable=not sys.stderr.isatty())
