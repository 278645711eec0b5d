"""PyTorch RT-DETR -> ONNX with the bundle's output contract, and the parity check against PyTorch.

The exported graph takes `images` (B, 3, S, S) float32 in 0..1 and returns `output0`
(B, queries, 4 + classes): boxes cx, cy, w, h normalised to the input and one sigmoid probability
per class — what `runtime.detect.decode.decode_rtdetr` reads. Ultralytics' RTDETRDecoder in
export mode would instead return its top-k post-processed (B, k, 6) [box, score, class index]
tensor, so on the copy we export the decoder's `postprocess` is replaced by a plain concatenation
of the last decoder layer's boxes and class probabilities.

The reference for parity is the untouched checkpoint model in ordinary eval mode (not fused, not
in export mode): its raw decoder outputs, concatenated the same way. That also checks the export
copy's fusion and the replaced `postprocess`.
"""

from __future__ import annotations

import copy
import logging
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

MIN_OPSET = 17
MAX_OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "output0"


def check_opset(opset: int) -> int:
    if opset > MAX_OPSET:
        raise ConfigError(
            f"--opset {opset} is above {MAX_OPSET}: ONNX Runtime's CUDA provider has no GridSample kernel above "
            f"opset {MAX_OPSET} and silently runs RT-DETR's deformable attention on the CPU; use --opset 17 or 18"
        )
    if opset < MIN_OPSET:
        raise ConfigError(
            f"--opset {opset} is below {MIN_OPSET}: RT-DETR needs GridSample (opset 16) and LayerNormalization "
            "(opset 17) as single operators; use --opset 17 or 18"
        )
    return opset


def _concat_postprocess(self: Any, boxes: Any, scores: Any) -> Any:
    import torch

    return torch.cat([boxes, scores], dim=-1)


def export_model(model: Any) -> Any:
    """A fused copy of `model` whose forward returns (B, queries, 4 + classes)."""
    from ultralytics.nn.modules.block import C2f
    from ultralytics.nn.modules.head import RTDETRDecoder

    m = copy.deepcopy(model).float().eval()
    for p in m.parameters():
        p.requires_grad = False
    m = m.fuse(verbose=False) if _fuse_takes_verbose(m) else m.fuse()  # Conv+BN, RepConv folded
    head = m.model[-1]
    if not isinstance(head, RTDETRDecoder):
        raise ModelError(f"the model's last layer is {type(head).__name__}, not RTDETRDecoder")
    head.export = True
    head.format = "onnx"  # type: ignore[assignment]
    head.dynamic = False  # only the batch varies; anchors for the fixed input size become constants
    head.postprocess = types.MethodType(_concat_postprocess, head)  # type: ignore[method-assign]
    for module in m.modules():
        if isinstance(module, C2f):
            module.forward = module.forward_split  # type: ignore[method-assign]  # same maths, a Split instead of chunk+slices in the graph
    return m


def _fuse_takes_verbose(model: Any) -> bool:
    import inspect

    try:
        return "verbose" in inspect.signature(model.fuse).parameters
    except (TypeError, ValueError):
        return False


def reference_output(model: Any, x: np.ndarray) -> np.ndarray:
    """The checkpoint model's own eval-mode output in the bundle's layout (B, queries, 4 + classes)."""
    import torch

    with torch.inference_mode():
        out = model(torch.from_numpy(x))
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple)):
        raise ModelError(
            "the RT-DETR model did not return (predictions, raw decoder outputs) in eval mode; "
            "this ultralytics version is not supported by `loomsight export`"
        )
    dec_bboxes, dec_scores = out[1][0], out[1][1]
    boxes = dec_bboxes[-1] if dec_bboxes.dim() == 4 else dec_bboxes
    scores = dec_scores[-1] if dec_scores.dim() == 4 else dec_scores
    return torch.cat([boxes, scores.sigmoid()], dim=-1).float().numpy()


def export_onnx(
    model: Any,
    path: Path,
    *,
    size_px: int,
    opset: int,
    batch: int | None,
    num_queries: int,
    num_classes: int,
    simplify: bool = True,
) -> dict[str, Any]:
    """Write `model` (from `export_model`) as ONNX; batch None = dynamic. Returns what happened."""
    import onnx
    import torch

    check_opset(opset)
    example_batch = batch if batch is not None else 2  # 2, so no size-1 dimension is specialised away
    x = torch.rand(example_batch, 3, size_px, size_px)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if batch is None else None
    raw_path = path.with_suffix(".raw.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(raw_path),
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(raw_path))
    raw_path.unlink()
    nodes_before = len(proto.graph.node)
    info: dict[str, Any] = {"nodes_exported": nodes_before, "simplified": False}
    if simplify:
        import onnxslim

        try:
            proto = onnxslim.slim(proto)
            info["simplified"] = True
            info["simplifier"] = f"onnxslim {onnxslim.__version__}"
        except Exception as exc:  # a simplifier failure leaves a valid, unsimplified graph
            log.warning("onnxslim could not simplify %s (%s); keeping the unsimplified graph", path.name, exc)
            info["simplifier_error"] = f"{type(exc).__name__}: {exc}"
    _set_io_shapes(proto, batch=batch, size_px=size_px, num_queries=num_queries, num_classes=num_classes)
    proto.producer_name = "loomsight export"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    info["nodes"] = len(proto.graph.node)
    info["opset"] = opset
    info["batch"] = batch if batch is not None else "dynamic"
    return info


