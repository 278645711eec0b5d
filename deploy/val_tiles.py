"""Tiles to check and tune an exported model on: a labelled YOLO validation set, or generated fabric.

A validation set is an ultralytics `data.yaml` (as `loomsight dataset` writes it): `path`, `val`
(a folder of images, a .txt list of images, or a list of either) and `names`. Labels sit in the
parallel `labels/` folder as YOLO text (class cx cy w h, normalised). Tiles are read as the model
sees them: gray, or RGB when the model takes colour.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from deploy.thresholds import TileLabels
from runtime.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class ValSet:
    data_yaml: Path
    files: list[Path]
    names: list[str]

    def __len__(self) -> int:
        return len(self.files)


def _names(raw: object, data_yaml: Path) -> list[str]:
    if isinstance(raw, dict):
        return [str(raw[k]) for k in sorted(raw, key=int)]
    if isinstance(raw, list):
        return [str(n) for n in raw]
    raise ConfigError(f"{data_yaml}: 'names' must be a list or a mapping of class index -> name")


def _images_in(entry: Path) -> list[Path]:
    if entry.is_dir():
        return sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if entry.is_file() and entry.suffix == ".txt":
        base = entry.parent
        lines = [ln.strip() for ln in entry.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return [p if (p := Path(ln)).is_absolute() else (base / p) for ln in lines]
    raise ConfigError(f"validation entry {entry} is neither a folder of images nor a .txt list of images")


def open_val_set(data_yaml: Path, *, classes: Sequence[str]) -> ValSet:
    import yaml

    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        raise ConfigError(
            f"--tune-on {data_yaml} does not exist; pass the data.yaml of a `loomsight dataset`"
        )
    try:
        doc = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{data_yaml} is not valid YAML ({exc})") from None
    if not isinstance(doc, dict) or "val" not in doc or "names" not in doc:
        raise ConfigError(f"{data_yaml} must name 'val' images and class 'names' (an ultralytics data.yaml)")
    names = _names(doc["names"], data_yaml)
    if names != list(classes):
        raise ConfigError(
            f"{data_yaml} has classes {names} but the model has {list(classes)}; tune on the model's own dataset"
        )
    root = Path(doc.get("path") or data_yaml.parent)
    if not root.is_absolute():
        root = data_yaml.parent / root
    entries = doc["val"] if isinstance(doc["val"], list) else [doc["val"]]
    files: list[Path] = []
    for e in entries:
        p = Path(str(e))
        files += _images_in(p if p.is_absolute() else root / p)
    if not files:
        raise ConfigError(f"{data_yaml}: the validation split {doc['val']!r} holds no images")
    return ValSet(data_yaml=data_yaml, files=files, names=names)


def label_path(image: Path) -> Path:
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_tile(path: Path, *, size_px: int, color: str) -> np.ndarray:
    flag = cv2.IMREAD_GRAYSCALE if color == "gray" else cv2.IMREAD_COLOR
    img = cv2.imread(str(path), flag)
    if img is None:
        raise ConfigError(f"cannot read image {path}")
    if color == "rgb":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    if (h, w) != (size_px, size_px):
        if h != w:
            raise ConfigError(f"{path} is {w}x{h} px; validation tiles must be square tiles of {size_px} px")
        img = cv2.resize(img, (size_px, size_px), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


def read_labels(path: Path, *, size_px: int, num_classes: int) -> TileLabels:
    lp = label_path(path)
    rows: list[list[float]] = []
    if lp.is_file():
        for n, line in enumerate(lp.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                vals = [float(v) for v in line.split()[:5]]
            except ValueError:
                raise ConfigError(f"{lp}:{n}: not a YOLO label line: {line!r}") from None
            if len(vals) != 5 or not 0 <= int(vals[0]) < num_classes:
                raise ConfigError(
                    f"{lp}:{n}: expected 'class cx cy w h' with class < {num_classes}: {line!r}"
                )
            rows.append(vals)
    a = np.asarray(rows, np.float64).reshape(-1, 5)
    cx, cy, w, h = (a[:, i] * size_px for i in range(1, 5))
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    return TileLabels(xyxy=xyxy.reshape(-1, 4), class_id=a[:, 0].astype(np.int32))


def iter_batches(
    val: ValSet, *, size_px: int, color: str, batch: int, limit: int | None = None
) -> Iterator[tuple[np.ndarray, list[TileLabels]]]:
    files = val.files[:limit] if limit else val.files
    for i in range(0, len(files), batch):
        chunk = files[i : i + batch]
        tiles = np.stack([read_tile(p, size_px=size_px, color=color) for p in chunk])
        labels = [read_labels(p, size_px=size_px, num_classes=len(val.names)) for p in chunk]
        yield tiles, labels


def texture_tiles(n: int, *, size_px: int, color: str = "gray", seed: int = 0) -> np.ndarray:
    """Woven-looking uint8 tiles (warp/weft stripes, yarn noise, some with a dark or bright blob)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size_px, 0:size_px].astype(np.float32)
    tiles = []
    for i in range(n):
        pitch_x, pitch_y = rng.uniform(3, 8, size=2)
        base = rng.uniform(90, 170)
        img = base + 25 * np.sin(2 * np.pi * xx / pitch_x) * np.sin(2 * np.pi * yy / pitch_y)
        img += rng.normal(0, 8, img.shape)
        if i % 2 == 1:
            cx, cy = rng.uniform(0.2, 0.8, size=2) * size_px
            r = rng.uniform(0.05, 0.2) * size_px
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
            img += (-90 if i % 4 == 1 else 70) * blob
        tile = np.clip(img, 0, 255).astype(np.uint8)
        tiles.append(np.repeat(tile[..., None], 3, axis=2) if color == "rgb" else tile)
    return np.stack(tiles)
