"""``python -m export`` in a checkout (installed: ``streamtune-export``): the command line is in
streamtune/stages/export/, the work in streamtune/export/ and streamtune/serve/."""
