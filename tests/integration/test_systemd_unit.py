"""The shipped systemd unit: `systemd-analyze verify` clean, security exposure <= 2.0, and the
example config and README drop-ins agree with it.

The systemd-analyze checks skip (with the reason) where systemd-analyze is absent; the security
check needs systemd >= 250 for `--offline=true`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.config import load_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "loomsight.service"
EXAMPLE = ROOT / "systemd" / "loomsight.example.toml"
README = ROOT / "systemd" / "README.md"
INSTALLED_LOOMSIGHT = "/opt/loomsight/.venv/bin/loomsight"
MAX_EXPOSURE = 2.0


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (systemd allows repeated keys), comments dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(min|ms|s|h)?", value):
        total += float(number) * {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "": 1}[unit]
    return total


def readme_dropins() -> dict[str, str]:
    """The ```ini blocks of systemd/README.md whose first line names a loomsight.service.d file."""
    blocks = re.findall(r"```ini\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    dropins = {}
    for block in blocks:
        first = block.splitlines()[0]
        match = re.fullmatch(r"# /etc/systemd/system/loomsight\.service\.d/([\w-]+\.conf)", first.strip())
        assert match, f"README drop-in block must start with its path, got {first!r}"
        dropins[match.group(1)] = block
    return dropins


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (Debian/Ubuntu: apt-get install systemd)")
    return exe


@pytest.fixture(scope="module")
def systemd_version(systemd_analyze: str) -> int:
    out = subprocess.run(
        [systemd_analyze, "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    match = re.match(r"systemd (\d+)", out.stdout)
    assert match, f"cannot read the systemd version from {out.stdout!r}"
    return int(match.group(1))


def unit_copy(directory: Path, dropins: dict[str, str] | None = None) -> Path:
    """The unit in `directory`; ExecStart points to this checkout's loomsight when /opt has none.

    verify checks that ExecStart is executable; on a build machine the installed path does not
    exist, so the copy runs the same entry point from the project's environment.
    """
    text = UNIT.read_text(encoding="utf-8")
    if not os.access(INSTALLED_LOOMSIGHT, os.X_OK):
        local = Path(sys.executable).parent / "loomsight"
        assert os.access(local, os.X_OK), f"{local} missing: pip install -e . first"
        assert text.count(f"ExecStart={INSTALLED_LOOMSIGHT} ") == 1
        text = text.replace(f"ExecStart={INSTALLED_LOOMSIGHT} ", f"ExecStart={local} ")
    unit = directory / "loomsight.service"
    unit.write_text(text, encoding="utf-8")
    if dropins:
        folder = directory / "loomsight.service.d"
        folder.mkdir()
        for name, body in dropins.items():
            (folder / name).write_text(body, encoding="utf-8")
    return unit


def verify(systemd_analyze: str, unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def exposure(systemd_analyze: str, unit: Path) -> tuple[float, str]:
    out = subprocess.run(
        [systemd_analyze, "security", "--offline=true", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    match = re.search(r"Overall exposure level for loomsight\.service: (\d+(?:\.\d+)?)", out.stdout)
    assert match, out.stdout[-2000:]
    return float(match.group(1)), out.stdout


def test_unit_verifies_clean(systemd_analyze: str, tmp_path: Path) -> None:
    result = verify(systemd_analyze, unit_copy(tmp_path))
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", (
        result.stderr + result.stdout
    )


def test_verify_catches_a_broken_unit(systemd_analyze: str, tmp_path: Path) -> None:
    """The gate itself works: a misspelt key makes verify talk."""
    unit = unit_copy(tmp_path)
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="), encoding="utf-8")
    result = verify(systemd_analyze, unit)
    assert "WatchdogSecs" in result.stderr


def test_security_exposure_is_at_most_2(systemd_analyze: str, systemd_version: int, tmp_path: Path) -> None:
    if systemd_version < 250:
        pytest.skip(f"systemd-analyze security --offline needs systemd >= 250, this is {systemd_version}")
    score, report = exposure(systemd_analyze, unit_copy(tmp_path))
    print(f"systemd {systemd_version}: exposure {score}")
    assert score <= MAX_EXPOSURE, report


def test_readme_dropins_verify_clean_and_keep_exposure(
    systemd_analyze: str, systemd_version: int, tmp_path: Path
) -> None:
    dropins = readme_dropins()
    assert {"jetson.conf", "jit.conf", "network.conf"} <= set(dropins)
    unit = unit_copy(tmp_path, dropins)
    result = verify(systemd_analyze, unit)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", (
        result.stderr + result.stdout
    )
    if systemd_version >= 250:
        score, report = exposure(systemd_analyze, unit)
        assert "/dev/nvmap:rw" in report  # the drop-ins were read
        assert score <= MAX_EXPOSURE, report


def test_unit_has_the_operational_contract() -> None:
    service = unit_settings(UNIT.read_text(encoding="utf-8"))["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert seconds(one["WatchdogSec"]) > 0 and one["Restart"] == "on-failure"
    assert one["KillSignal"] == "SIGTERM" and one["UMask"] == "0077"
    assert one["StandardOutput"] == "journal" and one["DevicePolicy"] == "closed"
    assert one["ExecStart"] == f"{INSTALLED_LOOMSIGHT} run --config /etc/loomsight/loomsight.toml"
    assert {"char-nvidia* rw", "char-usb_device rw"} <= set(service["DeviceAllow"])
    families = set(one["RestrictAddressFamilies"].split())
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= families
    unit_section = unit_settings(UNIT.read_text(encoding="utf-8"))["Unit"]
    assert (
        int(unit_section["StartLimitBurst"][-1]) >= 1
        and seconds(unit_section["StartLimitIntervalSec"][-1]) > 0
    )


def test_example_config_parses_and_fits_the_unit() -> None:
    config = load_config(EXAMPLE)
    service = {k: v[-1] for k, v in unit_settings(UNIT.read_text(encoding="utf-8"))["Service"].items()}
    state_dir = Path("/var/lib") / service["StateDirectory"]
    config_dir = Path("/etc") / service["ConfigurationDirectory"]
    # The spool lives in the StateDirectory (the only persistent writable place in the sandbox).
    assert config.spool.path.is_relative_to(state_dir), config.spool.path
    assert config.calibration.path is not None and config.calibration.path.is_relative_to(config_dir)
    # Shutdown (LINGER) fits well inside TimeoutStopSec; the watchdog outlasts a heartbeat.
    assert config.publish.linger_ms / 1000 < seconds(service["TimeoutStopSec"]) / 4
    assert seconds(service["WatchdogSec"]) > 4 * config.publish.heartbeat_s
    assert config.health.enabled and config.health.host == "127.0.0.1"


def test_every_example_section_is_commented() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if line.startswith("["):
            above = lines[index - 1].strip() if index else ""
            assert above.startswith("#"), f"section {line} has no comment above it"
