"""A library of defect crops with exact masks, for cut-paste synthesis.

Crops come from the synthetic loom (`DefectLibrary.from_simulator`: short webs rendered with exact
defect masks, resampled to the model's resolution as the runtime resamples, each defect cut out with
a margin) or from real defects a user supplies (`DefectLibrary.from_folder`). On disk a library is a
folder of triples, the format `save` writes and `from_folder` reads:

    NAME.png       the crop, 8-bit gray or BGR colour, at the model's resolution
    NAME_mask.png  8-bit, non-zero on the defect
    NAME.json      {"class": "<one of DEFECT_CLASSES>", "origin": "<optional free text>",
                    "contrast": <optional: mean |defect - clean fabric| inside the mask, gray levels>}

`contrast` tells cut-paste how visible the defect is on its own fabric, so a pasted copy is judged
against its original (a thin place is quiet by nature) rather than against one absolute floor.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from offline_train.synth.base import check_class, defect_classes, dilate, mean_contrast, tight_box
from runtime.errors import ConfigError

log = logging.getLogger(__name__)

MASK_SUFFIX = "_mask"


@dataclass(frozen=True)
class DefectCrop:
    """One defect at the model's resolution: pixels (with some surrounding fabric) and its mask."""

    image: np.ndarray  # uint8 HxW gray or HxWx3 BGR
    mask: np.ndarray  # bool HxW, non-empty
    class_name: str
    origin: str = ""  # where it came from: a file name, or the simulator seed and defect id
    contrast: float | None = None  # mean |defect - clean fabric| inside the mask (gray levels), if known

    def __post_init__(self) -> None:
        img, m = self.image, self.mask
        if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
            raise ValueError(
                f"defect crop {self.origin!r}: image must be uint8 HxW or HxWx3, got {img.dtype} {img.shape}"
            )
        if m.dtype != np.bool_ or m.shape != img.shape[:2]:
            raise ValueError(
                f"defect crop {self.origin!r}: mask must be bool {img.shape[:2]}, got {m.dtype} {m.shape}"
            )
        if not m.any():
            raise ValueError(f"defect crop {self.origin!r}: the mask is empty")
        check_class(self.class_name)


