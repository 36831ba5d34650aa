"""``python -m data_prep`` in a checkout (installed: ``streamtune-prep``); the code: streamtune/stages/data_prep/."""
