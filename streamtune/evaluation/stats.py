"""Small statistics shared by evaluation, latency and benchmarks."""

from __future__ import annotations

import numpy as np


def percentile(values, q: float) -> float | None:
    """The ``q``-th percentile of ``values`` (numpy's linear interpolation); None for no values."""
    return float(np.percentile(values, q)) if len(values) else None


def paired_bootstrap(errors_a, errors_b, ref_words, replications: int = 10000, seed: int = 0
                     ) -> tuple[float, float, float]:
    """Bisani & Ney's paired bootstrap of a WER difference (Kaldi's ``compute-wer-bootci``, as kaldialign's
    ``bootstrap_wer_ci``): utterances are resampled with replacement, the same draw for both systems.

    Returns (low, high) of the 95 % interval of WER(b) - WER(a) in points (%), and the share of draws in which
    ``b`` makes fewer errors than ``a`` (kaldialign's ``p_s2_improv_over_s1``).
    """
    a, b, r = (np.asarray(x, dtype=np.int64) for x in (errors_a, errors_b, ref_words))
    n = len(r)
    if n == 0:
        raise ValueError("no utterances to resample")
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // n)  # draws per batch: bounded memory whatever the number of utterances
    deltas, improved = [], 0
    for start in range(0, replications, chunk):
        idx = rng.integers(0, n, size=(min(chunk, replications - start), n))
        ea, eb, words = a[idx].sum(1), b[idx].sum(1), r[idx].sum(1)
        deltas.append(100.0 * (eb - ea) / np.maximum(words, 1))
        improved += int((eb < ea).sum())
    low, high = np.percentile(np.concatenate(deltas), [2.5, 97.5])
    return float(low), float(high), improved / replications
