"""`loomsight line-rate`: the camera's rates and the model tiles a line needs, from the runtime's
own strip geometry and tiler, and the measured headroom on this box (logic, not timing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.cli import main as loomsight
from runtime.detect.bundle import load_bundle
from runtime.line_rate import line_needs

pytest.importorskip("onnx")
from tests.helpers.tiny_models import write_tiny_bundle


def test_a_2_m_line_at_60_m_min_needs_what_the_geometry_says(tmp_path: Path) -> None:
    m = load_bundle(write_tiny_bundle(tmp_path / "b", size_px=256, overlap_px=32, mm_per_px=0.4)).manifest
    needs = line_needs(width_m=2.0, speed_m_min=60.0, mm_per_px=0.1, mm_per_line=0.1, manifest=m)
    assert needs.line_rate_hz == pytest.approx(10_000) and needs.pixels_per_line == 20_000
    assert needs.pixel_rate_mpx_s == pytest.approx(200.0)
    # 5,000 model px across = 23 tile columns (stride 224); a strip of 1,024 + 128 lines = 288 model
    # rows = 2 tile rows; 9.77 strips per metre
    assert needs.tiles_per_m == pytest.approx(23 * 2 * 1000 / 102.4, abs=0.1)
    assert needs.minimal_tiles_per_m == pytest.approx(23 * 2500 / 224, abs=0.1)
    assert needs.tiles_per_s == pytest.approx(needs.tiles_per_m, abs=0.1)  # 1 m/s
    fit = line_needs(
        width_m=2.0, speed_m_min=60.0, mm_per_px=0.1, mm_per_line=0.1, manifest=m, strip_lines="fit"
    )
    assert fit.tiles_per_m <= 1.05 * fit.minimal_tiles_per_m


def test_measure_reports_headroom_and_a_bad_speed_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = write_tiny_bundle(tmp_path / "b", size_px=64, overlap_px=8, mm_per_px=0.4)
    out = tmp_path / "lr.json"
    code = loomsight(["line-rate", "--width-m", "0.5", "--speed-m-min", "5", "--mm-per-px", "0.4", "--bundle",
                      str(bundle), "--measure", "--json", str(out)])  # fmt: skip
    doc = json.loads(out.read_text())
    assert code == (0 if doc["headroom"] >= 1 else 1)
    assert (
        doc["measured_tiles_per_s"]["min"]
        <= doc["measured_tiles_per_s"]["median"]
        <= doc["measured_tiles_per_s"]["max"]
    )
    assert doc["fastest_m_min"] == pytest.approx(5 * doc["headroom"])
    assert "headroom" in capsys.readouterr().out
    assert loomsight(["line-rate", "--width-m", "2", "--speed-m-min", "0", "--mm-per-px", "0.1", "--bundle",
                      str(bundle)]) != 0  # fmt: skip
    assert "--speed-m-min must be > 0" in capsys.readouterr().err
