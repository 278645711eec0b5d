"""The synthetic loom: an endless roll of fabric emitted as line-scan blocks, with exact ground truth.

Coordinates are the roll's: `x` is the camera column (0 = the left end of the line, which may be
background beyond the web edge), `y` is the line index since the roll started. Millimetres follow:
`x_mm = x * mm_per_px` from the left edge of the image, `y_mm = y * mm_per_line` from the roll start.

Random defects are a Poisson process along the roll (`defects_per_m`), drawn per fixed chunk of
lines from the seed, placed (and rendered) ahead of emission, so they straddle block boundaries as
on a real web and the same seed gives the same pixels and truth however the roll is cut.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import ConfigError
from runtime.sim.defect_render import RenderedDefect, render_defect
from runtime.sim.defects import (
    DEFECT_CLASSES,
    DefectPlan,
    check_class,
    class_probabilities,
    nominal_extent,
    sample_params,
)
from runtime.sim.fabric import FabricSpec
from runtime.sim.render import FabricRenderer
from runtime.sim.streams import generator

log = logging.getLogger(__name__)

CHUNK_LINES = 8192  # random defects are drawn per chunk of this many lines (fixed: not the block size)
_LOOKBACK = 64  # a defect's box may start this many lines above its planned line (blur, margins)
_GAP_PX = 12  # random defects keep this far apart
_MIN_INTERIOR_PX = 24  # narrower webs (between the selvedges) get no defects


@dataclass(frozen=True)
class TruthDefect:
    """One defect's ground truth. The box is the tight box of its exact mask, end-exclusive, in roll
    coordinates; `x_mm`, `y_mm` are the box's top-left corner (x from image column 0, y from the roll
    start) and `w_mm`, `h_mm` its size."""

    defect_id: int
    class_name: str
    x0_px: int
    y0_line: int
    x1_px: int
    y1_line: int
    x_mm: float
    y_mm: float
    w_mm: float
    h_mm: float

    @property
    def class_id(self) -> int:
        return DEFECT_CLASSES.index(self.class_name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "defect_id": self.defect_id,
            "class": self.class_name,
            "class_id": self.class_id,
            "bbox_px": [self.x0_px, self.y0_line, self.x1_px, self.y1_line],
            "x_mm": round(self.x_mm, 3),
            "y_mm": round(self.y_mm, 3),
            "w_mm": round(self.w_mm, 3),
            "h_mm": round(self.h_mm, 3),
        }


@dataclass(frozen=True)
class WebBlock:
    """Lines [line0, line0 + n_lines) of the roll. `labels` holds each pixel's defect_id (0 = clean)."""

    pixels: np.ndarray
    line0: int
    labels: np.ndarray | None

    @property
    def n_lines(self) -> int:
        return int(self.pixels.shape[0])


@dataclass(frozen=True)
class _Placed:
    truth: TruthDefect
    rendered: RenderedDefect