def _set_io_shapes(
    proto: Any, *, batch: int | None, size_px: int, num_queries: int, num_classes: int
) -> None:
    """Name every I/O dimension exactly (a simplifier may leave symbolic names for static sizes)."""

    def fill(value_info: Any, dims: list[int | str]) -> None:
        shape = value_info.type.tensor_type.shape
        if len(shape.dim) != len(dims):
            raise ModelError(f"exported {value_info.name} has rank {len(shape.dim)}, expected {len(dims)}")
        for d, want in zip(shape.dim, dims, strict=True):
            if isinstance(want, str):
                d.dim_param = want
            else:
                d.dim_value = want

    b: int | str = batch if batch is not None else "batch"
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    if inp.name != INPUT_NAME or out.name != OUTPUT_NAME:
        raise ModelError(
            f"exported graph I/O is {inp.name!r} -> {out.name!r}, expected {INPUT_NAME!r} -> {OUTPUT_NAME!r}"
        )
    fill(inp, [b, 3, size_px, size_px])
    fill(out, [b, num_queries, 4 + num_classes])


@dataclass(frozen=True)
class Parity:
    """Largest |ONNX - PyTorch| over the sample tiles, boxes and scores separately.

    `reordered_tiles`: tiles whose queries came out in another order and were matched one to one;
    `ignored_queries`: queries left out because neither output scores them at `score_floor` or more.
    """

    max_abs_diff_boxes: float
    max_abs_diff_scores: float
    tiles: int
    reordered_tiles: int = 0
    compared_queries: int = 0
    ignored_queries: int = 0
    score_floor: float = 0.0

    @property
    def max_abs_diff(self) -> float:
        return max(self.max_abs_diff_boxes, self.max_abs_diff_scores)

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "max_abs_diff_boxes": self.max_abs_diff_boxes,
            "max_abs_diff_scores": self.max_abs_diff_scores,
            "tiles": self.tiles,
            "reordered_tiles": self.reordered_tiles,
            "compared_queries": self.compared_queries,
            "ignored_queries": self.ignored_queries,
            "score_floor": self.score_floor,
        }


def _match_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Permutation p so that b[p] is closest to a row by row (greedy on the max-abs cost, one-to-one)."""
    cost = np.nan_to_num(np.abs(a[:, None, :] - b[None, :, :]).max(axis=2), nan=np.inf)
    order = np.argsort(cost, axis=None, kind="stable")
    perm = np.full(len(a), -1, np.int64)
    used_a = np.zeros(len(a), bool)
    used_b = np.zeros(len(b), bool)
    for flat in order:
        i, j = divmod(int(flat), len(b))
        if used_a[i] or used_b[j]:
            continue
        perm[i] = j
        used_a[i] = used_b[j] = True
        if used_a.all():
            break
    return perm


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| with any NaN/Inf counted as an infinite difference (a broken model never passes)."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    d[~np.isfinite(d)] = np.inf
    return d


def compare_outputs(
    onnx_out: np.ndarray, torch_out: np.ndarray, *, tolerance: float, score_floor: float = 0.0
) -> Parity:
    """Per tile: compare query by query; where that exceeds `tolerance`, compare after matching queries.

    RT-DETR picks its queries with a top-k over encoder scores. Two nearly equal scores may swap
    (the same queries in another order: nothing the runtime decodes changes), and a near tie at the
    k-th place may let a different query in. After matching, a pair is compared only when either
    side's best class probability reaches `score_floor`: a query below it in both outputs can never
    become a detection at a threshold at or above the floor. `score_floor=0` compares every query.
    """
    if onnx_out.shape != torch_out.shape:
        raise ModelError(f"ONNX output shape {onnx_out.shape} differs from PyTorch's {torch_out.shape}")
    worst_boxes = worst_scores = 0.0
    reordered = compared = ignored = 0
    for a, b_raw in zip(torch_out, onnx_out, strict=True):
        b = b_raw
        d = _abs_diff(a, b)
        keep = np.ones(len(a), bool)
        if d.max(initial=0.0) > tolerance:
            p = _match_rows(a, b)
            d_matched = _abs_diff(a, b[p])
            if d_matched.max(initial=0.0) < d.max(initial=0.0):
                d, b = d_matched, b[p]
                reordered += 1
            finite = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
            best = np.maximum(a[:, 4:].max(axis=1, initial=0.0), b[:, 4:].max(axis=1, initial=0.0))
            keep = ~finite | (best >= score_floor)  # a row with NaN/Inf is always compared, and fails
        compared += int(keep.sum())
        ignored += int((~keep).sum())
        d = d[keep]
        worst_boxes = max(worst_boxes, float(d[:, :4].max(initial=0.0)))
        worst_scores = max(worst_scores, float(d[:, 4:].max(initial=0.0)))
    return Parity(worst_boxes, worst_scores, len(torch_out), reordered, compared, ignored, score_floor)
