"""``python -m data_prep`` in a checkout (installed: ``streamtune-prep``): the command line is in
streamtune/stages/data_prep/, the work in streamtune/data/."""
