"""Training data for the GAN: real defect patches with exact masks, their fabric, and clean fabric.

Real samples come from a directory made by `loomsight dataset` (`images/<split>/NAME.png` beside
`masks/<split>/NAME.png`, uint8: 0 clean, k = class k - 1). Built with `--sim-webs N --synth none`,
every defect in it is one the simulator rendered on its fabric, with an exact mask; a dataset built
with synthesizers also holds their defects (a warning says so). Each 8-connected defect part becomes
one sample: a `patch_px` window around it (jittered), the mask of its class in that window, and a
defect-free window of the same tile (its fabric, for the texture code and for stage 2's
reconstruction). Windows holding another class's pixels are skipped. Tiles with no defect are kept
as clean fabric for stage 2's backgrounds. A folder of user crops (`DefectLibrary` format) adds
more real samples.

Images are RGB (gray tiles become three equal channels).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from offline_train.synth.base import defect_classes, dilate
from runtime.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


def to_rgb(image: np.ndarray, *, bgr: bool) -> np.ndarray:
    """uint8 HxW or HxWx3 -> HxWx3 RGB (`bgr`: the colour input is in OpenCV's order)."""
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, ::-1]) if bgr else image


def pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """`image` padded (mirrored) on the bottom/right to at least size x size."""
    h, w = image.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if not ph and not pw:
        return image
    pad = ((0, ph), (0, pw)) + (((0, 0),) if image.ndim == 3 else ())
    return np.pad(image, pad, mode="symmetric")


