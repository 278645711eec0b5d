"""Fabric descriptions for the synthetic loom: a small serializable spec and a named catalog.

A `FabricSpec` says what the camera sees: the weave, yarn pitch and cover, yarn colours, how
irregular the yarns are, the background beyond the web edge and the lighting and sensor. The same
spec, geometry and seed always give the same pixels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import ConfigError
from runtime.sim.weaves import WEAVES

BGR = tuple[int, int, int]
BACKGROUNDS = ("backlight", "roller")


@dataclass(frozen=True)
class FabricSpec:
    """One fabric as the line-scan camera sees it. Lengths in px are at the camera's resolution.

    Warp yarns (ends) run along the machine direction (along lines); weft yarns (picks) run across.
    Gray fabrics (`color=False`) render one channel from the luminance of the BGR colours.
    """

    name: str
    weave: str = "plain"
    color: bool = False
    warp_pitch_px: float = 4.0  # centre-to-centre distance of ends, across
    weft_pitch_px: float = 4.0  # centre-to-centre distance of picks, along
    warp_fill: float = 0.85  # yarn width / pitch (cover); < 1 leaves interstices
    weft_fill: float = 0.8
    warp_bgr: BGR = (165, 165, 165)
    weft_bgr: BGR = (150, 150, 150)
    background: str = "backlight"  # "backlight" (bright through the web) or "roller" (dark, front-lit)
    background_bgr: BGR = (228, 228, 228)
    thickness_jitter: float = 0.08  # relative s.d. of yarn width
    tension_jitter: float = 0.05  # relative s.d. of yarn spacing (reed / beat-up irregularity)
    shade_jitter: float = 0.03  # relative s.d. of per-yarn brightness (end and pick barriness)
    hairiness: float = 0.3  # 0..1: fibre fuzz filling interstices
    slubs: float = 0.04  # relative amplitude of along-yarn thick/thin cloudiness
    crimp: float = 0.35  # 0..1: darkening where a yarn dives under its crossing yarn
    illumination_gradient: float = 0.04  # relative brightness change from left to right
    vignetting: float = 0.18  # relative fall-off at the line ends
    streaks: float = 0.015  # amplitude of faint lighting/dust streaks along the machine direction
    drift: float = 0.03  # relative slow brightness drift along the roll
    noise_sigma: float = 2.0  # sensor noise, gray levels
    blur_px: float = 0.6  # optics blur sigma, px
    selvedge_mm: float = 6.0  # denser border band at each web edge
    edge_margin_frac: float = 0.04  # background visible beyond each web edge, fraction of the line
    edge_wander_mm: float = 1.2  # lateral wander of the web as it runs (amplitude)
    fringe_mm: float = 0.8  # cut weft ends sticking out beyond the selvedge (max)

    def __post_init__(self) -> None:
        if self.weave not in WEAVES:
            raise ConfigError(
                f"fabric {self.name!r}: unknown weave {self.weave!r}; choose one of {', '.join(WEAVES)}"
            )
        if self.background not in BACKGROUNDS:
            raise ConfigError(
                f"fabric {self.name!r}: background must be one of {BACKGROUNDS}, got {self.background!r}"
            )
        for key in ("warp_pitch_px", "weft_pitch_px"):
            if not 1.5 <= getattr(self, key) <= 24:
                raise ConfigError(
                    f"fabric {self.name!r}: {key} = {getattr(self, key)} must be in [1.5, 24] px"
                )
        for key in ("warp_fill", "weft_fill"):
            if not 0.3 <= getattr(self, key) <= 1.2:
                raise ConfigError(f"fabric {self.name!r}: {key} = {getattr(self, key)} must be in [0.3, 1.2]")
        if not 0 <= self.edge_margin_frac < 0.4:
            raise ConfigError(
                f"fabric {self.name!r}: edge_margin_frac = {self.edge_margin_frac} must be in [0, 0.4)"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FabricSpec:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"fabric spec has unknown key(s) {unknown}; allowed: {', '.join(fields)}")
        if "name" not in data:
            raise ConfigError("fabric spec needs a 'name'")
        kwargs: dict[str, Any] = {
            k: tuple(int(c) for c in v) if k.endswith("_bgr") else v for k, v in data.items()
        }
        return cls(**kwargs)

    def replace(self, **changes: Any) -> FabricSpec:
        return dataclasses.replace(self, **changes)


def _gray(level: int) -> BGR:
    return (level, level, level)


FABRICS: dict[str, FabricSpec] = {
    f.name: f
    for f in (
        FabricSpec("plain_gray"),
        FabricSpec(
            "plain_color",
            color=True,
            warp_pitch_px=3.5,
            weft_pitch_px=3.6,
            warp_bgr=(150, 95, 60),
            weft_bgr=(215, 210, 205),
            background="roller",
            background_bgr=(32, 30, 30),
        ),
        FabricSpec(
            "canvas_gray",
            warp_pitch_px=6.0,
            weft_pitch_px=6.0,
            warp_fill=0.9,
            weft_fill=0.88,
            warp_bgr=_gray(175),
            weft_bgr=_gray(160),
            hairiness=0.45,
            slubs=0.07,
            thickness_jitter=0.12,
        ),
        FabricSpec(
            "voile_gray",
            warp_pitch_px=3.2,
            weft_pitch_px=3.2,
            warp_fill=0.6,
            weft_fill=0.58,
            warp_bgr=_gray(140),
            weft_bgr=_gray(132),
            hairiness=0.15,
            background_bgr=_gray(238),
        ),
        FabricSpec(
            "twill_2_1_gray",
            weave="twill_2_1",
            warp_pitch_px=3.4,
            weft_pitch_px=3.0,
            warp_fill=0.9,
            weft_fill=0.85,
            warp_bgr=_gray(150),
            weft_bgr=_gray(118),
            background="roller",
            background_bgr=_gray(28),
        ),
        FabricSpec(
            "twill_2_2_gray",
            weave="twill_2_2",
            warp_pitch_px=4.0,
            weft_pitch_px=3.6,
            warp_fill=0.88,
            weft_fill=0.85,
            warp_bgr=_gray(120),
            weft_bgr=_gray(150),
        ),
        FabricSpec(
            "twill_3_1_gray",
            weave="twill_3_1",
            warp_pitch_px=4.2,
            weft_pitch_px=3.4,
            warp_fill=0.92,
            weft_fill=0.85,
            warp_bgr=_gray(100),
            weft_bgr=_gray(170),
            background="roller",
            background_bgr=_gray(24),
        ),
        FabricSpec(
            "denim_color",
            weave="twill_3_1",
            color=True,
            warp_pitch_px=4.5,
            weft_pitch_px=3.6,
            warp_fill=0.92,
            weft_fill=0.85,
            warp_bgr=(120, 62, 30),
            weft_bgr=(188, 208, 220),
            background="roller",
            background_bgr=(30, 30, 34),
            slubs=0.08,
            shade_jitter=0.05,
            hairiness=0.4,
        ),
        FabricSpec(
            "satin_5_gray",
            weave="satin_5",
            warp_pitch_px=2.6,
            weft_pitch_px=3.2,
            warp_fill=0.95,
            weft_fill=0.8,
            warp_bgr=_gray(200),
            weft_bgr=_gray(150),
            hairiness=0.15,
            crimp=0.25,
            background_bgr=_gray(240),
        ),
        FabricSpec(
            "satin_5_color",
            weave="satin_5",
            color=True,
            warp_pitch_px=2.8,
            weft_pitch_px=3.2,
            warp_fill=0.95,
            weft_fill=0.8,
            warp_bgr=(80, 70, 200),
            weft_bgr=(60, 45, 140),
            background="backlight",
            background_bgr=(230, 232, 232),
            hairiness=0.1,
            crimp=0.3,
        ),
        FabricSpec(
            "basket_gray",
            weave="basket",
            warp_pitch_px=3.5,
            weft_pitch_px=3.5,
            warp_fill=0.82,
            weft_fill=0.8,
            warp_bgr=_gray(172),
            weft_bgr=_gray(150),
            hairiness=0.35,
        ),
        FabricSpec(
            "rib_gray",
            weave="rib",
            warp_pitch_px=2.6,
            weft_pitch_px=5.0,
            warp_fill=0.95,
            weft_fill=0.85,
            warp_bgr=_gray(160),
            weft_bgr=_gray(120),
            background="roller",
            background_bgr=_gray(30),
        ),
        FabricSpec(
            "herringbone_gray",
            weave="herringbone",
            warp_pitch_px=3.8,
            weft_pitch_px=3.4,
            warp_fill=0.9,
            weft_fill=0.86,
            warp_bgr=_gray(90),
            weft_bgr=_gray(175),
            hairiness=0.4,
        ),
        FabricSpec(
            "herringbone_color",
            weave="herringbone",
            color=True,
            warp_pitch_px=4.2,
            weft_pitch_px=3.8,
            warp_fill=0.9,
            weft_fill=0.86,
            warp_bgr=(50, 75, 105),
            weft_bgr=(150, 180, 200),
            background="roller",
            background_bgr=(26, 26, 26),
            hairiness=0.5,
            slubs=0.07,
        ),
    )
}


def get_fabric(name: str) -> FabricSpec:
    """The catalog fabric `name`; a bare weave name (e.g. "plain") means its gray variant;
    `random:SEED` is a held-out fabric drawn from that seed (`runtime.sim.novel_fabrics`)."""
    if name.startswith("random:"):
        from runtime.sim.novel_fabrics import novel_fabric_named

        return novel_fabric_named(name)
    if name in FABRICS:
        return FABRICS[name]
    if f"{name}_gray" in FABRICS:
        return FABRICS[f"{name}_gray"]
    raise ConfigError(
        f"unknown fabric {name!r}; choose one of: {', '.join(FABRICS)}, or random:SEED for a held-out fabric"
    )


def random_fabric(rng: np.random.Generator, *, color: bool = False) -> FabricSpec:
    """A plausible random fabric for training diversity (any weave, pitch, cover, colour, lighting)."""
    weave = str(rng.choice(list(WEAVES)))
    pitch = float(rng.uniform(2.6, 6.0))
    backlight = bool(rng.random() < 0.5)
    if color:
        hue = rng.uniform(0, 1, size=3)
        warp = tuple(int(v) for v in 40 + 180 * hue)
        weft = tuple(int(np.clip(c + rng.normal(0, 50), 30, 230)) for c in warp)
    else:
        level = int(rng.uniform(80, 200))
        warp = _gray(level)
        weft = _gray(int(np.clip(level + rng.normal(0, 25), 60, 220)))
    bg = _gray(int(rng.uniform(215, 245))) if backlight else _gray(int(rng.uniform(15, 45)))
    return FabricSpec(
        name=f"random_{weave}_{'color' if color else 'gray'}",
        weave=weave,
        color=color,
        warp_pitch_px=round(pitch, 2),
        weft_pitch_px=round(float(pitch * rng.uniform(0.8, 1.2)), 2),
        warp_fill=round(float(rng.uniform(0.7, 0.95)), 3),
        weft_fill=round(float(rng.uniform(0.65, 0.92)), 3),
        warp_bgr=warp,  # type: ignore[arg-type]
        weft_bgr=weft,  # type: ignore[arg-type]
        background="backlight" if backlight else "roller",
        background_bgr=bg,
        thickness_jitter=round(float(rng.uniform(0.03, 0.14)), 3),
        tension_jitter=round(float(rng.uniform(0.02, 0.08)), 3),
        shade_jitter=round(float(rng.uniform(0.01, 0.06)), 3),
        hairiness=round(float(rng.uniform(0.05, 0.6)), 3),
        slubs=round(float(rng.uniform(0.01, 0.09)), 3),
        crimp=round(float(rng.uniform(0.2, 0.5)), 3),
        illumination_gradient=round(float(rng.uniform(-0.08, 0.08)), 3),
        vignetting=round(float(rng.uniform(0.05, 0.3)), 3),
        streaks=round(float(rng.uniform(0.0, 0.03)), 3),
        drift=round(float(rng.uniform(0.0, 0.05)), 3),
        noise_sigma=round(float(rng.uniform(1.0, 4.0)), 2),
        blur_px=round(float(rng.uniform(0.45, 0.9)), 2),
        selvedge_mm=round(float(rng.uniform(3.0, 10.0)), 1),
        edge_margin_frac=round(float(rng.uniform(0.0, 0.08)), 3),
        edge_wander_mm=round(float(rng.uniform(0.3, 2.0)), 2),
    )