class SyntheticLoom:
    """An endless roll of `fabric` as line-scan blocks, with every defect's truth and mask."""

    def __init__(
        self,
        fabric: FabricSpec,
        *,
        width_px: int = 2048,
        mm_per_px: float = 0.1,
        mm_per_line: float = 0.1,
        seed: int = 0,
        defects_per_m: float = 1.0,
        defect_classes: Sequence[str] = DEFECT_CLASSES,
        with_masks: bool = False,
        class_weights: Mapping[str, float] | None = None,
        contrast: float | Mapping[str, float] = 1.0,
    ) -> None:
        if width_px < 64:
            raise ConfigError(f"width_px = {width_px} is too narrow; use at least 64")
        if mm_per_px <= 0 or mm_per_line <= 0:
            raise ConfigError(f"mm_per_px ({mm_per_px}) and mm_per_line ({mm_per_line}) must be > 0")
        if defects_per_m < 0:
            raise ConfigError(f"defects_per_m = {defects_per_m} must be >= 0")
        self.fabric = fabric
        self.width_px = int(width_px)
        self.mm_per_px = float(mm_per_px)
        self.mm_per_line = float(mm_per_line)
        self.seed = int(seed)
        self.defects_per_m = float(defects_per_m)
        self.defect_classes = tuple(defect_classes)
        self.with_masks = with_masks
        self._probs = class_probabilities(self.defect_classes, class_weights)
        if isinstance(contrast, Mapping):
            for c in contrast:
                check_class(c)
        self._contrast = contrast
        self.renderer = FabricRenderer(
            fabric, width_px=width_px, mm_per_px=mm_per_px, mm_per_line=mm_per_line, seed=seed
        )
        self._lines = 0
        self._chunks_done = 0
        self._next_id = 1
        self._placed: list[_Placed] = []  # defects not yet wholly emitted, sorted by box top
        self._finished: list[TruthDefect] = []  # wholly emitted: only their truth is kept
        self._random_boxes: list[tuple[int, int, int, int]] = []

    # ---- public -----------------------------------------------------------------------------
    @property
    def lines_emitted(self) -> int:
        return self._lines

    @property
    def truth(self) -> list[TruthDefect]:
        """Every defect placed so far whose box starts before the lines emitted so far."""
        active = [p.truth for p in self._placed if p.truth.y0_line < self._lines]
        return sorted(self._finished + active, key=lambda t: (t.y0_line, t.defect_id))

    def lines_per_m(self) -> float:
        return 1000.0 / self.mm_per_line

    def next_block(self, n_lines: int) -> WebBlock:
        """The next `n_lines` lines of the roll (contiguous with the previous block)."""
        if n_lines < 1:
            raise ConfigError(f"n_lines = {n_lines} must be >= 1")
        a, b = self._lines, self._lines + int(n_lines)
        self._ensure_defects(b)
        pixels = self.renderer.render(a, b)
        labels = np.zeros((b - a, self.width_px), np.int32) if self.with_masks else None
        for placed in self._overlapping(a, b):
            self._paste(placed.rendered, placed.truth.defect_id, pixels, labels, lines=(a, b))
        self._lines = b
        self._forget_before(b)
        return WebBlock(pixels, a, labels)

    def defects_between(self, line_start: int, line_end: int) -> list[TruthDefect]:
        """Every defect (emitted or not yet) whose box intersects lines [line_start, line_end)."""
        self._ensure_defects(line_end)
        done = [t for t in self._finished if t.y0_line < line_end and t.y1_line > line_start]
        return sorted(
            done + [p.truth for p in self._overlapping(line_start, line_end)],
            key=lambda t: (t.y0_line, t.defect_id),
        )

    def place_defect(
        self,
        class_name: str,
        *,
        y0_line: int,
        x_center_px: int | None = None,
        length_mm: float | None = None,
        **params: Any,
    ) -> TruthDefect:
        """Place one defect deterministically (for tests and demos), starting at line `y0_line`.

        `params` override the class defaults (see `runtime.sim.defects.DEFAULTS`), e.g.
        `yarns=2`, `contrast=0.5`, `direction="weft"`, `size_mm=8`. Lines already emitted cannot
        change: the defect's box must start at or after `lines_emitted`.
        """
        check_class(class_name)
        lo, hi = self.renderer.interior_x()
        if hi - lo < _MIN_INTERIOR_PX:
            raise ConfigError(
                f"the web interior [{lo}, {hi}) px is too narrow for defects; use a wider width_px than {self.width_px}"
            )
        if x_center_px is not None and not lo <= x_center_px < hi:
            raise ConfigError(
                f"x_center_px = {x_center_px} is outside the web's interior [{lo}, {hi}) for this fabric and width"
            )
        if length_mm is not None:
            params["length_mm" if class_name not in ("hole", "stain", "knot") else "size_mm"] = float(
                length_mm
            )
        if "seed" in params:
            seed = int(params.pop("seed"))
        else:  # the defect's own seed follows from where it is, not from how many came before it
            x_key = 0 if x_center_px is None else int(x_center_px) + 1
            key = (max(0, int(y0_line)), x_key, DEFECT_CLASSES.index(class_name))
            seed = int(generator(self.seed, 8, *key).integers(2**31))
        rng = generator(self.seed, 9, seed & 0x7FFFFFFF)
        plan = self._plan(
            class_name, rng, y0_line=int(y0_line), x_center=x_center_px, overrides=params, seed=seed
        )
        rendered = render_defect(self.renderer, plan)
        if rendered is None:
            raise ConfigError(
                f"{class_name} with {params} changes no pixel visibly; raise its contrast or size"
            )
        if rendered.y0 < self._lines:
            raise ConfigError(
                f"{class_name} at y0_line={y0_line} would start at line {rendered.y0}, but lines up to "
                f"{self._lines} were already emitted; place it at y0_line >= {self._lines + _LOOKBACK}"
            )
        return self._add(rendered)

    # ---- placement --------------------------------------------------------------------------
    def _contrast_for(self, class_name: str) -> float:
        if isinstance(self._contrast, Mapping):
            return float(self._contrast.get(class_name, 1.0))
        return float(self._contrast)

    def _plan(
        self,
        class_name: str,
        rng: np.random.Generator,
        *,
        y0_line: int,
        x_center: int | None,
        overrides: Mapping[str, Any],
        seed: int,
    ) -> DefectPlan:
        params = sample_params(
            class_name,
            rng,
            mm_per_px=self.mm_per_px,
            mm_per_line=self.mm_per_line,
            contrast_scale=self._contrast_for(class_name),
            overrides=overrides,
        )
        lo, hi = self.renderer.interior_x()
        if class_name == "broken_pick":
            params["span_px"] = float(np.clip(params["width_frac"], 0.05, 1.0) * (hi - lo))
        across, _ = nominal_extent(class_name, params, hi - lo)
        half = min(across // 2, (hi - lo) // 2)
        if x_center is None:
            x_center = int(rng.integers(lo + half, max(lo + half + 1, hi - half)))
        elif class_name == "broken_pick":
            params["span_px"] = float(min(params["span_px"], 2 * min(x_center - lo, hi - x_center)))
        return DefectPlan(self._next_id, class_name, y0_line, int(x_center), params, seed)

    def _add(self, rendered: RenderedDefect) -> TruthDefect:
        plan = rendered.plan
        truth = TruthDefect(
            defect_id=plan.defect_id,
            class_name=plan.class_name,
            x0_px=rendered.x0,
            y0_line=rendered.y0,
            x1_px=rendered.x1,
            y1_line=rendered.y1,
            x_mm=round(rendered.x0 * self.mm_per_px, 6),
            y_mm=round(rendered.y0 * self.mm_per_line, 6),
            w_mm=round((rendered.x1 - rendered.x0) * self.mm_per_px, 6),
            h_mm=round((rendered.y1 - rendered.y0) * self.mm_per_line, 6),
        )
        self._next_id = max(self._next_id, plan.defect_id) + 1
        keys = [p.truth.y0_line for p in self._placed]
        self._placed.insert(bisect.bisect_right(keys, truth.y0_line), _Placed(truth, rendered))
        return truth

    def _ensure_defects(self, line_end: int) -> None:
        """Draw the random defects of every chunk that can reach a line before `line_end`."""
        if self.defects_per_m <= 0:
            return
        while self._chunks_done * CHUNK_LINES - _LOOKBACK < line_end:
            self._draw_chunk(self._chunks_done)
            self._chunks_done += 1

    def _draw_chunk(self, k: int) -> None:
        lo, hi = self.renderer.interior_x()
        if hi - lo < _MIN_INTERIOR_PX:
            if k == 0:
                log.warning("web interior [%d, %d) is too narrow for random defects; none placed", lo, hi)
            return
        rng = generator(self.seed, 7, k)
        self._random_boxes = [bx for bx in self._random_boxes if bx[3] >= (k - 1) * CHUNK_LINES]
        chunk_m = CHUNK_LINES * self.mm_per_line / 1000.0
        count = int(rng.poisson(self.defects_per_m * chunk_m))
        ys = np.sort(rng.integers(k * CHUNK_LINES + _LOOKBACK, (k + 1) * CHUNK_LINES + _LOOKBACK, count))
        for y in ys:
            cls = self.defect_classes[int(rng.choice(len(self.defect_classes), p=self._probs))]
            seed = int(rng.integers(0, 2**31 - 1))
            plan = self._plan(cls, generator(seed, 3), y0_line=int(y), x_center=None, overrides={}, seed=seed)
            rendered = render_defect(self.renderer, plan)
            if rendered is None:
                continue
            box = (rendered.x0 - _GAP_PX, rendered.y0 - _GAP_PX, rendered.x1 + _GAP_PX, rendered.y1 + _GAP_PX)
            if any(
                box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                for b in self._random_boxes
            ):
                continue  # keep random defects apart so every mask stays whole
            self._random_boxes.append(box)
            self._add(rendered)

    # ---- emission ---------------------------------------------------------------------------
    def _overlapping(self, a: int, b: int) -> list[_Placed]:
        return [p for p in self._placed if p.truth.y0_line < b and p.truth.y1_line > a]

    @staticmethod
    def _paste(
        rd: RenderedDefect,
        defect_id: int,
        pixels: np.ndarray,
        labels: np.ndarray | None,
        *,
        lines: tuple[int, int],
    ) -> None:
        a, b = lines
        r0, r1 = max(a, rd.y0), min(b, rd.y1)
        m = rd.mask[r0 - rd.y0 : r1 - rd.y0]
        dst = pixels[r0 - a : r1 - a, rd.x0 : rd.x1]
        dst[m] = rd.patch[r0 - rd.y0 : r1 - rd.y0][m]
        if labels is not None:
            labels[r0 - a : r1 - a, rd.x0 : rd.x1][m] = defect_id

    def _forget_before(self, line: int) -> None:
        """Drop the pixels of defects wholly emitted; keep their truth (an endless roll stays bounded)."""
        if not self._placed or self._placed[0].truth.y0_line >= line:
            return
        keep: list[_Placed] = []
        for p in self._placed:
            if p.truth.y1_line <= line:
                self._finished.append(p.truth)
            else:
                keep.append(p)
        self._placed = keep


def render_web(
    fabric: FabricSpec,
    *,
    length_m: float,
    width_px: int = 2048,
    mm_per_px: float = 0.1,
    mm_per_line: float = 0.1,
    seed: int = 0,
    defects_per_m: float = 1.0,
    with_masks: bool = False,
    **loom_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray | None, list[TruthDefect]]:
    """A whole web at once: (pixels, labels or None, truth of every defect starting on it)."""
    loom = SyntheticLoom(
        fabric,
        width_px=width_px,
        mm_per_px=mm_per_px,
        mm_per_line=mm_per_line,
        seed=seed,
        defects_per_m=defects_per_m,
        with_masks=with_masks,
        **loom_kwargs,
    )
    n = max(1, round(length_m * 1000.0 / mm_per_line))
    block = loom.next_block(n)
    truth = [t for t in loom.truth if t.y0_line < n]
    return block.pixels, block.labels, truth
