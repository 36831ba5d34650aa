"""train.py with test probes, run as a subprocess by tests/test_resume_ddp.py (and by Lightning's DDP launcher).

    python tests/train_probe.py --config ... key=value ...

Environment:
  PROBE_DIR            each rank appends one JSON line per training batch to seen-rank<R>.jsonl
                       (step, rank, a hash of the batch) and writes weights-rank<R>.pt at the end.
  PROBE_KILL_IN_SAVE   a global step: while writing that step's checkpoint, write part of the file and
                       SIGKILL this process (a crash mid-save, no clean-up of any kind).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from streamtune.stages import train  # noqa: E402


class Probe(pl.Callback):
    def __init__(self, out: Path):
        self.out = out

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        digest = hashlib.sha1(batch[1].numpy().tobytes() + batch[2].numpy().tobytes()).hexdigest()
        with open(self.out / f"seen-rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "rank": trainer.global_rank, "batch": digest}) + "\n")

    def on_train_end(self, trainer, pl_module):
        torch.save(pl_module.state_dict(), self.out / f"weights-rank{trainer.global_rank}.pt")


def main() -> int:
    out = Path(os.environ["PROBE_DIR"])
    import streamtune.training.trainer

    build = streamtune.training.trainer.build_trainer

    def build_trainer(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.callbacks.insert(0, Probe(out))
        return trainer

    streamtune.training.trainer.build_trainer = build_trainer
    kill_at = os.environ.get("PROBE_KILL_IN_SAVE")
    if kill_at:
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and obj.get("global_step") == int(kill_at) and hasattr(f, "write"):
                f.write(b"PK\x03\x04 half a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    return train.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
