"""`make demo`'s script end to end: the daemon on the synthetic loom with the bundled model,
`loomsight subscribe` beside it, real sockets, real-time pacing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_the_daemon_and_the_subscriber_receives_the_roll(tmp_path: Path) -> None:
    assert (ROOT / "models" / "default" / "manifest.json").is_file(), "the bundled model is missing"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--length-m", "1.5", "--speed-m-min", "30"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "m inspected" in out  # the live summary line
    assert re.search(r"roll done: 1\.50 m", out), out[-2000:]
    received = re.search(r"the subscriber received: (.*)", out)
    assert received is not None, out[-2000:]
    assert "roll 2" in received.group(1)  # roll start and roll end reached the subscriber
