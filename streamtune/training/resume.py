"""Stopping and resuming a run exactly: the data position and RNG streams in the checkpoint (:class:`ExactResume`),
and a clean stop with a checkpoint on a pre-emption signal (:class:`Preemption`)."""

from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import torch


def _rng_state() -> dict:
    """Every RNG stream, as tensors and plain numbers (a checkpoint then loads with weights_only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                      gauss], "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if torch.is_tensor(numpy_state[1]):
        numpy_state = (numpy_state[0], numpy_state[1].numpy().astype(np.uint32), *numpy_state[2:])
    np.random.set_state(tuple(numpy_state))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def lhotse_sampler(dataloader):
    """The Lhotse sampler behind a NeMo Lhotse dataloader (map-style or iterable wrapper), if any."""
    from lhotse.dataset.sampling.base import CutSampler

    dataset = getattr(dataloader, "dataset", None)
    for candidate in (getattr(dataloader, "sampler", None), getattr(dataset, "sampler", None)):
        if isinstance(candidate, CutSampler):
            return candidate
    return None


class ExactResume(pl.Callback):
    """What Lightning's checkpoint lacks for an exact resume: the data position and the RNG streams.

    The data position is (epoch, batches trained in it); on resume the fresh, identically seeded Lhotse sampler is
    fast-forwarded over that many batches (cut metadata only, no audio is read). RNG states are those at the end
    of the checkpointed step, restored just before the next step. Validation is made RNG-neutral, so a checkpoint
    written after validation resumes the same stream as training straight through.
    """

    def __init__(self):
        self.epoch = 0
        self.batches = 0
        self._resumed = None
        self._module = None
        self._val_rng = None

    def setup(self, trainer, pl_module, stage):
        self._module = pl_module

    def on_train_epoch_start(self, trainer, pl_module):
        if self._resumed is None:
            self.epoch, self.batches = trainer.current_epoch, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._resumed is not None:
            _set_rng_state(self._resumed["rng"])
            self._resumed = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1

    def on_validation_start(self, trainer, pl_module):
        self._val_rng = _rng_state()

    def on_validation_end(self, trainer, pl_module):
        if self._val_rng is not None:
            _set_rng_state(self._val_rng)
            self._val_rng = None

    def state_dict(self):
        return {"epoch": self.epoch, "batches": self.batches, "rng": _rng_state()}

    def load_state_dict(self, state_dict):
        self.epoch, self.batches = state_dict["epoch"], state_dict["batches"]
        self._resumed = state_dict
        dl = self._module.train_dataloader() if self._module is not None else None  # NeMo: the one it set up
        sampler = lhotse_sampler(dl)
        if sampler is None or (dl.num_workers > 0 and sampler is not getattr(dl, "sampler", None)):
            why = "has no Lhotse sampler" if sampler is None else "is read in loader workers"
            print(f"resume: the training data {why}; its position is not restored "
                  "(training continues on a re-shuffled stream)", flush=True)
            return
        sampler.set_epoch(self.epoch)
        iter(sampler)
        for _ in range(self.batches):
            next(sampler)
        # Lhotse 1.33.0 has no public way to say "continue from here": its own load_state_dict() fast-forwards
        # like this and then sets the private _just_restored_state, so the next iter() (the DataLoader's) keeps
        # the position instead of restarting the epoch. Ours comes from (epoch, batches), not a sampler state.
        sampler._just_restored_state = True
        print(f"resume: data position epoch {self.epoch}, {self.batches} batches in", flush=True)


class Preempted(SystemExit):
    """Training stopped at a step boundary on a pre-emption signal, after writing a checkpoint there."""

    def __init__(self, signum: int, step: int, path):
        super().__init__(128 + signum)  # the conventional "ended by this signal" status, after a clean stop
        self.signum, self.step, self.path = signum, step, path


class Preemption(pl.Callback):
    """SIGTERM (spot instances, ``docker stop``, SLURM's end of time) and SIGUSR1 (SLURM's warning, with
    ``#SBATCH --signal=USR1@120``): finish the step in progress, write a checkpoint where the periodic one would
    be written (so ``run.resume=auto`` continues exactly, same batches and weights), and stop. Under SLURM the
    job is requeued. Without a signal the step costs nothing (on several processes: one tiny all-reduce).

    Not NeMo's ``nemo.utils.callbacks.preemption.PreemptionCallback`` (NeMo 3.0.0): in one process it turns
    itself off (it needs torch.distributed), it reads its flag on a CUDA device, hears SIGTERM only and saves
    through Lightning's private checkpoint methods (``test_trainer_options`` shows the first two). Nor Lightning's
    SLURM signal connector: it saves inside the signal handler, in the middle of a step, and only under SLURM."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self, checkpoint_dir):
        self.checkpoint_dir = checkpoint_dir
        self.requested = 0

    def on_fit_start(self, trainer, pl_module):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be caught on the main thread
        for name in self.SIGNALS:
            signum = getattr(signal, name)
            previous = signal.getsignal(signum)

            def handler(num, frame, previous=previous):
                self.requested = self.requested or num
                if callable(previous):  # Lightning's own bookkeeping (it forwards SIGTERM to its workers)
                    previous(num, frame)

            signal.signal(signum, handler)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        requested = self.requested
        if trainer.world_size > 1:  # every rank must stop at the same step
            requested = int(trainer.strategy.reduce(torch.tensor(float(requested), device=pl_module.device),
                                                    reduce_op="max"))
        if not requested or trainer.global_step >= trainer.max_steps:
            return
        path = self.checkpoint_dir / f"step{trainer.global_step:07d}.ckpt"
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            import os
            import signal
            import subprocess

            print(f"{signal.Signals(requested).name}: stopped after step {trainer.global_step}; wrote {path}. "
                  "Continue with run.resume=auto.", flush=True)
            job = os.environ.get("SLURM_JOB_ID")
            if job and requested == signal.SIGUSR1 and os.environ.get("STREAMTUNE_SLURM_REQUEUE", "1") == "1":
                subprocess.run(["scontrol", "requeue", job], check=False)  # the same command runs again
        raise Preempted(requested, trainer.global_step, path)
