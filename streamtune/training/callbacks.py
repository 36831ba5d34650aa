"""Lightning callbacks streamtune adds to every run (exact resume and pre-emption are in ``training.resume``)."""

from __future__ import annotations

import contextlib
import time

import lightning.pytorch as pl
import torch


class Throughput(pl.Callback):
    """Training speed over every batch, not a sample of them: at each logging step (``trainer.log_every_n_steps``)
    the batches since the last one give ``train_step_s`` (mean seconds per batch), ``train_audio_s`` (mean audio
    seconds per batch), ``train_audio_s_per_s`` (their audio over their time) and ``train_pad_ratio`` (padded
    samples / real samples). Lightning writes only the logging steps' values, and NeMo decodes the training batch
    for ``training_batch_wer`` at those steps only: a per-step value would show that step, not the run."""

    def __init__(self):
        self.sample_rate = None
        self._start = None
        self._last_step = None
        self._reset()

    def _reset(self):
        self._batches, self._seconds, self._real, self._padded = 0, 0.0, 0, 0

    def setup(self, trainer, pl_module, stage):
        self.sample_rate = int(pl_module.cfg.sample_rate)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._last_step is None:
            self._last_step = trainer.global_step
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._start is None:
            return
        lengths = batch[1].tolist()  # NeMo ASR batches: (audio, audio_len, tokens, tokens_len)
        self._batches += 1
        self._seconds += time.perf_counter() - self._start
        self._real += sum(lengths)
        self._padded += len(lengths) * max(lengths) - sum(lengths)
        stepped, self._last_step = trainer.global_step != self._last_step, trainer.global_step
        every = trainer.log_every_n_steps
        if not (stepped and every and trainer.global_step % every == 0):
            return  # not a step Lightning writes (nor the last micro-batch of one)
        audio_s = self._real / self.sample_rate
        metrics = {"train_step_s": self._seconds / self._batches, "train_audio_s": audio_s / self._batches,
                   "train_audio_s_per_s": audio_s / self._seconds,
                   "train_pad_ratio": self._padded / max(self._real, 1)}
        for key, value in metrics.items():
            pl_module.log(key, value, on_step=True, on_epoch=False, batch_size=len(lengths))
        self._reset()
        if torch.cuda.is_available() and batch[1].is_cuda:
            pl_module.log("gpu_mem_peak_gib", torch.cuda.max_memory_allocated() / 2**30, on_step=True,
                          on_epoch=False, batch_size=int(batch[1].shape[0]))


class ChunkWER(pl.Callback):
    """WER at *every* chunk mode on the dev set at each validation: ``val_wer_<ms>ms`` and ``val_wer_mean``.

    NeMo validates only the default (first) ``att_context_size``. Decoding here is offline with each mode's
    attention mask, which our streaming runner proves equal to chunk-by-chunk streaming (export parity).
    With an :class:`EMA` of the weights, those metrics are the averaged weights' and ``val_wer_*_raw`` the
    raw weights'.
    """

    def __init__(self, dev_cuts: str, batch_size: int = 8, ema: EMA | None = None):
        self.dev_cuts = dev_cuts
        self.batch_size = batch_size
        self.ema = ema

    def _wers(self, pl_module) -> dict[str, float]:
        from streamtune.data.reading import utterance_batches
        from streamtune.evaluation.metrics import ErrorCounts, corpus_errors
        from streamtune.model.chunks import chunk_modes
        from streamtune.streaming.runner import StreamingRunner

        runner = StreamingRunner(pl_module, batch_size=self.batch_size, device=pl_module.device)
        modes = chunk_modes(pl_module)
        totals = {mode.chunk_ms: ErrorCounts() for mode in modes}
        # Streamed batch by batch (features recomputed each time): memory does not grow with the dev set.
        for batch in utterance_batches(self.dev_cuts, self.batch_size):
            feats = [runner.features(u.audio) for u in batch]
            refs = [u.text for u in batch]
            for mode in modes:
                totals[mode.chunk_ms] += corpus_errors(refs, runner.offline(mode, feats).texts)[0]
        wers = {f"val_wer_{ms}ms": total.wer for ms, total in totals.items()}
        wers["val_wer_mean"] = sum(wers.values()) / len(wers)
        return wers

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        wers = self._wers(pl_module)
        if self.ema is not None and self.ema.ready:
            raw = {f"{k}_raw": v for k, v in wers.items()}
            with self.ema.swapped_in(pl_module):
                wers = self._wers(pl_module)
            wers.update(raw)
        for key, value in wers.items():
            pl_module.log(key, value, on_epoch=True, prog_bar=key == "val_wer_mean", sync_dist=False)
        if trainer.is_global_zero:  # one readable line per validation in the console / log file
            print(f"step {trainer.global_step} dev WER: " + ", ".join(
                f"{k.removeprefix('val_wer_')} {100 * v:.2f}%" for k, v in wers.items()), flush=True)


