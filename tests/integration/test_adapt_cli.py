"""`loomsight adapt` end to end with a tiny budget: clean strips of a held-out fabric -> a loadable
bundle whose manifest names where it came from, with its report; bad input stops before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("ultralytics")

from runtime.cli import main as loomsight
from runtime.config import parse_config
from runtime.detect.bundle import load_bundle, open_detector
from runtime.sim.fabric import get_fabric
from runtime.sim.loom import render_web

pytestmark = [pytest.mark.train, pytest.mark.slow]

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "default"


def _clean_strips(folder: Path, *, strips: int = 4, lines: int = 4096) -> list[Path]:
    """A defect-free web of a reserved held-out fabric as line-scan strips, as `loomsight sim` writes."""
    pixels, _, _ = render_web(get_fabric("random:11"), length_m=strips * lines * 1e-4, width_px=2048,
                              mm_per_px=0.1, mm_per_line=0.1, seed=11, defects_per_m=0, with_masks=True)  # fmt: skip
    folder.mkdir(parents=True)
    paths = []
    for i in range(strips):
        paths.append(folder / f"web_{i * lines:08d}.png")
        cv2.imwrite(str(paths[-1]), pixels[i * lines : (i + 1) * lines])
    return paths


@pytest.mark.timeout(900)
def test_adapt_turns_clean_strips_into_a_loadable_bundle_with_provenance_and_a_report(tmp_path: Path) -> None:
    strips = _clean_strips(tmp_path / "clean")
    out = tmp_path / "adapted"
    argv = ["adapt", "--clean", str(tmp_path / "clean"), "--mm-per-px", "0.1", "--from", str(BUNDLE),
            "--out", str(out), "--minutes", "0.15", "--variants", "1", "--sim-webs", "0",
            "--synth", "perlin,streaks"]  # fmt: skip
    assert loomsight(argv) == 0

    bundle = load_bundle(out)  # sha256 of model.onnx checked
    m = bundle.manifest
    assert m.name == "loomsight-default-adapted"
    prov = m.provenance["adaptation"]
    assert prov["source_bundle"] == str(BUNDLE) and prov["synthesizers"] == ["perlin", "streaks"]
    assert sorted(Path(p).name for p in prov["clean_sha256"]) == [p.name for p in strips]
    summary = json.loads((out / "adaptation.json").read_text())
    assert summary["split"] == "by image" and summary["held_back_tiles"] > 0
    assert summary["after"]["false_alarms_per_m2"] <= 0.5 or not summary["target_met"]
    assert m.thresholds == summary["after"]["thresholds"]
    assert all(0.2 <= m.thresholds[c] <= 0.99 for c in m.classes)  # chosen on the grid, floor up
    assert (out / "checkpoint.pt").is_file()  # the adapted bundle can be adapted again
    assert "| before |" in (out / "adaptation.md").read_text()
    png = cv2.imread(str(out / "adaptation.png"))
    assert png is not None and png.shape[0] > 200
    # the bundle runs: the daemon's own detector factory opens it and infers on a tile
    det = open_detector(parse_config({"model": {"bundle": str(out)}}).model)
    try:
        assert len(det.infer(np.full((1, 256, 256), 128, np.uint8))) == 1
    finally:
        det.close()
    assert not list(tmp_path.glob(".adapted.adapt.*"))  # its work folder is gone


def test_adapt_refuses_bad_input_before_any_work_and_overwrites_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _clean_strips(tmp_path / "clean", strips=2, lines=2048)
    base = ["adapt", "--clean", str(tmp_path / "clean"), "--from", str(BUNDLE)]

    def refused(argv: list[str], says: str) -> None:
        capsys.readouterr()
        assert loomsight(argv) == 2
        assert says in capsys.readouterr().err

    refused([*base, "--mm-per-px", "0.05", "--out", str(tmp_path / "a")], "resampled 8.0x")
    refused(
        [*base, "--mm-per-px", "0.1", "--out", str(tmp_path / "a"), "--minutes", "0.01"], "needs at least"
    )
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    refused([*base, "--mm-per-px", "0.1", "--out", str(taken)], "not empty")
    assert (taken / "keep.txt").read_text() == "mine"
    no_ckpt = tmp_path / "no_ckpt"
    shutil.copytree(BUNDLE, no_ckpt, ignore=shutil.ignore_patterns("checkpoint.pt"))
    refused(["adapt", "--clean", str(tmp_path / "clean"), "--from", str(no_ckpt), "--mm-per-px", "0.1",
             "--out", str(tmp_path / "b")], "--include-checkpoint")  # fmt: skip
    (tmp_path / "clean" / "web_00000000.png").write_bytes(b"\x89PNG truncated")
    refused([*base, "--mm-per-px", "0.1", "--out", str(tmp_path / "c"), "--minutes", "0"], "web_00000000.png")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
