"""The export stage's command line (``python -m export``, ``streamtune-export``); the work is in
``streamtune.export`` (ONNX, checks, bundle) and ``streamtune.serve``."""
