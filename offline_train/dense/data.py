"""Tiles and exact label masks of a `loomsight dataset` folder, sampled so rare classes are seen.

A tile's sampling weight is that of the rarest class it holds (1 / the number of tiles holding
that class), so every class is drawn about equally often among defect tiles; defect-free tiles
together get `clean_share` of the draws. Flips in both axes and a brightness/contrast jitter are
the only augmentations: a rotation would turn a broken end into a broken pick.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from runtime.errors import ConfigError


@dataclass(frozen=True)
class TileRecord:
    image: Path
    mask: Path
    classes: frozenset[int]


def list_split(dataset: Path, split: str) -> list[TileRecord]:
    """The tiles of one split, with the classes each holds (read from the YOLO label files)."""
    images = sorted((dataset / "images" / split).glob("*.png"))
    if not images:
        raise ConfigError(
            f"{dataset}/images/{split} holds no tiles; build the dataset with `loomsight dataset`"
        )
    masks_dir = dataset / "masks" / split
    if not masks_dir.is_dir():
        raise ConfigError(
            f"{dataset} has no masks/{split}: it was built before datasets carried label masks; "
            "rebuild it with `loomsight dataset` (a dense model trains on the masks)"
        )
    records = []
    for img in images:
        label = dataset / "labels" / split / f"{img.stem}.txt"
        classes = (
            frozenset(int(line.split()[0]) for line in label.read_text().splitlines() if line.strip())
            if label.is_file()
            else frozenset()
        )
        mask = masks_dir / img.name
        if not mask.is_file():
            raise ConfigError(f"{img} has no label mask {mask}; rebuild the dataset with `loomsight dataset`")
        records.append(TileRecord(img, mask, classes))
    return records


def sampling_weights(records: list[TileRecord], clean_share: float = 0.25) -> np.ndarray:
    per_class: Counter[int] = Counter(c for r in records for c in r.classes)
    n_clean = sum(1 for r in records if not r.classes)
    w = np.zeros(len(records), np.float64)
    for i, r in enumerate(records):
        if r.classes:
            w[i] = max(1.0 / per_class[c] for c in r.classes)
    defect_total = w.sum()
    if defect_total > 0:
        w *= (1.0 - clean_share) / defect_total
    if n_clean:
        clean = np.array([not r.classes for r in records])
        w[clean] = (clean_share if defect_total > 0 else 1.0) / n_clean
    return w / w.sum()


def class_pixel_weights(records: list[TileRecord], num_classes: int, sample: int = 400) -> np.ndarray:
    """Cross-entropy weights ~ 1/sqrt(pixel share) per class, from a sample of masks (mean 1)."""
    rng = np.random.default_rng(0)
    idx = rng.choice(len(records), size=min(sample, len(records)), replace=False)
    counts = np.ones(num_classes, np.float64)
    for i in idx:
        m = cv2.imread(str(records[i].mask), cv2.IMREAD_UNCHANGED)
        if m is not None:
            counts += np.bincount(m.ravel(), minlength=num_classes + 1)[1 : num_classes + 1]
    w = 1.0 / np.sqrt(counts / counts.sum())
    return (w / w.mean()).astype(np.float32)


class TileMaskDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, records: list[TileRecord], *, channels: int, augment: bool, seed: int = 0) -> None:
        self.records = records
        self.channels = channels
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.records[i]
        flag = cv2.IMREAD_GRAYSCALE if self.channels == 1 else cv2.IMREAD_COLOR
        img = cv2.imread(str(r.image), flag)
        mask = cv2.imread(str(r.mask), cv2.IMREAD_UNCHANGED)
        if img is None or mask is None:
            raise ConfigError(f"cannot read tile {r.image} or its mask {r.mask}: the dataset is damaged")
        if self.channels == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        x = img.astype(np.float32) / 255.0
        if self.augment:
            if self.rng.random() < 0.5:
                x, mask = x[:, ::-1], mask[:, ::-1]
            if self.rng.random() < 0.5:
                x, mask = x[::-1], mask[::-1]
            gain = float(self.rng.uniform(0.75, 1.25))
            x = np.clip((x - x.mean()) * gain + x.mean() + float(self.rng.uniform(-0.1, 0.1)), 0.0, 1.0)
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(
            np.ascontiguousarray(mask, np.uint8)
        )
