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


class ChunkWER(pl.Callback):
    """WER at *every* chunk mode on the dev set at each validation: ``val_wer_<ms>ms`` and ``val_wer_mean``.

    NeMo validates only the default (first) ``att_context_size``. Decoding here is offline with each mode's
    attention mask, which our streaming runner proves equal to chunk-by-chunk streaming (export parity).
    """

    def __init__(self, dev_cuts: str, batch_size: int = 8):
        self.dev_cuts = dev_cuts
        self.batch_size = batch_size
        self._utts = None
        self._feats = None

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        from streamtune.data import load_utterances
        from streamtune.metrics import corpus_errors
        from streamtune.models import chunk_modes
        from streamtune.streaming import StreamingRunner

        runner = StreamingRunner(pl_module, batch_size=self.batch_size, device=pl_module.device)
        if self._utts is None:
            self._utts = load_utterances(self.dev_cuts)
            # The preprocessor has no trained weights and no dither in eval mode: features never change.
            self._feats = [runner.features(u.audio) for u in self._utts]
        refs = [u.text for u in self._utts]
        wers = {}
        for mode in chunk_modes(pl_module):
            total, _ = corpus_errors(refs, runner.offline(mode, self._feats).texts)
            wers[f"val_wer_{mode.chunk_ms}ms"] = total.wer
        wers["val_wer_mean"] = sum(wers.values()) / len(wers)
        for key, value in wers.items():
            pl_module.log(key, value, on_epoch=True, prog_bar=key == "val_wer_mean", sync_dist=False)