@dataclass
class GanData:
    """Real defect samples (`images`, `masks`, `labels`, `textures`) and clean fabric tiles."""

    classes: tuple[str, ...]
    patch_px: int
    images: np.ndarray  # N x P x P x 3 uint8 RGB: defect on its fabric
    masks: np.ndarray  # N x P x P bool
    labels: np.ndarray  # N int64, index into classes
    textures: np.ndarray  # N x P x P x 3 uint8 RGB: defect-free fabric of the same tile
    clean_tiles: list[np.ndarray] = field(default_factory=list)  # H x W x 3 uint8 RGB, >= P
    origin: str = ""

    def __post_init__(self) -> None:
        n, p = len(self.images), self.patch_px
        if n == 0:
            raise ConfigError(f"{self.origin or 'GAN data'}: no defect sample to learn from")
        if self.images.shape != (n, p, p, 3) or self.textures.shape != (n, p, p, 3):
            raise ValueError(
                f"GAN data: images {self.images.shape}, textures {self.textures.shape}; want {(n, p, p, 3)}"
            )
        if self.masks.shape != (n, p, p) or self.labels.shape != (n,):
            raise ValueError(
                f"GAN data: masks {self.masks.shape}, labels {self.labels.shape} for {n} samples"
            )
        if self.labels.min() < 0 or self.labels.max() >= len(self.classes):
            raise ValueError(f"GAN data: labels outside 0..{len(self.classes) - 1}")

    def __len__(self) -> int:
        return len(self.images)

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}

    @property
    def sha256(self) -> str:
        """A hash of every array and the class names: what the GAN was trained on."""
        h = hashlib.sha256(json.dumps([list(self.classes), self.patch_px]).encode())
        for a in (self.images, self.masks, self.labels, self.textures, *self.clean_tiles):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def sample(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """Indices of a class-balanced batch: a class uniformly, then one of its samples."""
        present = [i for i in range(len(self.classes)) if (self.labels == i).any()]
        chosen = rng.choice(present, size=batch)
        by_class = {i: np.flatnonzero(self.labels == i) for i in present}
        return np.array([by_class[c][int(rng.integers(len(by_class[c])))] for c in chosen], dtype=np.int64)

    def clean_patches(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` random patch_px windows of clean fabric (N x P x P x 3 uint8); from the samples' own
        fabric patches when the dataset kept no clean tile."""
        p = self.patch_px
        if not self.clean_tiles:
            return self.textures[rng.integers(len(self.textures), size=n)]
        out = np.empty((n, p, p, 3), np.uint8)
        for i in range(n):
            tile = self.clean_tiles[int(rng.integers(len(self.clean_tiles)))]
            y = int(rng.integers(tile.shape[0] - p + 1))
            x = int(rng.integers(tile.shape[1] - p + 1))
            out[i] = tile[y : y + p, x : x + p]
        return out


def _window(center: float, size: int, limit: int, jitter: int, rng: np.random.Generator) -> int:
    start = round(center - size / 2) + (int(rng.integers(-jitter, jitter + 1)) if jitter else 0)
    return int(min(max(0, start), limit - size))


def _clean_window(
    image: np.ndarray, defects: np.ndarray, p: int, rng: np.random.Generator, tries: int = 12
) -> np.ndarray | None:
    """A p x p window of `image` away from every defect pixel (dilated), or None."""
    h, w = defects.shape
    near = dilate(defects, 3)
    for _ in range(tries):
        y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
        if not near[y : y + p, x : x + p].any():
            return image[y : y + p, x : x + p]
    return None


def samples_from_tile(
    image: np.ndarray,
    label_mask: np.ndarray,
    patch_px: int,
    rng: np.random.Generator,
    *,
    min_area_px: int = 4,
    fallback_texture: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray, int, np.ndarray]]:
    """(patch, mask, class value k - 1, fabric patch) for each defect part of one RGB tile."""
    p = patch_px
    image, label_mask = pad_to(image, p), pad_to(label_mask, p)
    h, w = label_mask.shape
    defects = label_mask > 0
    texture = _clean_window(image, defects, p, rng)
    out = []
    for k in (int(v) for v in np.unique(label_mask) if v > 0):
        n, _, stats, centroids = cv2.connectedComponentsWithStats(
            (label_mask == k).astype(np.uint8), connectivity=8
        )
        for c in range(1, n):
            if stats[c, cv2.CC_STAT_AREA] < min_area_px:
                continue
            cx, cy = centroids[c]
            x0 = _window(cx, p, w, p // 8, rng)
            y0 = _window(cy, p, h, p // 8, rng)
            win = label_mask[y0 : y0 + p, x0 : x0 + p]
            if np.any((win != 0) & (win != k)):
                continue  # another class would be in the picture unlabelled
            fabric = texture if texture is not None else fallback_texture
            if fabric is None:
                fabric = image[y0 : y0 + p, x0 : x0 + p]
            out.append((image[y0 : y0 + p, x0 : x0 + p].copy(), win == k, k - 1, np.array(fabric)))
    return out


def _read(path: Path, flags: int) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise ConfigError(f"cannot read {path}: is it a PNG image?")
    return np.asarray(img)


def from_dataset(
    dataset_dir: Path,
    patch_px: int,
    *,
    seed: int = 0,
    splits: tuple[str, ...] = SPLITS,
    max_clean_tiles: int = 200,
    min_area_px: int = 4,
) -> GanData:
    """Real samples and clean tiles of a `loomsight dataset` directory (see the module docstring)."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise ConfigError(
            f"dataset {root} does not exist: build one with `loomsight dataset --sim-webs N --synth none --out {root}`"
        )
    card_path = root / "dataset.json"
    classes = defect_classes()
    if card_path.is_file():
        card = json.loads(card_path.read_text(encoding="utf-8"))
        classes = tuple(card.get("spec", {}).get("classes") or classes)
        synth = card.get("recipe", {}).get("synth")
        if synth not in (None, "none"):
            log.warning(
                "dataset %s was built with synthesizers (--synth %s): their defects count as real here",
                root,
                synth,
            )
    mask_dirs = [root / "masks" / s for s in splits if (root / "masks" / s).is_dir()]
    if not mask_dirs:
        raise ConfigError(
            f"dataset {root} has no masks/<split>/ folder: the GAN needs exact label masks; rebuild it with "
            f"`loomsight dataset --sim-webs N --synth none --out {root}`"
        )
    rng = np.random.default_rng(seed)
    samples: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]] = []
    clean: list[np.ndarray] = []
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    for mdir in mask_dirs:
        for mpath in sorted(mdir.glob("*.png")):
            ipath = root / "images" / mdir.name / mpath.name
            if not ipath.is_file():
                raise ConfigError(f"{mpath} has no image {ipath}: the dataset is incomplete")
            label_mask = _read(mpath, cv2.IMREAD_GRAYSCALE)
            if not label_mask.any():
                if len(clean) < max_clean_tiles:
                    clean.append(pad_to(to_rgb(_read(ipath, cv2.IMREAD_COLOR), bgr=True), patch_px))
                continue
            if label_mask.max() > len(classes):
                raise ConfigError(
                    f"{mpath}: label {label_mask.max()} but the dataset has {len(classes)} classes"
                )
            pending.append((to_rgb(_read(ipath, cv2.IMREAD_COLOR), bgr=True), label_mask))
    fallback = clean[0][:patch_px, :patch_px] if clean else None
    for image, label_mask in pending:
        samples.extend(
            samples_from_tile(
                image, label_mask, patch_px, rng, min_area_px=min_area_px, fallback_texture=fallback
            )
        )
    if not samples:
        raise ConfigError(
            f"dataset {root} holds no defect pixels in masks/: render defects (`--sim-defects-per-m` > 0) and rebuild"
        )
    data = _assemble(samples, classes, patch_px, clean, origin=str(root))
    log.info("GAN data from %s: %d samples %s, %d clean tiles", root, len(data), data.counts(), len(clean))
    return data


def _assemble(
    samples: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]],
    classes: tuple[str, ...],
    patch_px: int,
    clean: list[np.ndarray],
    origin: str,
) -> GanData:
    """Keep the classes present (in `classes` order) and stack the samples."""
    present = sorted({s[2] for s in samples})
    remap = {old: new for new, old in enumerate(present)}
    return GanData(
        classes=tuple(classes[i] for i in present),
        patch_px=patch_px,
        images=np.stack([s[0] for s in samples]),
        masks=np.stack([s[1] for s in samples]),
        labels=np.array([remap[s[2]] for s in samples], dtype=np.int64),
        textures=np.stack([s[3] for s in samples]),
        clean_tiles=clean,
        origin=origin,
    )


def with_crops(data: GanData, folder: Path, *, seed: int = 0) -> GanData:
    """`data` plus the crops of a `DefectLibrary` folder (user-supplied real defects)."""
    from offline_train.synth.library import DefectLibrary

    rng = np.random.default_rng(seed)
    all_classes = defect_classes()
    samples = [
        (
            data.images[i],
            data.masks[i],
            all_classes.index(data.classes[int(data.labels[i])]),
            data.textures[i],
        )
        for i in range(len(data))
    ]
    for crop in DefectLibrary.from_folder(folder):
        image = to_rgb(crop.image, bgr=True)
        label_mask = crop.mask.astype(np.uint8) * (all_classes.index(crop.class_name) + 1)
        samples.extend(samples_from_tile(image, label_mask, data.patch_px, rng))
    return _assemble(samples, all_classes, data.patch_px, data.clean_tiles, origin=f"{data.origin}+{folder}")
