"""Process-wide setup every entry point does the same way: seed, threads, precision."""

from __future__ import annotations

import os


def setup_runtime(cfg=None, seed: int | None = None, num_threads: int | None = None) -> None:
    """Seed everything (``run.seed``), pin CPU threads, and keep fp32 maths exact.

    TF32 is switched off so that streaming and offline decoding stay comparable
    on GPUs that would otherwise use it.
    """
    import torch
    from lightning.pytorch import seed_everything

    if cfg is not None:
        seed = int(cfg.run.seed) if seed is None else seed
        num_threads = cfg.trainer.num_threads if num_threads is None else num_threads
    if num_threads:
        torch.set_num_threads(int(num_threads))
    if seed is not None:
        seed_everything(seed, workers=True, verbose=False)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # Tell tokenizers / OpenMP in loader workers not to oversubscribe the cores.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def set_mmap_threshold(mib: int) -> bool:
    """glibc's ``M_MMAP_THRESHOLD`` (fixed, so no longer adjusted upwards): allocations of ``mib`` MiB and more are
    mapped and unmapped when freed instead of coming from the heap. True when set; False where the C library is
    not glibc (nothing changes)."""
    import ctypes
    import ctypes.util

    if mib <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, int(mib) << 20))
