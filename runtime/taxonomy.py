"""The defect taxonomy: the class names every part of Loomsight agrees on.

`DEFECT_CLASSES` is the built-in class list, in class-id order: the simulator draws them, datasets
label them, the bundled models predict them and events carry their names. `UNKNOWN_CLASS` is the
open set's name (a defect a dense model's class-agnostic channel is sure of, that no class is).
The grader and the merger's streak rules refer to classes by these names.
"""

from __future__ import annotations

DEFECT_CLASSES: tuple[str, ...] = (
    "hole",
    "stain",
    "broken_end",
    "broken_pick",
    "knot",
    "slub",
    "thin_place",
    "float",
    "contamination",
)

UNKNOWN_CLASS = "unknown"

# Holes score 4 points in the four-point system whatever their size.
HOLE_CLASSES = frozenset({"hole"})

# Streaks: a missing warp yarn runs along the web, a missing weft yarn across it.
ALONG_WEB_STREAKS = frozenset({"broken_end"})
ACROSS_WEB_STREAKS = frozenset({"broken_pick"})
