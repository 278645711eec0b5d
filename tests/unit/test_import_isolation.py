"""The runtime must stay lean: importing any of its modules never pulls in the training stack."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "torchvision", "ultralytics", "offline_train")

PROBE = r"""
import importlib, json, pkgutil, sys
import runtime
failed = {}
names = []
for m in pkgutil.walk_packages(runtime.__path__, "runtime."):
    names.append(m.name)
    try:
        importlib.import_module(m.name)
    except Exception as e:
        failed[m.name] = f"{type(e).__name__}: {e}"
heavy = sorted(n for n in %r if n in sys.modules)
print(json.dumps({"modules": names, "failed": failed, "heavy": heavy}))
"""


def _probe() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,)], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_runtime_module_imports_without_the_training_stack() -> None:
    result = _probe()
    assert len(result["modules"]) >= 5, result["modules"]
    assert result["failed"] == {}, f"runtime modules failed to import: {result['failed']}"
    assert result["heavy"] == [], f"importing runtime pulled in {result['heavy']}"


def test_probe_detects_a_heavy_import() -> None:
    """The check itself works: a module that imports offline_train is caught."""
    code = "import sys, offline_train; print('offline_train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "True"


def test_cli_help_is_light() -> None:
    """Building every subcommand's parser loads the light command modules only (never torch)."""
    heavy = ("torch", "torchvision", "ultralytics")
    code = (
        "import sys\n"
        "from runtime.cli import build_parser\n"
        "build_parser()\n"
        f"print(sorted(n for n in {heavy!r} if n in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
