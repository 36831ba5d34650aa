"""Step 6, export: ONNX export and checks (``onnx_export``, ``onnx_check``, ``onnx_decoder``), sherpa-onnx,
streaming parity, the deployable bundle (``package``) and its verification (``verify``)."""
