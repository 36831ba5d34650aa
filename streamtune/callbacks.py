"""Lightning callbacks streamtune adds to every run."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class Throughput(pl.Callback):
    """Logs step time and audio seconds processed per wall second (``train_audio_s_per_s``)."""

    def __init__(self, sample_rate: int = 16000):
        self.sample_rate = sample_rate
        self._start = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._start is None:
            return
        step_s = time.perf_counter() - self._start
        audio_s = float(batch[1].sum()) / self.sample_rate  # NeMo ASR batches: (audio, audio_len, tokens, tokens_len)
        pl_module.log("train_step_s", step_s, on_step=True, on_epoch=False, batch_size=int(batch[1].shape[0]))
        pl_module.log("train_audio_s_per_s", audio_s / step_s, on_step=True, on_epoch=False,
                      batch_size=int(batch[1].shape[0]))
