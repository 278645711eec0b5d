"""Train -> export -> runtime, entirely offline: a socket guard records any network attempt.

The whole offline chain runs in a child interpreter whose `sitecustomize` makes every IPv4/IPv6
connect and every DNS lookup fail and be written to a log. The test passes only if training
completed, the bundle loads in the runtime and gives detections of the right shape, and the
log is empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("ultralytics")
pytestmark = [pytest.mark.train, pytest.mark.slow]

GUARD = textwrap.dedent(
    """
    import os, socket
    _LOG = os.environ["LOOMSIGHT_NET_LOG"]

    def _record(what):
        with open(_LOG, "a", encoding="utf-8") as fh:
            fh.write(what + "\\n")

    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _record(f"connect {address!r}")
            raise OSError("network disabled by the test")
        return _connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _record(f"connect_ex {address!r}")
            return 111
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        _record(f"getaddrinfo {host!r}")
        raise socket.gaierror("network disabled by the test")

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = lambda host: (_record(f"gethostbyname {host!r}"), (_ for _ in ()).throw(OSError("no")))[1]
    """
)

CHAIN = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    from runtime.cli import main as loomsight

    work = Path(sys.argv[1])
    assert loomsight(["dataset", "--out", str(work / "ds"), "--sim-webs", "2", "--sim-length-m", "0.4",
                      "--sim-width-px", "640", "--tile-px", "128", "--overlap-px", "16", "--val-every", "2",
                      "--seed", "3"]) == 0
    recipe = json.loads((work / "ds" / "dataset.json").read_text())["recipe"]  # enough to rebuild it
    assert (recipe["sim_webs"], recipe["sim_length_m"], recipe["tile_px"], recipe["seed"]) == (2, 0.4, 128, 3)
    assert loomsight(["train", str(work / "ds"), "--model", "loomsight-s", "--epochs", "1", "--batch", "4",
                      "--workers", "0", "--out", str(work / "runs"), "--name", "t"]) == 0
    weights = work / "runs" / "t" / "weights" / "last.pt"
    assert loomsight(["export", str(weights), "--out", str(work / "bundle"), "--include-checkpoint",
                      "--latency-runs", "2"]) == 0
    # fine-tune the bundle on a "new fabric" (another generated dataset) from the weights it carries
    assert loomsight(["dataset", "--out", str(work / "ds2"), "--sim-webs", "2", "--sim-length-m", "0.4",
                      "--sim-width-px", "640", "--tile-px", "128", "--overlap-px", "16", "--val-every", "2",
                      "--seed", "4"]) == 0
    assert loomsight(["train", str(work / "ds2"), "--model", "loomsight-s", "--weights",
                      str(work / "bundle" / "checkpoint.pt"), "--epochs", "1", "--batch", "4", "--workers", "0",
                      "--out", str(work / "runs"), "--name", "ft"]) == 0
    assert (work / "runs" / "ft" / "weights" / "last.pt").is_file()

    from runtime.config import ModelConfig
    from runtime.detect.bundle import open_detector
    det = open_detector(ModelConfig(bundle=work / "bundle", thresholds={}))
    tiles = np.random.default_rng(0).integers(0, 255, (3, 128, 128), dtype=np.uint8)
    raw = det.raw(tiles)
    out = det.infer(tiles)
    print(json.dumps({"raw_shape": list(raw.shape), "n_out": len(out), "classes": det.manifest.classes,
                      "bundle_files": sorted(det.manifest.sha256),
                      "providers": det.providers, "dets": [d.xyxy.shape[1] if len(d) else 4 for d in out]}))
    """
)


def test_dataset_train_export_and_runtime_load_make_no_network_attempt(tmp_path: Path) -> None:
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(GUARD, encoding="utf-8")
    net_log = tmp_path / "net.log"
    net_log.touch()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(guard_dir), os.environ.get("PYTHONPATH", "")]),
        "LOOMSIGHT_NET_LOG": str(net_log),
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(tmp_path / "yolo"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHAIN, str(tmp_path)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    attempts = net_log.read_text(encoding="utf-8")
    assert attempts == "", f"training/export tried the network:\n{attempts}"
    n_cls = len(result["classes"])
    assert result["raw_shape"][0] == 3 and result["raw_shape"][2] == 4 + n_cls
    assert result["n_out"] == 3 and all(d == 4 for d in result["dets"])
    assert result["providers"] == ["CPUExecutionProvider"]
    assert result["bundle_files"] == ["checkpoint.pt", "loomsight_train.json", "model.onnx"]


def test_the_guard_itself_catches_a_connection(tmp_path: Path) -> None:
    """The socket guard used above really records and blocks an attempt (so an empty log means something)."""
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(GUARD, encoding="utf-8")
    net_log = tmp_path / "net.log"
    net_log.touch()
    env = {**os.environ, "PYTHONPATH": str(guard_dir), "LOOMSIGHT_NET_LOG": str(net_log)}
    code = "import urllib.request\ntry:\n    urllib.request.urlopen('http://example.com', timeout=2)\nexcept Exception as e:\n    print(type(e).__name__)"
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert "example.com" in net_log.read_text(encoding="utf-8")
