"""Step 5, evaluation: decode and score a test set (``scoring``), WER metrics, gates, latency, statistics and
the reports with their ``results.schema.json``."""
