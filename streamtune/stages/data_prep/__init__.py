"""Data preparation: sources become validated Lhotse cuts (``python -m data_prep <source> ...``)."""
