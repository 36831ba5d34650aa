"""The four stages (data_prep, train, evaluate, export): each a command over the library in ``streamtune``.

The library never imports a stage; the stages import the library (and ``evaluate`` uses data_prep's test-set
conversion). Installed as the console commands ``streamtune-prep``, ``streamtune-train``, ``streamtune-eval`` and
``streamtune-export``; in a checkout also ``python -m data_prep``, ``python train.py``, ``python evaluate.py`` and
``python -m export``.
"""
