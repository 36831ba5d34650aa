"""The four stages (data_prep, train, evaluate, export): each a command line over the library's packages
(``streamtune.data``, ``streamtune.training``, ``streamtune.evaluation``, ``streamtune.export`` and the rest).

Argument parsing and the order of the steps only: the library never imports a stage. Installed as the console
commands ``streamtune-prep``, ``streamtune-train``, ``streamtune-eval`` and ``streamtune-export``; in a checkout
also ``python -m data_prep``, ``python train.py``, ``python evaluate.py`` and ``python -m export``.
"""