class EMA(pl.Callback):
    """An exponential moving average of the trainable weights, updated after every optimiser step
    (``torch.optim.swa_utils``' EMA update), kept in the checkpoint for an exact resume.

    :class:`ChunkWER` validates both weight sets; ``train.py`` writes the average into ``final.nemo``.

    Not NeMo's ``nemo.collections.common.callbacks.ema.EMA`` (NeMo 3.0.0): it validates the average *or* the raw
    weights (``validate_original_weights``), never both, and restores its average on resume only through NeMo's
    own checkpoint callback and a side file ``*-EMA.ckpt`` (its ``on_load_checkpoint``), where our runs
    checkpoint with Lightning's ModelCheckpoint, one atomic file per step.
    """

    def __init__(self, decay: float):
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        self.decay = decay
        self._update = get_ema_multi_avg_fn(decay)
        self.average: dict[str, torch.Tensor] = {}
        self._step = None

    @property
    def ready(self) -> bool:
        return bool(self.average)

    @staticmethod
    def _params(pl_module) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in pl_module.named_parameters() if p.requires_grad}

    def on_fit_start(self, trainer, pl_module):
        params = self._params(pl_module)
        if self.average:  # restored from a checkpoint
            self.average = {n: t.to(params[n].device) for n, t in self.average.items()}
        else:
            self.average = {n: p.detach().clone() for n, p in params.items()}
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self._step:  # no optimiser step yet (gradient accumulation)
            return
        self._step = trainer.global_step
        params = self._params(pl_module)
        names = list(self.average)
        self._update([self.average[n] for n in names], [params[n].detach() for n in names], None)

    @contextlib.contextmanager
    def swapped_in(self, pl_module):
        """The averaged weights in the model for the duration of the block."""
        params = self._params(pl_module)
        raw = {n: params[n].detach().clone() for n in self.average}
        self.copy_to(pl_module)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, t in raw.items():
                    params[n].copy_(t)

    @torch.no_grad()
    def copy_to(self, pl_module) -> None:
        params = self._params(pl_module)
        for n, t in self.average.items():
            params[n].copy_(t)

    def state_dict(self):
        return {"decay": self.decay, "average": self.average}

    def load_state_dict(self, state_dict):
        self.average = dict(state_dict["average"])


class SkipNonFinite(pl.Callback):
    """Drop optimiser steps whose gradients are NaN/inf and count them (``train_skipped_steps``).

    Runs after backward (and the DDP all-reduce, so every rank decides alike) and before clipping and the
    optimiser step: the gradients are cleared, so AdamW leaves every weight and moment untouched.
    """

    def __init__(self):
        self.skipped = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads and not bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))):
            optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            print(f"step {trainer.global_step}: non-finite gradients, update skipped ({self.skipped} so far)",
                  flush=True)
        pl_module.log("train_skipped_steps", float(self.skipped), on_step=True, on_epoch=False, batch_size=1)

    def state_dict(self):
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict):
        self.skipped = state_dict["skipped"]


class FrozenStaysFrozen(pl.Callback):
    """Keep dropout and batch-norm statistics of frozen modules in inference mode.

    Lightning puts the whole model in train mode before training; a frozen encoder would then still apply
    dropout (and update batch-norm running statistics, changing the "frozen" weights). The modules
    themselves stay in train mode, so the encoder keeps drawing a chunk mode per batch (multi-context).
    """

    def __init__(self):
        self.modules = []

    def setup(self, trainer, pl_module, stage):
        model = pl_module
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        self.modules = []
        for name, module in model.named_modules():
            # torch 2.13: the private _BatchNorm is the one base of every batch norm (1d/2d/3d, Sync, Lazy).
            if not isinstance(module, (torch.nn.Dropout, torch.nn.modules.batchnorm._BatchNorm)):
                continue
            if "adapter_layer" in name:
                continue
            parent = model.get_submodule(name.rpartition(".")[0])
            params = [p for n, p in parent.named_parameters() if "adapter_layer" not in n]
            if params and not any(id(p) in trainable for p in params):
                self.modules.append(module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for module in self.modules:
            if module.training:
                module.eval()
