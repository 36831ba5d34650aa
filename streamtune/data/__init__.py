"""Step 1, data: sources become validated Lhotse cuts (``sources``, ``validate``, ``prepare``, ``synthetic``,
``test_sets``, ...), read back for training and scoring (``reading``), surveyed, styled and augmented."""
