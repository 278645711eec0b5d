"""Putting the calibration together: step results (scale, along, flat field) into one JSON + npz.

Each `loomsight calib` step can write its result to a small file (`--out`); `loomsight calib
write` reads them (or plain numbers), checks that they describe the same camera width, and
writes the runtime's calibration file with the inputs recorded in its provenance.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from calib.along import AlongResult
from calib.flatfield import FlatFieldResult
from calib.images import file_sha256
from calib.scale import ScaleResult
from runtime import __version__
from runtime.calibration import Calibration, FlatField, LensPolynomial
from runtime.errors import CalibrationError

SCALE_KIND = "loomsight.calib-scale/1"
ALONG_KIND = "loomsight.calib-along/1"


def save_step(path: Path, kind: str, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kind": kind, **document}, indent=2) + "\n", encoding="utf-8")
    return path


def load_step(path: Path, kind: str) -> dict[str, Any]:
    if not path.is_file():
        raise CalibrationError(f"{path}: no such file")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{path}: not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("kind") != kind:
        raise CalibrationError(
            f"{path}: expected a {kind!r} file from `loomsight calib`, got kind {document.get('kind')!r}"
        )
    return document


def scale_from_step(path: Path) -> ScaleResult:
    doc = load_step(path, SCALE_KIND)
    lens = doc.get("distortion")
    return ScaleResult(
        mm_per_px_x=float(doc["mm_per_px_x"]),
        width_px=int(doc["width_px"]),
        method=str(doc["method"]),
        details=dict(doc.get("details", {})),
        distortion=(
            LensPolynomial(tuple(lens["coeffs_mm"]), float(lens["center_px"]), float(lens["scale_px"]))
            if lens
            else None
        ),
    )


def along_from_step(path: Path) -> AlongResult:
    doc = load_step(path, ALONG_KIND)
    return AlongResult(float(doc["mm_per_line"]), str(doc["method"]), dict(doc.get("details", {})))


@dataclass(frozen=True)
class Parts:
    """What `calib write` combines; every part but the two scales is optional."""

    mm_per_px_x: float
    mm_per_line: float
    width_px: int | None = None
    scale: ScaleResult | None = None
    along: AlongResult | None = None
    flat_field: FlatFieldResult | None = None
    inputs: dict[str, Any] | None = None


def _agreed_width(parts: Parts) -> int:
    widths = {
        "--width-px": parts.width_px,
        "scale": parts.scale.width_px if parts.scale else None,
        "flat field": parts.flat_field.width_px if parts.flat_field else None,
    }
    given = {name: w for name, w in widths.items() if w is not None}
    if not given:
        raise CalibrationError("the camera line width is unknown: pass --width-px, --scale or --flatfield")
    if len(set(given.values())) > 1:
        raise CalibrationError(
            "the parts disagree on the line width: "
            + ", ".join(f"{name} {w} px" for name, w in given.items())
            + "; take every capture with the same camera Width"
        )
    return next(iter(given.values()))


def assemble(parts: Parts, camera_serial: str | None = None, note: str | None = None) -> Calibration:
    width = _agreed_width(parts)
    ff = parts.flat_field
    provenance: dict[str, Any] = {
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool": f"loomsight calib {__version__}",
        "host": platform.node(),
        "camera_serial": camera_serial,
        "inputs": parts.inputs or {},
    }
    if note:
        provenance["note"] = note
    return Calibration(
        mm_per_px_x=parts.mm_per_px_x,
        mm_per_line=parts.mm_per_line,
        width_px=width,
        distortion=parts.scale.distortion if parts.scale else None,
        flat_field=(
            FlatField(ff.dark, ff.gain, ff.target_level, ff.dead_columns, ff.hot_columns)
            if ff is not None
            else None
        ),
        provenance=provenance,
    )


def input_record(path: Path, **extra: Any) -> dict[str, Any]:
    """A provenance entry for an input file: name, sha256, plus what it contributed."""
    return {"file": path.name, "sha256": file_sha256(path), **extra}
