"""Loomsight runtime: the lean loom-side half (numpy, OpenCV, ONNX Runtime, pyzmq, harvesters).

Nothing here imports torch, torchvision, ultralytics or offline_train; a test enforces it.
"""

__version__ = "0.1.0"
