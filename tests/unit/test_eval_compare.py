"""`loomsight eval --compare`: a retrained bundle's web figures beside the shipped one's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from offline_train.commands import _read_eval_json
from offline_train.evaluate import format_comparison
from runtime.errors import ConfigError


def _report(
    recall: float, precision: float | None, *, seed: int = 900001, dup: float = 0.01
) -> dict[str, Any]:
    f1 = None if precision is None else 2 * recall * precision / (recall + precision)
    row = {"recall": recall, "precision": precision, "f1": f1}
    return {
        "rolls": [{"seed": seed, "fabric": "plain_gray", "length_m": 4.0}],
        "web_class_aware": {"broken_end": row, "all": row},
        "duplicate_rate": dup,
        "tile": {"mAP50": 0.3, "mAP50_95": 0.2},
    }


def test_side_by_side_with_signed_change() -> None:
    text = format_comparison(_report(0.8, 0.9, dup=0.02), _report(0.7, 0.8), "shipped")
    first, _, be, *_ = text.splitlines()
    assert first == "against shipped: same rolls"
    assert be.startswith("broken_end") and " 0.70 ->  0.80 (+0.10)" in be and " 0.80 ->  0.90 (+0.10)" in be
    assert "duplicate events: 1.00% -> 2.00%" in text


def test_different_rolls_and_missing_figures_are_said_not_hidden() -> None:
    text = format_comparison(_report(0.5, None, seed=1), _report(0.7, 0.8), "shipped")
    assert "DIFFERENT rolls" in text.splitlines()[0]
    be = next(line for line in text.splitlines() if line.startswith("broken_end"))
    assert " 0.80 ->   -  " in be  # a class that reported nothing has no precision: no made-up delta


def test_compare_file_that_is_not_an_eval_report_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read an eval report"):
        _read_eval_json(tmp_path / "missing.json")
    (tmp_path / "manifest.json").write_text(json.dumps({"classes": []}))
    with pytest.raises(ConfigError, match="not a `loomsight eval --out` report"):
        _read_eval_json(tmp_path / "manifest.json")
    good = tmp_path / "eval.json"
    good.write_text(json.dumps(_report(0.5, 0.5)))
    assert _read_eval_json(good)["web_class_aware"]["all"]["recall"] == 0.5
