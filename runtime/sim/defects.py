"""Defect classes of the synthetic loom, their default sizes, and how a defect is drawn at random.

`DEFECT_CLASSES` (defined in runtime.taxonomy) is the model's class list (its order is the class id). A `DefectPlan` is one
defect before rendering: its class, where it starts on the roll, where across, and its sampled
parameters in pixels/lines. `runtime.sim.defect_render` turns a plan into pixels and an exact mask.

Sizes are millimetres (converted with the loom's `mm_per_px` across and `mm_per_line` along);
`contrast` scales how strongly a defect departs from clean fabric (1.0 = the physical default:
big holes, stains and broken yarns clearly visible after a 4x downsample; knots, slubs, thin
places, floats and foreign fibres quieter, as they are on a real loom).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.errors import ConfigError
from runtime.taxonomy import DEFECT_CLASSES

# Default parameter ranges per class: (low, high) are drawn uniformly; a scalar is used as is.
DEFAULTS: dict[str, dict[str, Any]] = {
    "hole": {"size_mm": (2.0, 15.0), "aspect": (0.6, 1.0), "contrast": 1.0},
    "stain": {"size_mm": (5.0, 40.0), "aspect": (0.45, 1.0), "darkness": (0.3, 0.6), "contrast": 1.0},
    "broken_end": {"length_mm": (200.0, 3000.0), "yarns": (1, 3), "long_chance": 0.1, "contrast": 1.0},
    "broken_pick": {"width_frac": (0.35, 1.0), "yarns": (1, 3), "contrast": 1.0},
    "knot": {"size_mm": (1.0, 4.0), "contrast": 0.8},
    "slub": {"length_mm": (5.0, 30.0), "thickness": (0.9, 1.8), "contrast": 0.8},
    "thin_place": {"length_mm": (10.0, 60.0), "yarns": (2, 5), "thinness": (0.3, 0.5), "contrast": 1.0},
    "float": {"length_mm": (3.0, 15.0), "yarns": (1, 2), "contrast": 0.9},
    "contamination": {"length_mm": (5.0, 40.0), "thickness_px": (1.0, 2.0), "contrast": 0.85},
}

# Defects that follow one yarn system choose "warp" (along the roll) or "weft" (across).
_DIRECTIONAL = ("knot", "slub", "thin_place", "float")


@dataclass(frozen=True)
class DefectPlan:
    """One defect before rendering. `y0_line` is where it starts on the roll (its top), `x_px` the
    image column of its centre (of its start for one-sided defects) on line `y0_line`."""

    defect_id: int
    class_name: str
    y0_line: int
    x_px: int
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    def p(self, key: str) -> Any:
        return self.params[key]


def check_class(class_name: str) -> None:
    if class_name not in DEFECT_CLASSES:
        raise ConfigError(f"unknown defect class {class_name!r}; choose one of: {', '.join(DEFECT_CLASSES)}")


def class_probabilities(classes: Sequence[str], weights: Mapping[str, float] | None) -> np.ndarray:
    for c in classes:
        check_class(c)
    if not classes:
        raise ConfigError("defect_classes is empty; name at least one of " + ", ".join(DEFECT_CLASSES))
    w = np.array([float((weights or {}).get(c, 1.0)) for c in classes])
    if np.any(w < 0) or w.sum() <= 0:
        raise ConfigError(
            f"class weights must be >= 0 and not all zero, got {dict(zip(classes, w, strict=True))}"
        )
    return np.asarray(w / w.sum())


def _draw(rng: np.random.Generator, spec: Any) -> Any:
    if isinstance(spec, tuple):
        lo, hi = spec
        if isinstance(lo, int) and isinstance(hi, int):
            return int(rng.integers(lo, hi + 1))
        return float(rng.uniform(lo, hi))
    return spec


def sample_params(
    class_name: str,
    rng: np.random.Generator,
    *,
    mm_per_px: float,
    mm_per_line: float,
    contrast_scale: float = 1.0,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Concrete parameters for one defect: defaults drawn at random, then `overrides` applied.

    Lengths come back in both mm (as drawn) and pixels/lines (`size_px`, `length_lines`, ...).
    """
    check_class(class_name)
    spec = DEFAULTS[class_name]
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(spec) - {"direction", "seed"})
    if unknown:
        raise ConfigError(
            f"{class_name}: unknown parameter(s) {unknown}; allowed: {', '.join([*spec, 'direction'])}"
        )
    p: dict[str, Any] = {k: _draw(rng, v) for k, v in spec.items()}
    if class_name == "broken_end" and rng.random() < p.pop("long_chance"):
        p["length_mm"] *= float(rng.uniform(1.5, 3.0))
    p.pop("long_chance", None)
    if class_name in _DIRECTIONAL:
        p["direction"] = "warp" if rng.random() < 0.5 else "weft"
    p["contrast"] = float(p["contrast"]) * contrast_scale
    p.update({k: v for k, v in overrides.items() if k != "long_chance"})
    p["contrast"] = float(np.clip(p["contrast"], 0.0, 2.0))
    if p.get("direction", "warp") not in ("warp", "weft"):
        raise ConfigError(f"{class_name}: direction must be 'warp' or 'weft', got {p['direction']!r}")
    if "size_mm" in p:
        p["size_px"] = float(p["size_mm"]) / mm_per_px
        p["size_lines"] = float(p["size_mm"]) / mm_per_line
    if "length_mm" in p:
        p["length_lines"] = max(2, round(float(p["length_mm"]) / mm_per_line))
        p["length_px"] = max(2, round(float(p["length_mm"]) / mm_per_px))
    return p


def nominal_extent(class_name: str, params: Mapping[str, Any], interior_px: int) -> tuple[int, int]:
    """Rough (across px, along lines) size, used to keep a random defect inside the web."""
    if class_name in ("hole", "stain"):
        return int(params["size_px"]) + 8, int(params["size_lines"]) + 8
    if class_name == "knot":
        return int(2.5 * params["size_px"]) + 8, int(2.5 * params["size_lines"]) + 8
    if class_name == "broken_end":
        return 40, int(params["length_lines"])
    if class_name == "broken_pick":
        return int(params["width_frac"] * interior_px), 40
    if class_name == "contamination":
        return int(params["length_px"]) + 8, int(params["length_lines"]) + 8
    if params.get("direction") == "weft":
        return int(params["length_px"]) + 16, 40
    return 40, int(params["length_lines"]) + 16
