"""Tiny ONNX graphs with the RT-DETR output contract, built in-test (nothing downloaded).

`darkness_detector`: every query predicts the same box; class `k`'s score rises with how dark
the tile is, so tests can steer detections by painting tiles. Scores are
sigmoid(gain * (0.5 - mean(x)) + bias_k).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy.bundle import write_bundle


def darkness_detector_onnx(
    path: Path,
    *,
    size_px: int = 64,
    num_classes: int = 3,
    num_queries: int = 5,
    box_cxcywh: tuple[float, float, float, float] = (0.5, 0.5, 0.25, 0.25),
    gain: float = 20.0,
    class_bias: list[float] | None = None,
    batch: int | str = "batch",
    opset: int = 17,
) -> Path:
    bias = np.array(class_bias if class_bias is not None else [0.0] * num_classes, np.float32)
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size_px, size_px])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, num_queries, 4 + num_classes])
    inits = [
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(gain, np.float32), "gain"),
        numpy_helper.from_array(bias.reshape(1, 1, -1), "bias"),
        numpy_helper.from_array(np.array(box_cxcywh, np.float32).reshape(1, 1, 4), "box"),
        numpy_helper.from_array(np.ones((1, num_queries, 1), np.float32), "qones"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=1, axes=[1, 2, 3])
        if opset < 18
        else helper.make_node("ReduceMean", ["images", "axes"], ["m"], keepdims=1),
        helper.make_node("Reshape", ["m", "shape3"], ["m3"]),  # (B,1,1)
        helper.make_node("Sub", ["half", "m3"], ["d"]),
        helper.make_node("Mul", ["d", "gain"], ["g"]),
        helper.make_node("Add", ["g", "bias"], ["logit"]),  # (B,1,C)
        helper.make_node("Sigmoid", ["logit"], ["p"]),
        helper.make_node("Mul", ["p", "qones"], ["scores"]),  # (B,Q,C)
        helper.make_node("Mul", ["m3", "box"], ["zero_box_scaled"]),  # keeps a batch dim for boxes
        helper.make_node("Mul", ["zero_box_scaled", "zero"], ["zb"]),
        helper.make_node("Add", ["zb", "box"], ["b1"]),  # (B,1,4)
        helper.make_node("Mul", ["b1", "qones"], ["boxes"]),  # (B,Q,4)
        helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=2),
    ]
    inits += [
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape3"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
    ]
    graph = helper.make_graph(nodes, "darkness_detector", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def manifest_fields(
    *,
    classes: list[str],
    size_px: int,
    num_queries: int,
    mm_per_px: float = 0.4,
    overlap_px: int = 8,
    thresholds: dict[str, float] | None = None,
    batch: int | None = None,
) -> dict[str, Any]:
    return {
        "name": "tiny-test-model",
        "classes": classes,
        "input": {"size_px": size_px, "channels": 3, "color": "gray", "batch": batch},
        "output": {"num_queries": num_queries},
        "mm_per_px": mm_per_px,
        "tile": {"size_px": size_px, "overlap_px": overlap_px},
        "thresholds": thresholds or {c: 0.5 for c in classes},
        "onnx_opset": 17,
        "provenance": {"made_by": "tests.helpers.tiny_models"},
        "metrics": {},
    }


def write_tiny_bundle(
    out_dir: Path,
    *,
    classes: list[str] | None = None,
    size_px: int = 64,
    num_queries: int = 5,
    mm_per_px: float = 0.4,
    overlap_px: int = 8,
    batch: int | None = None,
    **onnx_kwargs: Any,
) -> Path:
    classes = classes or ["hole", "stain", "broken_end"]
    onnx_path = darkness_detector_onnx(
        out_dir.parent / f"{out_dir.name}-src.onnx",
        size_px=size_px,
        num_classes=len(classes),
        num_queries=num_queries,
        batch=batch if batch is not None else "batch",
        **onnx_kwargs,
    )
    write_bundle(
        out_dir,
        {"model.onnx": onnx_path},
        manifest_fields(
            classes=classes,
            size_px=size_px,
            num_queries=num_queries,
            mm_per_px=mm_per_px,
            overlap_px=overlap_px,
            batch=batch,
        ),
    )
    return out_dir
