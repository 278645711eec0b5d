"""Fabrics nobody trained on: `random:SEED` names a fabric drawn from one seed.

`novel_fabric(seed)` draws every property of a `FabricSpec` from ranges wider than the catalog's
and wider than the variations the dataset builder trains on (`fabric.random_fabric`): coarser and
finer yarns, thinner and denser cover, darker and brighter yarns, noisier sensors, blurrier optics,
stronger lighting gradients. The same seed always gives the same spec, so an experiment can name
its held-out fabrics (`random:1` ... `random:5`) and anyone can render them again.

Reserved seeds: `random:0` to `random:999` are held out for experiments and tests (the adaptation
experiment uses 1-5 for its fabrics). The bundled model's training never renders them: the dataset
builder's random variations come from `random_fabric` with its own generator and narrower ranges,
and no training recipe names a `random:` fabric.
"""

from __future__ import annotations

import numpy as np

from runtime.errors import ConfigError
from runtime.sim.fabric import FabricSpec
from runtime.sim.weaves import WEAVES

PREFIX = "random:"
RESERVED_SEEDS = range(0, 1000)

# (low, high) of each drawn property; documented in docs/fabrics.md. The catalog's pitches lie in
# 2.6-6 px, its gray levels in 90-200 and its sensor noise is 2 gray levels.
RANGES: dict[str, tuple[float, float]] = {
    "warp_pitch_px": (1.8, 9.0),
    "weft_pitch_ratio": (0.7, 1.4),  # weft pitch / warp pitch
    "warp_fill": (0.5, 1.05),
    "weft_fill": (0.45, 1.0),
    "gray_level": (45.0, 225.0),
    "weft_contrast": (-70.0, 70.0),  # weft gray level minus warp's
    "thickness_jitter": (0.02, 0.2),
    "tension_jitter": (0.01, 0.1),
    "shade_jitter": (0.005, 0.08),
    "hairiness": (0.0, 0.8),
    "slubs": (0.0, 0.12),
    "crimp": (0.1, 0.6),
    "illumination_gradient": (-0.12, 0.12),
    "vignetting": (0.0, 0.4),
    "streaks": (0.0, 0.04),
    "drift": (0.0, 0.06),
    "noise_sigma": (0.5, 6.0),
    "blur_px": (0.35, 1.3),
    "selvedge_mm": (2.0, 12.0),
    "edge_margin_frac": (0.0, 0.1),
    "edge_wander_mm": (0.2, 3.0),
}
COLOR_SHARE = 0.4  # this share of seeds are colour fabrics
BACKLIGHT_SHARE = 0.5


def is_novel_name(name: str) -> bool:
    return name.startswith(PREFIX)


def parse_seed(name: str) -> int:
    """The seed of `random:SEED`; a ConfigError naming the form otherwise."""
    text = name[len(PREFIX) :] if is_novel_name(name) else name
    try:
        seed = int(text)
    except ValueError:
        raise ConfigError(
            f"fabric {name!r}: expected random:SEED with a whole number, e.g. random:3"
        ) from None
    if seed < 0:
        raise ConfigError(f"fabric {name!r}: the seed must be >= 0")
    return seed


def novel_fabric(seed: int) -> FabricSpec:
    """The fabric `random:SEED`: weave, pitch, cover, yarn texture, colour and lighting from `RANGES`."""
    rng = np.random.default_rng([0x10F4B1C, int(seed)])  # its own stream: never the builder's

    def draw(key: str) -> float:
        lo, hi = RANGES[key]
        return float(rng.uniform(lo, hi))

    weave = str(rng.choice(sorted(WEAVES)))
    color = bool(rng.random() < COLOR_SHARE)
    backlight = bool(rng.random() < BACKLIGHT_SHARE)
    warp_pitch = draw("warp_pitch_px")
    weft_pitch = float(np.clip(warp_pitch * draw("weft_pitch_ratio"), 1.6, 12.0))
    level = draw("gray_level")
    weft_level = float(np.clip(level + draw("weft_contrast"), 25, 240))
    if color:
        hue = rng.uniform(0.0, 1.0, size=3)
        warp = tuple(int(np.clip(level * (0.4 + 1.2 * h), 15, 245)) for h in hue)
        weft = tuple(int(np.clip(c + (weft_level - level) + rng.normal(0, 35), 15, 245)) for c in warp)
    else:
        warp = (int(level),) * 3
        weft = (int(weft_level),) * 3
    bg_level = int(rng.uniform(205, 250)) if backlight else int(rng.uniform(8, 55))
    return FabricSpec(
        name=f"{PREFIX}{int(seed)}",
        weave=weave,
        color=color,
        warp_pitch_px=round(warp_pitch, 2),
        weft_pitch_px=round(weft_pitch, 2),
        warp_fill=round(draw("warp_fill"), 3),
        weft_fill=round(draw("weft_fill"), 3),
        warp_bgr=warp,  # type: ignore[arg-type]
        weft_bgr=weft,  # type: ignore[arg-type]
        background="backlight" if backlight else "roller",
        background_bgr=(bg_level,) * 3,
        thickness_jitter=round(draw("thickness_jitter"), 3),
        tension_jitter=round(draw("tension_jitter"), 3),
        shade_jitter=round(draw("shade_jitter"), 3),
        hairiness=round(draw("hairiness"), 3),
        slubs=round(draw("slubs"), 3),
        crimp=round(draw("crimp"), 3),
        illumination_gradient=round(draw("illumination_gradient"), 3),
        vignetting=round(draw("vignetting"), 3),
        streaks=round(draw("streaks"), 3),
        drift=round(draw("drift"), 3),
        noise_sigma=round(draw("noise_sigma"), 2),
        blur_px=round(draw("blur_px"), 2),
        selvedge_mm=round(draw("selvedge_mm"), 1),
        edge_margin_frac=round(draw("edge_margin_frac"), 3),
        edge_wander_mm=round(draw("edge_wander_mm"), 2),
    )


def novel_fabric_named(name: str) -> FabricSpec:
    return novel_fabric(parse_seed(name))
