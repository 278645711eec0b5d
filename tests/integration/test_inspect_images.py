"""`loomsight inspect`: separate images through the daemon path, each its own roll; every defect
names its source file and frame index; overlays and a summary; no config, no sockets, no spool
left behind; the camera scale is required."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.cli import main as loomsight

pytest.importorskip("onnx")
from tests.helpers.tiny_mask_model import write_tiny_mask_bundle


def _strips(folder: Path) -> list[tuple[int, int, int, int]]:
    """Three line-scan strips (4096 x 256, gray): a bright patch in the first and the third."""
    folder.mkdir()
    patches = [(1000, 60, 1100, 140), None, (3000, 100, 3080, 200)]
    for i, patch in enumerate(patches):
        img = np.full((256, 4096), 12, np.uint8)
        if patch:
            x0, y0, x1, y1 = patch
            img[y0:y1, x0:x1] = 230
        cv2.imwrite(str(folder / f"strip_{i}.png"), img)
    return [p for p in patches if p]


def test_each_image_is_inspected_and_its_defects_name_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bundle = write_tiny_mask_bundle(tmp_path / "bundle", classes=["hole", "stain"], class_probs=[0.9, 0.1])
    patches = _strips(tmp_path / "strips")
    out = tmp_path / "out"
    assert loomsight(["inspect", str(tmp_path / "strips"), "--model", str(bundle), "--mm-per-px", "0.1",
                      "--out", str(out)]) == 0  # fmt: skip
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    defects = [e for e in events if e["kind"] == "defect"]
    assert [(Path(d["source_file"]).name, d["frame_index"]) for d in defects] == [
        ("strip_0.png", 0),
        ("strip_2.png", 2),
    ]
    for d, (x0, y0, x1, y1) in zip(defects, patches, strict=True):
        assert d["class"] == "hole"
        bx0, by0, bx1, by1 = d["bbox_px"]
        assert abs(bx0 - x0) <= 8 and abs(bx1 - x1) <= 8 and abs(by0 - y0) <= 8 and abs(by1 - y1) <= 8
    rolls = [e for e in events if e["kind"] == "roll" and e.get("state") == "end"]
    assert len(rolls) == 3  # one roll per image
    summary = json.loads((out / "summary.json").read_text())
    assert [i["defects"] for i in summary["images"]] == [1, 0, 1] and summary["defects_by_class"] == {
        "hole": 2
    }
    overlay = cv2.imread(str(out / summary["images"][0]["overlay"]))
    assert overlay is not None and overlay.shape == (256, 4096, 3)
    assert not list(tmp_path.glob("*.sqlite3")), "inspect leaves no spool behind"


def test_the_camera_scale_is_required_and_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        loomsight(["inspect", str(tmp_path), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert (
        loomsight(["inspect", str(tmp_path / "nope"), "--mm-per-px", "0.1", "--out", str(tmp_path / "o")])
        != 0
    )
