"""`loomsight calib` end to end on synthetic captures written to disk: flat field (+ plot), scale
across from a stripe and a bar target, scale along, write, show, and the runtime reading the result."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from calib.synthetic import SyntheticCamera, bar_target, make_camera, stripe_target
from runtime.calibration import Calibration
from runtime.cli import main

W = 2048
DEAD = (333,)
HOT = (1200,)
TRUE_MM_PER_PX = 0.1


@pytest.fixture(scope="module")
def camera() -> SyntheticCamera:
    return make_camera(W, dead_columns=DEAD, hot_columns=HOT, noise_dn=1.5, seed=11)


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory, camera: SyntheticCamera) -> Path:
    root = tmp_path_factory.mktemp("captures")
    for name, level in (("dark", 0.0), ("white", 1.0)):
        folder = root / name
        folder.mkdir()
        for index in range(3):
            image = camera.capture(np.full(W, level), 200, seed_offset=10 * index + int(level))
            assert cv2.imwrite(str(folder / f"{name}_{index:03d}.png"), image)
    lens = lambda px: TRUE_MM_PER_PX * np.asarray(px)  # noqa: E731
    cv2.imwrite(str(root / "stripes.png"), camera.capture(stripe_target(W, 4.0, lens), 80, 5))
    cv2.imwrite(str(root / "bar.png"), camera.capture(bar_target(W, 400.25, 1650.75), 80, 6))
    cv2.imwrite(str(root / "narrow.png"), np.full((20, 1024), 128, np.uint8))
    cv2.imwrite(str(root / "deep.png"), np.full((20, W), 4000, np.uint16))
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main(["calib", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("work")


def test_flatfield_command(
    capsys: pytest.CaptureFixture[str], captures: Path, work: Path, camera: SyntheticCamera
) -> None:
    out_npz = work / "flatfield.npz"
    code, out, err = run(
        capsys, "flatfield", "--dark", captures / "dark", "--bright", captures / "white", "--out", out_npz
    )
    assert code == 0, err
    assert "1 dead [333]" in out and "1 hot [1200]" in out and "600 dark and 600 bright lines" in out
    plot = cv2.imread(str(work / "flatfield.png"))
    assert plot is not None and plot.shape[0] > 600 and plot.shape[1] >= 1000
    assert (plot < 128).any() and (plot > 200).any()  # something is drawn on a light background
    with np.load(out_npz, allow_pickle=False) as arrays:
        meta = json.loads(str(arrays["meta"]))
        assert arrays["gain"].shape == (W,) and "bright_std" in arrays
    assert [f["file"] for f in meta["inputs"]["dark"]["files"]] == [
        "dark_000.png",
        "dark_001.png",
        "dark_002.png",
    ]


def test_scale_commands(capsys: pytest.CaptureFixture[str], captures: Path, work: Path) -> None:
    code, out, err = run(
        capsys, "scale", "--image", captures / "stripes.png", "--pitch-mm", "4", "--out", work / "scale.json"
    )
    assert code == 0, err
    doc = json.loads((work / "scale.json").read_text())
    assert doc["kind"] == "loomsight.calib-scale/1" and doc["width_px"] == W
    assert doc["mm_per_px_x"] == pytest.approx(TRUE_MM_PER_PX, rel=3e-4)
    assert doc["details"]["pitch_px_fft"] == pytest.approx(40.0, rel=0.005)
    printed = re.search(r"mm_per_px_x = ([0-9.]+) \(2048 px = ([0-9.]+) mm\)", out)
    assert printed and float(printed.group(1)) == pytest.approx(doc["mm_per_px_x"], rel=1e-6)

    code, out, err = run(
        capsys,
        "scale",
        "--image",
        captures / "bar.png",
        "--target-width-mm",
        "125.05",
        "--out",
        work / "bar.json",
    )
    assert code == 0, err
    assert json.loads((work / "bar.json").read_text())["mm_per_px_x"] == pytest.approx(0.1, rel=2e-4)
    assert "edges at 400.2" in out

    code, _, err = run(
        capsys, "scale", "--image", captures / "bar.png", "--target-width-mm", "100", "--edges", "12;40"
    )
    assert code == 2 and "LEFT,RIGHT" in err


def test_along_command(capsys: pytest.CaptureFixture[str], work: Path) -> None:
    code, out, err = run(
        capsys,
        "along",
        "--speed-m-min",
        "48",
        "--line-rate-hz",
        "8000",
        "--mm-per-px-x",
        "0.1",
        "--out",
        work / "along.json",
    )
    assert code == 0, err
    assert json.loads((work / "along.json").read_text())["mm_per_line"] == pytest.approx(0.1)
    assert "pixel aspect along/across = 1.0000" in out
    code, out, _ = run(capsys, "along", "--encoder-pulses-per-mm", "20", "--lines-per-pulse", "0.5")
    assert code == 0 and "mm_per_line = 0.1000000" in out
    code, _, err = run(capsys, "along", "--speed-m-min", "48")
    assert code == 2 and "--line-rate-hz" in err


def test_write_show_and_runtime_reads_it(
    capsys: pytest.CaptureFixture[str], work: Path, camera: SyntheticCamera, captures: Path
) -> None:
    test_flatfield_command(capsys, captures, work, camera)
    test_scale_commands(capsys, captures, work)
    test_along_command(capsys, work)
    target = work / "etc" / "calibration.json"
    argv: list[str | Path] = [
        "write",
        "--scale",
        work / "scale.json",
        "--along",
        work / "along.json",
        "--flatfield",
        work / "flatfield.npz",
        "--camera-serial",
        "40123456",
        "--out",
        target,
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert (work / "etc" / "calibration.flatfield.npz").is_file()
    assert "dead columns [333], hot columns [1200]" in out and "camera 40123456" in out

    code, _, err = run(capsys, *argv)
    assert code == 2 and "--force" in err  # nothing is overwritten silently

    calibration = Calibration.load(target)
    calibration.check_width(W)
    assert calibration.mm_per_px_x == pytest.approx(TRUE_MM_PER_PX, rel=3e-4)
    assert calibration.mm_per_line == pytest.approx(0.1)
    inputs = calibration.provenance["inputs"]
    assert set(inputs) == {"scale", "along", "flat_field"} and len(inputs["scale"]["sha256"]) == 64
    # The runtime flattens what this camera sees: a uniform grey web comes out uniform.
    frame = camera.capture(np.full(W, 0.5), 256, 99)
    corrected = calibration.apply_flat_field(frame).astype(np.float64)
    assert np.ptp(frame.mean(axis=0)) > 40  # vignetting before
    column_means = corrected.mean(axis=0)
    assert calibration.flat_field is not None
    assert (
        np.ptp(column_means) < 6 and abs(column_means.mean() - 0.5 * calibration.flat_field.target_level) < 2
    )

    code, out, _ = run(capsys, "show", target, "--json")
    assert code == 0 and json.loads(out)["schema"] == "loomsight.calibration/1"
    # the installed console script finds the subcommand through its entry point
    exe = Path(sys.executable).parent / "loomsight"
    shown = subprocess.run(
        [str(exe), "calib", "show", str(target)], check=False, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0 and f"line width       {W} px" in shown.stdout


def test_write_refuses_parts_of_different_widths(
    capsys: pytest.CaptureFixture[str], captures: Path, work: Path
) -> None:
    code, _, err = run(
        capsys,
        "scale",
        "--image",
        captures / "narrow.png",
        "--target-width-mm",
        "10",
        "--edges",
        "10,500",
        "--out",
        work / "narrow.json",
    )
    assert code == 0, err
    if not (work / "flatfield.npz").exists():
        run(
            capsys,
            "flatfield",
            "--dark",
            captures / "dark",
            "--bright",
            captures / "white",
            "--out",
            work / "flatfield.npz",
        )
    code, _, err = run(
        capsys,
        "write",
        "--scale",
        work / "narrow.json",
        "--mm-per-line",
        "0.1",
        "--flatfield",
        work / "flatfield.npz",
        "--out",
        work / "mixed.json",
    )
    assert code == 2 and "disagree on the line width" in err and "scale 1024 px" in err
    assert not (work / "mixed.json").exists()


def test_bad_captures_get_clear_errors(
    capsys: pytest.CaptureFixture[str], captures: Path, work: Path
) -> None:
    code, _, err = run(
        capsys,
        "flatfield",
        "--dark",
        captures / "deep.png",
        "--bright",
        captures / "white",
        "--out",
        work / "x.npz",
    )
    assert code == 2 and "uint16" in err and "Mono8" in err
    code, _, err = run(
        capsys,
        "flatfield",
        "--dark",
        captures / "white",
        "--bright",
        captures / "dark",
        "--out",
        work / "x.npz",
    )
    assert code == 2 and "swapped" in err
    code, _, err = run(capsys, "show", work / "missing.json")
    assert code == 2 and "does not exist" in err
