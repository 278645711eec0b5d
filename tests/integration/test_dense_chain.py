"""The dense route end to end: dataset (with label masks) -> `train --arch dense` for a step ->
`train --resume` -> `export` (a mask bundle, parity-checked) -> fine-tune from the bundle ->
RT-DETR `--backbone-from` the dense model -> the daemon on the synthetic loom
with that bundle -> defect and roll events in a real SUB socket."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import zmq

pytest.importorskip("torch")
pytest.importorskip("ultralytics")

from runtime.cli import main as loomsight
from runtime.config import parse_config
from runtime.daemon.app import Daemon
from runtime.detect.bundle import load_bundle
from runtime.detect.manifest import MaskOutput

pytestmark = [pytest.mark.train, pytest.mark.slow]


def _subscribe(
    endpoint: str,
) -> tuple[list[dict[str, Any]], threading.Event, threading.Thread, zmq.Socket[bytes]]:
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for topic in (b"defect.", b"roll."):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(endpoint)
    received: list[dict[str, Any]] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            if sub.poll(50):
                topic, body, *_ = sub.recv_multipart()
                received.append(json.loads(body))
                if topic.startswith(b"roll.") and received[-1].get("state") == "end":
                    done.set()

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    return received, done, t, sub


@pytest.mark.timeout(1500)  # seven CLI steps, three of them trainings
def test_dense_model_trains_exports_resumes_and_runs_through_the_daemon(
    tmp_path: Path, loopback_endpoint: str
) -> None:
    ds, runs, bundle = tmp_path / "ds", tmp_path / "runs", tmp_path / "bundle"
    assert loomsight(["dataset", "--out", str(ds), "--sim-webs", "2", "--sim-length-m", "0.5", "--sim-width-px",
                      "640", "--tile-px", "128", "--overlap-px", "16", "--val-every", "2", "--seed", "3",
                      "--sim-defects-per-m", "12"]) == 0  # fmt: skip
    # every tile has its exact label mask: 0 clean, k = class k - 1, and boxes agree with it
    masks = sorted((ds / "masks" / "train").glob("*.png"))
    assert len(masks) == len(list((ds / "images" / "train").glob("*.png"))) > 0
    labelled = [m for m in masks if (ds / "labels" / "train" / f"{m.stem}.txt").read_text().strip()]
    assert labelled
    m = cv2.imread(str(labelled[0]), cv2.IMREAD_UNCHANGED)
    assert m is not None
    first = (ds / "labels" / "train" / f"{labelled[0].stem}.txt").read_text().split()
    assert m.dtype == np.uint8 and int(first[0]) + 1 in set(np.unique(m).tolist())

    common = [
        "--arch",
        "dense",
        "--batch",
        "4",
        "--samples-per-epoch",
        "8",
        "--out",
        str(runs),
        "--name",
        "d",
    ]
    assert loomsight(["train", str(ds), "--epochs", "1", *common]) == 0
    weights = runs / "d" / "weights"
    record = json.loads((weights / "loomsight_train.json").read_text())
    assert record["arch"] == "dense" and record["wall_clock_s"] > 0 and len(record["metrics"]["history"]) == 1
    assert loomsight(["train", str(ds), "--epochs", "2", "--resume", *common]) == 0
    record = json.loads((weights / "loomsight_train.json").read_text())
    assert [h["epoch"] for h in record["metrics"]["history"]] == [1, 2]

    assert loomsight(["export", str(weights / "best.pt"), "--out", str(bundle), "--include-checkpoint",
                      "--latency-runs", "1"]) == 0  # fmt: skip
    b = load_bundle(bundle)
    assert isinstance(b.manifest.output, MaskOutput) and b.manifest.input.size_px == 128
    assert b.manifest.metrics["parity"]["model.onnx"]["max_abs_diff_probability"] < 1e-3
    assert sorted(b.manifest.sha256) == ["checkpoint.pt", "loomsight_train.json", "model.onnx"]

    # hard negatives: clean tiles the bundle fires on (every one, at a peak floor of 0), then a
    # fine-tune from the weights the bundle carries with them mixed in
    hn = tmp_path / "hardneg"
    assert loomsight(["mine", str(bundle), "--out", str(hn), "--sim-webs", "2", "--sim-length-m", "0.3",
                      "--min-peak", "0"]) == 0  # fmt: skip
    mined = json.loads((hn / "mining.json").read_text())
    assert mined["tiles_seen"] > 0 and sum(mined["kept"].values()) == mined["tiles_seen"]
    assert all(not p.read_text().strip() for p in (hn / "labels" / "train").glob("*.txt"))  # negatives only
    assert loomsight(["train", str(ds), "--arch", "dense", "--weights", str(bundle / "checkpoint.pt"), "--also",
                      f"{hn}:2", "--epochs", "1", "--batch", "4", "--samples-per-epoch", "8", "--out", str(runs),
                      "--name", "ft"]) == 0  # fmt: skip
    assert (runs / "ft" / "weights" / "best.pt").is_file()

    # RT-DETR started from the dense encoder: frozen for one epoch, then trained with the rest
    assert loomsight(["train", str(ds), "--model", "loomsight-s", "--backbone-from", str(weights / "best.pt"),
                      "--backbone-freeze-epochs", "1", "--epochs", "2", "--batch", "4", "--workers", "0",
                      "--out", str(runs), "--name", "rtdetr_from_dense"]) == 0  # fmt: skip
    assert (runs / "rtdetr_from_dense" / "weights" / "last.pt").is_file()

    # an untrained model at a threshold this low reports regions: enough to follow them to the SUB
    config = parse_config(
        {
            "line_id": "dense",
            "source": {"kind": "synthetic", "synthetic": {"realtime": False, "length_m": 1.0, "width_px": 640,
                                                          "seed": 910_777, "defects_per_m": 4.0}},
            "model": {"bundle": str(bundle), "batch_size": 4, "warmup_runs": 1, "retry_load_s": 0,
                      "thresholds": dict.fromkeys(b.manifest.classes, 0.001)},
            "publish": {"pub_endpoint": loopback_endpoint, "replay_endpoint": None, "jpeg_crops": True},
            "spool": {"path": str(tmp_path / "spool.sqlite3")},
        }
    )  # fmt: skip
    received, done, listener, sub = _subscribe(loopback_endpoint)
    time.sleep(0.3)
    summary = Daemon(config, roll_id="dense-roll").run()
    assert done.wait(15), "the roll end never reached the subscriber"
    done.set()
    listener.join(timeout=5)
    sub.close()
    defects = [e for e in received if e["kind"] == "defect"]
    assert defects, summary
    assert {e["class"] for e in defects} <= set(b.manifest.classes)
    assert all(0 <= e["bbox_px"][0] < e["bbox_px"][2] <= 640 for e in defects)
