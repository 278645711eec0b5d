"""Strips fitted to the model's tiling: no tile row is spent on lines already inspected."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.config import parse_config
from runtime.daemon.app import strip_geometry
from runtime.detect.manifest import ModelManifest
from runtime.errors import ConfigError
from runtime.frame import Strip
from runtime.preprocess import Preprocessor
from runtime.tiler import axis_starts
from tests.helpers.tiny_models import manifest_fields


def _manifest(size_px: int, overlap_px: int, mm_per_px: float) -> ModelManifest:
    fields = manifest_fields(
        classes=["hole"], size_px=size_px, num_queries=5, mm_per_px=mm_per_px, overlap_px=overlap_px
    )
    return ModelManifest.model_validate(
        {"schema": "loomsight.model/1", "sha256": {"model.onnx": "0" * 64}, **fields}
    )


def _tile_rows(lines: int, mm_per_line: float, manifest: ModelManifest) -> int:
    pre = Preprocessor(
        camera_mm_per_px=0.1, camera_mm_per_line=mm_per_line, model_mm_per_px=manifest.mm_per_px
    )
    view = pre(Strip(np.zeros((lines, 64), np.uint8), 0, 0, 0, "r", 0))
    return len(axis_starts(view.pixels.shape[0], manifest.tile.size_px, manifest.tile.overlap_px))


@pytest.mark.parametrize(
    ("size_px", "overlap_px", "mm_per_px", "mm_per_line"),
    [
        (256, 32, 0.4, 0.1),
        (256, 32, 0.4, 0.0937),
        (640, 64, 0.2, 0.05),
        (128, 16, 0.4, 0.13),
        (256, 32, 0.4, 0.4),
    ],
)
def test_every_strip_costs_exactly_the_tile_rows_its_new_lines_need(
    size_px: int, overlap_px: int, mm_per_px: float, mm_per_line: float
) -> None:
    manifest = _manifest(size_px, overlap_px, mm_per_px)
    strip, overlap = strip_geometry(parse_config({"web": {"strip_lines": "fit"}}), manifest, mm_per_line)
    stride_px = size_px - overlap_px
    rows = _tile_rows(overlap + strip, mm_per_line, manifest)  # every strip after a roll's first
    # the new lines reach nearly k strides, and k tile rows cover them plus the repeated overlap
    assert rows * stride_px * mm_per_px >= strip * mm_per_line > (rows * stride_px - 2) * mm_per_px
    assert overlap * mm_per_line >= overlap_px * mm_per_px  # a box on the boundary is seen whole
    assert _tile_rows(strip, mm_per_line, manifest) <= rows  # a roll's first strip (no overlap)
    # one more row per strip is what the old fixed 1,024-line strips cost at 0.1 mm/line
    assert (
        _tile_rows(overlap + strip + round(stride_px * mm_per_px / mm_per_line / 4), mm_per_line, manifest)
        == rows + 1
    )


def test_configured_strips_win_and_a_bad_pair_is_named() -> None:
    manifest = _manifest(256, 32, 0.4)
    assert strip_geometry(
        parse_config({"web": {"strip_lines": 1024, "overlap_lines": 64}}), manifest, 0.1
    ) == (1024, 64)
    # the default: 1,024 lines, the overlap from the model
    assert strip_geometry(parse_config({}), manifest, 0.1) == (1024, 128)
    assert strip_geometry(parse_config({}), manifest, 0.05) == (1024, 256)
    with pytest.raises(ConfigError, match=r'web.strip_lines must be >= 16 lines or "fit", got 8'):
        parse_config({"web": {"strip_lines": 8}})
    with pytest.raises(
        ConfigError, match=r"web.overlap_lines \(2000\) must be smaller than web.strip_lines \(1788\)"
    ):
        strip_geometry(parse_config({"web": {"overlap_lines": 2000, "strip_lines": "fit"}}), manifest, 0.1)
    with pytest.raises(
        ConfigError, match=r"web.overlap_lines \(2000\) must be smaller than web.strip_lines \(1500\)"
    ):
        parse_config({"web": {"overlap_lines": 2000, "strip_lines": 1500}})
