"""The default set of defect synthesizers the dataset builder uses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from offline_train.synth.base import Synthesizer
from offline_train.synth.blobs import BlobSynthesizer
from offline_train.synth.cutpaste import CutPasteSynthesizer
from offline_train.synth.library import DefectLibrary
from offline_train.synth.perlin import PerlinSynthesizer
from offline_train.synth.streaks import StreakSynthesizer


def default_synthesizers(
    library: DefectLibrary | None = None, *, texture_bank: Sequence[np.ndarray] = ()
) -> list[Synthesizer]:
    """Perlin stains (`perlin_stain`), Perlin foreign-matter blobs (`perlin_contamination`, using
    `texture_bank` pictures of other fabrics when given), warp and weft streaks (`streak_broken_end`,
    `streak_broken_pick`), small bright or dark lumps (`blob_knot`: knots, neps, fuzz balls), and
    cut-paste (`cutpaste`) when a non-empty `library` is given."""
    synths: list[Synthesizer] = [
        PerlinSynthesizer("stain"),
        PerlinSynthesizer("contamination", texture_bank=texture_bank),
        StreakSynthesizer("broken_end"),
        StreakSynthesizer("broken_pick"),
        BlobSynthesizer("knot"),
    ]
    if library is not None and len(library) > 0:
        synths.append(CutPasteSynthesizer(library))
    return synths


def gan_synthesizer_from(checkpoint_path: Path, **kwargs: Any) -> Synthesizer:
    """The learned synthesizer ("gan") from a `loomsight gan train` checkpoint (a `last.pt` file or
    the folder holding it); keyword arguments go to `GanSynthesizer`. Not part of the default set."""
    from offline_train.synth.gan.synthesizer import GanSynthesizer

    return GanSynthesizer(checkpoint_path, **kwargs)
