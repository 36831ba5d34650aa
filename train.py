"""Train or fine-tune from a recipe: ``python train.py --config RECIPE [key=value ...]`` (installed:
``streamtune-train``). The code is in ``streamtune/stages/train.py``."""

from streamtune.stages.train import main

if __name__ == "__main__":
    raise SystemExit(main())
