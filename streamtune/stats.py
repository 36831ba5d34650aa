"""Small statistics shared by evaluation, latency and benchmarks."""

from __future__ import annotations

import numpy as np


def percentile(values, q: float) -> float | None:
    """The ``q``-th percentile of ``values`` (numpy's linear interpolation); None for no values."""
    return float(np.percentile(values, q)) if len(values) else None
