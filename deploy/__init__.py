"""Export CLI: checkpoint -> ONNX (parity-checked) -> TensorRT engine; model bundles."""
