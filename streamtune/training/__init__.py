"""Step 3, training: the Lightning trainer (``trainer``), callbacks, exact resume and pre-emption (``resume``),
checkpoints, run directories (``rundir``), experiment tracking and the dry run."""
