"""Step 2, the model: build it (``build``), from a start point and adapted (``start_points``), its NeMo config
(``nemo_config``), tokenizers, chunk modes (``chunks``) and process setup (``runtime``)."""
