"""Model bundles and detector backends (ONNX Runtime, TensorRT) with RT-DETR decoding."""
