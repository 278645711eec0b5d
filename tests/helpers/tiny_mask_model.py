"""A tiny dense-model ONNX graph with the mask output contract, built in-test (nothing downloaded).

`brightness_mask_onnx`: P(defect) of a cell is the mean brightness of its stride x stride input
pixels (0..1), so tests paint defects as bright patches; P(class | defect) is a constant vector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy.bundle import write_bundle


def brightness_mask_onnx(
    path: Path, *, size_px: int = 64, stride_px: int = 2, class_probs: list[float] | None = None
) -> Path:
    probs = np.array(class_probs or [1.0, 0.0], np.float32)
    n_cls = len(probs)
    cells = size_px // stride_px
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, size_px, size_px])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 1 + n_cls, cells, cells])
    nodes = [
        helper.make_node(
            "AveragePool", ["images"], ["p"], kernel_shape=[stride_px, stride_px], strides=[stride_px] * 2
        ),
        helper.make_node("Mul", ["p", "zero"], ["z"]),  # (B,1,h,w) of zeros, keeps the batch dim
        helper.make_node("Add", ["z", "class_probs"], ["c"]),  # (B,C,h,w)
        helper.make_node("Concat", ["p", "c"], ["output0"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(probs.reshape(1, n_cls, 1, 1), "class_probs"),
    ]
    graph = helper.make_graph(nodes, "brightness_mask", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def mask_manifest_fields(
    *, classes: list[str], size_px: int = 64, stride_px: int = 2, thresholds: dict[str, float] | None = None
) -> dict[str, Any]:
    return {
        "name": "tiny-mask-model",
        "classes": classes,
        "input": {"size_px": size_px, "channels": 1, "color": "gray"},
        "output": {"format": "mask", "stride_px": stride_px},
        "mm_per_px": 0.4,
        "tile": {"size_px": size_px, "overlap_px": 8},
        "thresholds": thresholds or {c: 0.5 for c in classes},
        "onnx_opset": 17,
        "provenance": {"made_by": "tests.helpers.tiny_mask_model"},
    }


def write_tiny_mask_bundle(
    out_dir: Path, *, classes: list[str] | None = None, size_px: int = 64, stride_px: int = 2,
    manifest_stride_px: int | None = None, class_probs: list[float] | None = None,
) -> Path:  # fmt: skip
    classes = classes or ["hole", "stain"]
    probs = class_probs or [1.0] + [0.0] * (len(classes) - 1)
    onnx_path = brightness_mask_onnx(
        out_dir.parent / f"{out_dir.name}-src.onnx", size_px=size_px, stride_px=stride_px, class_probs=probs
    )
    fields = mask_manifest_fields(classes=classes, size_px=size_px, stride_px=manifest_stride_px or stride_px)
    write_bundle(out_dir, {"model.onnx": onnx_path}, fields)
    return out_dir