class DefectLibrary:
    """Defect crops by class; see the module docstring for where they come from."""

    def __init__(self, crops: Iterable[DefectCrop] = ()) -> None:
        self.crops: list[DefectCrop] = list(crops)

    def __len__(self) -> int:
        return len(self.crops)

    def __iter__(self) -> Iterator[DefectCrop]:
        return iter(self.crops)

    def __repr__(self) -> str:
        return f"DefectLibrary({dict(sorted(self.counts().items()))})"

    def add(self, crop: DefectCrop) -> None:
        self.crops.append(crop)

    def counts(self) -> dict[str, int]:
        """Number of crops per class."""
        return dict(Counter(c.class_name for c in self.crops))

    @property
    def classes(self) -> tuple[str, ...]:
        """The classes present, in DEFECT_CLASSES order."""
        have = {c.class_name for c in self.crops}
        return tuple(c for c in defect_classes() if c in have)

    def of_class(self, class_name: str) -> list[DefectCrop]:
        return [c for c in self.crops if c.class_name == class_name]

    # -- files ---------------------------------------------------------------------------------

    def save(self, folder: Path) -> list[Path]:
        """Write every crop as NAME.png, NAME_mask.png, NAME.json; returns the image paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        serial: Counter[str] = Counter()
        for crop in self.crops:
            name = f"{crop.class_name}_{serial[crop.class_name]:05d}"
            serial[crop.class_name] += 1
            path = folder / f"{name}.png"
            if not cv2.imwrite(str(path), crop.image):
                raise OSError(f"cannot write {path}")
            cv2.imwrite(str(folder / f"{name}{MASK_SUFFIX}.png"), crop.mask.astype(np.uint8) * 255)
            meta: dict[str, object] = {"class": crop.class_name, "origin": crop.origin}
            if crop.contrast is not None:
                meta["contrast"] = round(float(crop.contrast), 3)
            (folder / f"{name}.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
            written.append(path)
        log.info("saved %d defect crops to %s", len(written), folder)
        return written

    @classmethod
    def from_folder(cls, folder: Path) -> DefectLibrary:
        """Read NAME.png + NAME_mask.png + NAME.json triples (see the module docstring)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"defect library folder {folder} does not exist")
        images = sorted(p for p in folder.glob("*.png") if not p.stem.endswith(MASK_SUFFIX))
        if not images:
            raise ConfigError(
                f"{folder} holds no defect crops: expected NAME.png + NAME{MASK_SUFFIX}.png + NAME.json"
            )
        crops: list[DefectCrop] = []
        for path in images:
            mask_path = path.with_name(f"{path.stem}{MASK_SUFFIX}.png")
            meta_path = path.with_suffix(".json")
            for needed in (mask_path, meta_path):
                if not needed.is_file():
                    raise ConfigError(
                        f"defect crop {path.name} has no {needed.name}; add it or remove {path.name}"
                    )
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ConfigError(f'{meta_path} is not valid JSON ({e}); expected {{"class": "hole"}}') from e
            class_name = meta.get("class") if isinstance(meta, dict) else None
            known = defect_classes()
            if class_name not in known:
                raise ConfigError(f"{meta_path}: class {class_name!r} is not one of {', '.join(known)}")
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if image is None or mask is None:
                raise ConfigError(
                    f"cannot read {path.name} or {mask_path.name} in {folder}: are they PNG images?"
                )
            if image.dtype != np.uint8:
                raise ConfigError(
                    f"{path}: expected an 8-bit image, got {image.dtype}; convert it to 8-bit PNG"
                )
            if image.ndim == 3 and image.shape[2] == 4:
                image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
            if mask.shape != image.shape[:2]:
                raise ConfigError(
                    f"{mask_path.name} is {mask.shape[::-1]} px but {path.name} is {image.shape[1::-1]}; they must match"
                )
            if not mask.any():
                raise ConfigError(f"{mask_path} is all zero: mark the defect's pixels non-zero")
            origin = str(meta.get("origin") or path.name)
            contrast = meta.get("contrast")
            if contrast is not None and (not isinstance(contrast, (int, float)) or contrast < 0):
                raise ConfigError(
                    f"{meta_path}: contrast must be a number >= 0 (gray levels), got {contrast!r}"
                )
            crops.append(
                DefectCrop(
                    image=image,
                    mask=mask > 0,
                    class_name=str(class_name),
                    origin=origin,
                    contrast=None if contrast is None else float(contrast),
                )
            )
        log.info("read %d defect crops from %s", len(crops), folder)
        return cls(crops)

    # -- the synthetic loom --------------------------------------------------------------------

    @classmethod
    def from_simulator(
        cls,
        n_per_class: int,
        rng: np.random.Generator,
        mm_per_px_model: float,
        *,
        classes: Sequence[str] | None = None,
        sim_mm_per_px: float = 0.1,
        mm_per_line: float | None = None,
        width_px: int = 1024,
        length_m: float = 1.0,
        defects_per_m: float = 8.0,
        margin_px: int = 6,
        max_crop_px: int = 256,
        max_webs: int = 200,
        color_fraction: float = 0.25,
        progress: Callable[[str], None] | None = None,
    ) -> DefectLibrary:
        """Up to `n_per_class` crops of each class from short simulated webs.

        Each web (a catalog fabric or a random one) is rendered at `sim_mm_per_px` x `mm_per_line`
        with exact instance masks; each defect is cut with `margin_px` (model pixels) of fabric
        around it, resampled to `mm_per_px_model` like the runtime does (pixels INTER_AREA; the mask
        INTER_AREA then > 0 so one-yarn streaks survive), and a defect longer than `max_crop_px` is
        cut to a window of that length. Defects touching another defect, and stubs the web's end
        cuts to less than half of what a crop would hold, are skipped. Each crop's
        `contrast` comes from the same web rendered without defects. Stops after `max_webs` webs
        even when some class is short (logged).
        """
        from runtime.preprocess import resample_mask, resample_to_model
        from runtime.sim.fabric import FABRICS, random_fabric
        from runtime.sim.loom import render_web

        if n_per_class < 1:
            raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
        wanted = tuple(check_class(c) for c in (classes or defect_classes()))
        mm_per_line = sim_mm_per_px if mm_per_line is None else mm_per_line
        sx, sy = sim_mm_per_px / mm_per_px_model, mm_per_line / mm_per_px_model
        mx, my = math.ceil(margin_px / sx), math.ceil(margin_px / sy)
        max_x, max_y = max(8, round(max_crop_px / sx)), max(8, round(max_crop_px / sy))
        names = sorted(FABRICS)
        count: Counter[str] = Counter()
        crops: list[DefectCrop] = []
        for web_no in range(max_webs):
            missing = tuple(c for c in wanted if count[c] < n_per_class)
            if not missing:
                break
            if rng.random() < 0.5:
                fabric = FABRICS[names[int(rng.integers(len(names)))]]
            else:
                fabric = random_fabric(rng, color=bool(rng.random() < color_fraction))
            seed = int(rng.integers(2**31))
            pixels, labels, truth = render_web(
                fabric,
                length_m=length_m,
                width_px=width_px,
                mm_per_px=sim_mm_per_px,
                mm_per_line=mm_per_line,
                seed=seed,
                defects_per_m=defects_per_m,
                with_masks=True,
                defect_classes=missing,
            )
            if labels is None:
                raise RuntimeError("render_web(with_masks=True) returned no labels")
            # The same web without defects: each crop's contrast against its own clean fabric.
            clean_render, _, _ = render_web(
                fabric,
                length_m=length_m,
                width_px=width_px,
                mm_per_px=sim_mm_per_px,
                mm_per_line=mm_per_line,
                seed=seed,
                defects_per_m=0.0,
            )
            clean: np.ndarray | None = clean_render
            if clean_render.shape != pixels.shape or not np.array_equal(
                clean_render[labels == 0], pixels[labels == 0]
            ):
                log.warning(
                    "defect library: the defect-free render of seed %d differs off the defects; no contrast",
                    seed,
                )
                clean = None
            h, w = labels.shape
            for t in truth:
                if t.class_name not in missing or count[t.class_name] >= n_per_class:
                    continue
                # The web's end may cut a long defect short: skip a stub under half of a full crop.
                full, seen = int(t.y1_line) - int(t.y0_line), min(h, int(t.y1_line)) - int(t.y0_line)
                if seen < min(full, max_y) / 2:
                    continue
                x0, x1 = max(0, int(t.x0_px) - mx), min(w, int(t.x1_px) + mx)
                y0, y1 = max(0, int(t.y0_line) - my), min(h, int(t.y1_line) + my)
                if x1 - x0 > max_x:  # a long defect: keep a window of it
                    x0 = int(rng.integers(x0, x1 - max_x + 1))
                    x1 = x0 + max_x
                if y1 - y0 > max_y:
                    y0 = int(rng.integers(y0, y1 - max_y + 1))
                    y1 = y0 + max_y
                lab = labels[y0:y1, x0:x1]
                mask = lab == t.defect_id
                if not mask.any():
                    continue
                near = dilate(mask, max(mx, my))
                if np.any((lab[near] != 0) & (lab[near] != t.defect_id)):
                    continue  # another defect close by would be pasted unlabelled
                small = resample_to_model(np.ascontiguousarray(pixels[y0:y1, x0:x1]), sx, sy)
                small_mask = resample_mask(mask, sx, sy)
                if tight_box(small_mask) is None:
                    continue
                contrast = None
                if clean is not None:
                    small_clean = resample_to_model(np.ascontiguousarray(clean[y0:y1, x0:x1]), sx, sy)
                    contrast = mean_contrast(small_clean, small, small_mask)
                crops.append(
                    DefectCrop(
                        image=np.ascontiguousarray(small),
                        mask=np.ascontiguousarray(small_mask, dtype=bool),
                        class_name=t.class_name,
                        origin=f"sim:{fabric.name}:seed={seed}:id={t.defect_id}",
                        contrast=contrast,
                    )
                )
                count[t.class_name] += 1
            if progress:
                progress(f"defect library: web {web_no + 1}, crops {dict(count)}")
        short = {c: count[c] for c in wanted if count[c] < n_per_class}
        if short:
            log.warning(
                "defect library: after %d webs some classes are short of %d: %s", max_webs, n_per_class, short
            )
        return cls(crops)
