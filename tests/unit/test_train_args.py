"""The arguments `loomsight train` hands ultralytics for a new run (no training here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from offline_train.train import DEFAULT_AUGMENT, TrainOptions, ultralytics_args
from runtime.errors import ConfigError


def _args(tmp_path: Path, **kw: object) -> dict[str, object]:
    opts = TrainOptions(dataset=tmp_path, out=tmp_path / "runs", **kw)  # type: ignore[arg-type]
    return ultralytics_args(opts, tmp_path / "data.yaml", tile_px=320)


def test_from_scratch_keeps_the_usual_warmup(tmp_path: Path) -> None:
    args = _args(tmp_path)
    assert args["warmup_epochs"] == 3.0
    assert args["imgsz"] == 320
    assert args["plots"] is False  # plots would fetch a font
    assert args["patience"] == 101  # 0 = never stop early
    for k, v in DEFAULT_AUGMENT.items():
        assert args[k] == v


def test_fine_tune_starts_without_warmup_unless_asked(tmp_path: Path) -> None:
    weights = tmp_path / "best.pt"
    assert _args(tmp_path, weights=weights)["warmup_epochs"] == 0.0
    assert _args(tmp_path, weights=weights, warmup_epochs=1.5)["warmup_epochs"] == 1.5


def test_lr0_picks_adamw_and_bad_warmup_is_named(tmp_path: Path) -> None:
    args = _args(tmp_path, lr0=3e-4)
    assert (args["lr0"], args["optimizer"]) == (3e-4, "AdamW")
    assert "lr0" not in _args(tmp_path)
    with pytest.raises(ConfigError, match="--warmup-epochs -1"):
        _args(tmp_path, warmup_epochs=-1.0)


def test_a_dataset_from_clean_images_needs_their_scale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runtime.cli import main as loomsight

    (tmp_path / "clean").mkdir()
    assert loomsight(["dataset", "--out", str(tmp_path / "ds"), "--clean", str(tmp_path / "clean")]) != 0
    assert "--clean needs --camera-mm-per-px" in capsys.readouterr().err
