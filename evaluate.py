"""Evaluate models: ``python evaluate.py --model MODEL.nemo [--cuts TEST] [--config RECIPE] ...`` (installed:
``streamtune-eval``). The code is in ``streamtune/stages/evaluate.py``."""

from streamtune.stages.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
