"""The synthesizer families `loomsight adapt --synth` names, built for one model resolution."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ConfigError

log = logging.getLogger(__name__)

FAMILIES = ("perlin", "streaks", "blobs", "cutpaste", "gan")
DEFAULT_FAMILIES = ("perlin", "streaks", "blobs", "cutpaste")


def parse_families(text: str) -> tuple[str, ...]:
    """`perlin,streaks` -> ("perlin", "streaks"); 'none' -> (); unknown names are a ConfigError."""
    if text.strip() == "none":
        return ()
    if text.strip() == "default":
        return DEFAULT_FAMILIES
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in FAMILIES]
    if bad or not names:
        raise ConfigError(
            f"--synth {text!r}: unknown {bad or 'empty'}; choose from {', '.join(FAMILIES)} or none"
        )
    return names


def build_synthesizers(
    families: Sequence[str],
    *,
    mm_per_px: float,
    seed: int,
    cutpaste_per_class: int = 12,
    gan_checkpoint: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Any]:
    """The synthesizers of `families` (each family one or more synthesizers)."""
    from offline_train.synth.blobs import BlobSynthesizer
    from offline_train.synth.perlin import PerlinSynthesizer
    from offline_train.synth.streaks import StreakSynthesizer

    out: list[Any] = []
    for family in families:
        if family == "perlin":
            out += [PerlinSynthesizer("stain"), PerlinSynthesizer("contamination")]
        elif family == "streaks":
            out += [StreakSynthesizer("broken_end"), StreakSynthesizer("broken_pick")]
        elif family == "blobs":
            out.append(BlobSynthesizer("knot"))
        elif family == "cutpaste":
            from offline_train.synth.cutpaste import CutPasteSynthesizer
            from offline_train.synth.library import DefectLibrary

            library = DefectLibrary.from_simulator(
                cutpaste_per_class, np.random.default_rng(seed + 17), mm_per_px, progress=progress
            )
            out.append(CutPasteSynthesizer(library))
        elif family == "gan":
            out.append(_gan(gan_checkpoint))
        else:  # parse_families keeps this unreachable
            raise ConfigError(f"unknown synthesizer family {family!r}")
    return out


def _gan(checkpoint: Path | None) -> Any:
    if checkpoint is None:
        raise ConfigError(
            "--synth gan needs a trained generator: pass --gan-checkpoint FILE (from `loomsight gan train`)"
        )
    try:
        from offline_train.synth.gan.synthesizer import GanSynthesizer
    except ImportError as exc:  # the generator package is optional in this build
        raise ConfigError(f"--synth gan: the GAN synthesizer is not available here ({exc})") from None
    return GanSynthesizer(Path(checkpoint))
