"""The open set through the daemon: a dense bundle whose agnostic channel is sure of a defect that no
class is reports it as class "unknown" (model.unknown_defects), published and spooled; with the
open set off the same web reports nothing; an RT-DETR bundle refuses the setting at load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.config import ModelConfig, parse_config
from runtime.daemon.app import Daemon
from runtime.detect.bundle import open_detector
from runtime.errors import ModelError
from runtime.inspect.images import ImageSource
from runtime.report.spool_rolls import SpoolRolls

pytest.importorskip("onnx")
from tests.conftest import free_tcp_port
from tests.helpers.tiny_mask_model import write_tiny_mask_bundle
from tests.helpers.tiny_models import write_tiny_bundle


def _events(tmp_path: Path, bundle: Path, unknown: bool) -> list[dict[str, Any]]:
    """The defect events of one roll, as the daemon published and spooled them (read back from the
    spool: a roll this short ends before a SUB socket could reliably join)."""
    web = np.full((3000, 1024), 10, np.uint8)
    web[1200:1400, 400:520] = 200  # P(defect) ~0.78 at the model's cells
    spool = tmp_path / f"spool-{unknown}.sqlite3"
    config = parse_config(
        {
            "line_id": "open-set",
            "source": {"kind": "synthetic", "synthetic": {"realtime": False}},
            "model": {"bundle": str(bundle), "batch_size": 4, "retry_load_s": 0,
                      "thresholds": {"hole": 0.95, "stain": 0.95},
                      "unknown_defects": {"enabled": unknown, "threshold": 0.6}},
            "publish": {"pub_endpoint": f"tcp://127.0.0.1:{free_tcp_port()}", "replay_endpoint": None,
                        "jpeg_crops": False},
            "spool": {"path": str(spool)},
        }
    )  # fmt: skip
    summary = Daemon(config, source=ImageSource(web, "web", block_lines=400), roll_id=f"open-{unknown}").run()
    assert summary["state"] == "end", summary
    with SpoolRolls(spool) as rolls:
        roll = rolls.roll(f"open-{unknown}")
    assert roll.end is not None
    return roll.defects


def test_a_defect_no_class_is_sure_of_is_reported_as_unknown(tmp_path: Path) -> None:
    bundle = write_tiny_mask_bundle(tmp_path / "dense", classes=["hole", "stain"], class_probs=[0.5, 0.5])
    defects = _events(tmp_path, bundle, unknown=True)
    assert [e["class"] for e in defects] == ["unknown"], defects
    x0, y0, x1, y1 = defects[0]["bbox_px"]
    assert abs(x0 - 400) <= 8 and abs(x1 - 520) <= 8 and abs(y0 - 1200) <= 8 and abs(y1 - 1400) <= 8


def test_with_the_open_set_off_the_same_defect_is_not_reported(
    tmp_path: Path, loopback_endpoint: str
) -> None:
    bundle = write_tiny_mask_bundle(tmp_path / "dense", classes=["hole", "stain"], class_probs=[0.5, 0.5])
    assert _events(tmp_path, bundle, unknown=False) == []


def test_an_rtdetr_bundle_refuses_the_open_set(tmp_path: Path) -> None:
    bundle = write_tiny_bundle(tmp_path / "boxes")
    cfg = ModelConfig.model_validate({"bundle": str(bundle), "unknown_defects": {"enabled": True}})
    with pytest.raises(ModelError, match="no class-agnostic channel"):
        open_detector(cfg)
