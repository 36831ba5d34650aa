"""The data_prep stage's command line (``python -m data_prep``, ``streamtune-prep``); the work is in
``streamtune.data``: sources become validated Lhotse cuts."""
