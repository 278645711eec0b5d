"""`loomsight sim` end to end: strips, truth.json and the gallery, consistent with the loom."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from runtime.sim.defects import DEFECT_CLASSES
from runtime.sim.fabric import FABRICS, FabricSpec
from runtime.sim.loom import SyntheticLoom


def _sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "sim", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_sim_writes_strips_truth_and_gallery(tmp_path: Path) -> None:
    out = tmp_path / "web"
    proc = _sim(
        "--out",
        str(out),
        "--fabric",
        "twill_3_1_gray",
        "--length-m",
        "0.5",
        "--seed",
        "3",
        "--width-px",
        "640",
        "--defects-per-m",
        "16",
        "--strip-lines",
        "1200",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "truth.json").read_text())
    assert doc["lines"] == 5000 and doc["width_px"] == 640 and doc["classes"] == list(DEFECT_CLASSES)
    assert FabricSpec.from_dict(doc["fabric"]) == FABRICS["twill_3_1_gray"]
    strips: list[np.ndarray] = []
    for s in doc["strips"]:
        strip = cv2.imread(str(out / s["file"]), cv2.IMREAD_UNCHANGED)
        assert strip is not None, s["file"]
        strips.append(strip)
    assert [s["line0"] for s in doc["strips"]] == [0, 1200, 2400, 3600, 4800]
    assert sorted(p.name for p in out.glob("web_*.png")) == [s["file"] for s in doc["strips"]]
    web = np.concatenate(strips)
    assert web.shape == (5000, 640) and web.dtype == np.uint8
    # The files hold exactly the loom's web, and truth.json exactly its defects.
    loom = SyntheticLoom(FABRICS["twill_3_1_gray"], width_px=640, seed=3, defects_per_m=16.0)
    assert np.array_equal(web, loom.next_block(5000).pixels)
    assert doc["defects"] == [t.to_dict() for t in loom.truth]
    assert len(doc["defects"]) >= 3
    for d in doc["defects"]:
        x0, y0, x1, y1 = d["bbox_px"]
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 and y0 < 5000
        assert d["class"] in DEFECT_CLASSES and d["class_id"] == DEFECT_CLASSES.index(d["class"])
        assert abs(d["x_mm"] - x0 * 0.1) < 1e-3 and abs(d["h_mm"] - (y1 - y0) * 0.1) < 1e-3
    gallery = cv2.imread(str(out / "gallery.png"))
    small = cv2.imread(str(out / "gallery_4x.png"))
    assert gallery is not None and gallery.shape[0] > 1000 and gallery.shape[1] > 1000
    assert small is not None and small.shape == gallery.shape


def test_sim_single_image_and_bad_fabric(tmp_path: Path) -> None:
    out = tmp_path / "one"
    proc = _sim(
        "--out",
        str(out),
        "--fabric",
        "plain",
        "--length-m",
        "0.1",
        "--width-px",
        "256",
        "--single-image",
        "--no-gallery",
    )
    assert proc.returncode == 0, proc.stderr
    img = cv2.imread(str(out / "web.png"), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.shape == (1000, 256)
    assert not (out / "gallery.png").exists()
    bad = _sim("--out", str(out), "--fabric", "silk_gray", "--length-m", "0.1")
    assert bad.returncode == 2
    assert "unknown fabric 'silk_gray'" in bad.stderr and "plain_gray" in bad.stderr
