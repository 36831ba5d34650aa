"""streamtune: fine-tune and ship NVIDIA's cache-aware streaming FastConformer-RNNT.

The library behind the entry points (``train.py``, ``evaluate.py``,
``python -m data_prep``, ``python -m export``). Importing it is cheap: NeMo is
only imported by the modules that need a model.
"""

__version__ = "0.1.0"
