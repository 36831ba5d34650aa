"""``python -m export`` in a checkout (installed: ``streamtune-export``); the code is in streamtune/stages/export/."""
