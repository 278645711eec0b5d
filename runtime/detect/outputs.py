"""Model output formats: how a bundle's raw output is checked at load and decoded per batch.

One entry per `output.format` of the manifest; a new output type is one decoding module plus one
line in `FORMATS`. The ONNX Runtime backend looks the format up here and never branches on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from runtime.detect.decode import DecodeStats, decode_rtdetr
from runtime.detect.manifest import MaskOutput, ModelManifest, RtdetrOutput
from runtime.detect.mask_decode import check_mask_shape, decode_mask
from runtime.detections import Detections
from runtime.errors import ModelError


@dataclass(frozen=True)
class OutputFormat:
    check: Callable[[list[int | str], ModelManifest, str], None]
    # raw, manifest, class thresholds, stats, open-set threshold (None: off)
    decode: Callable[[np.ndarray, ModelManifest, np.ndarray, DecodeStats, float | None], list[Detections]]
    open_set: bool = False  # can report class "unknown"


def _check_rtdetr(shape: list[int | str], m: ModelManifest, where: str) -> None:
    n_cls = len(m.classes)
    if len(shape) != 3 or (isinstance(shape[2], int) and shape[2] != 4 + n_cls):
        raise ModelError(
            f"{where} output shape is {shape}; the manifest's {n_cls} classes need "
            f"[batch, queries, {4 + n_cls}] (RT-DETR: cx, cy, w, h + one score per class)"
        )


def _decode_rtdetr(
    raw: np.ndarray, m: ModelManifest, thr: np.ndarray, stats: DecodeStats, unknown: float | None
) -> list[Detections]:
    return decode_rtdetr(raw, input_size_px=m.input.size_px, thresholds=thr, stats=stats)


def _check_mask(shape: list[int | str], m: ModelManifest, where: str) -> None:
    assert isinstance(m.output, MaskOutput)
    check_mask_shape(shape, m.output, num_classes=len(m.classes), input_px=m.input.size_px, where=where)


def _decode_mask(
    raw: np.ndarray, m: ModelManifest, thr: np.ndarray, stats: DecodeStats, unknown: float | None
) -> list[Detections]:
    assert isinstance(m.output, MaskOutput)
    return decode_mask(raw, spec=m.output, thresholds=thr, stats=stats, unknown_threshold=unknown)


FORMATS: dict[type, OutputFormat] = {
    RtdetrOutput: OutputFormat(_check_rtdetr, _decode_rtdetr),
    MaskOutput: OutputFormat(_check_mask, _decode_mask, open_set=True),
}


def output_format(manifest: ModelManifest) -> OutputFormat:
    return FORMATS[type(manifest.output)]
