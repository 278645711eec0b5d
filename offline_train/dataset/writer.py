"""Write tiles and labels as an ultralytics (YOLO) dataset and a COCO JSON, with a content hash.

Beside the boxes, every tile gets its exact label mask (`masks/<split>/<name>.png`, uint8: 0 is
defect-free, k is class k - 1) for dense models trained on every pixel.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from offline_train.dataset.labels import Box

SPLITS = ("train", "val")


class DatasetWriter:
    """Accumulates tiles per split; `finish` writes data.yaml and annotations_<split>.json."""

    def __init__(self, out_dir: Path, classes: Sequence[str]) -> None:
        self.out_dir = Path(out_dir)
        self.classes = list(classes)
        self._coco: dict[str, dict[str, list[dict[str, Any]]]] = {
            s: {"images": [], "annotations": []} for s in SPLITS
        }
        self._digest = hashlib.sha256()
        self.tiles: Counter[str] = Counter()
        self.boxes_per_class: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
        for split in SPLITS:
            (self.out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
            (self.out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
            (self.out_dir / "masks" / split).mkdir(parents=True, exist_ok=True)

    def add(
        self, split: str, name: str, image: np.ndarray, boxes: list[Box], label_mask: np.ndarray | None = None
    ) -> None:
        """One tile; `label_mask` (uint8, tile-sized, 0 = clean, k = class k - 1) defaults to all clean."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        h, w = image.shape[:2]
        if label_mask is None:
            label_mask = np.zeros((h, w), np.uint8)
        if label_mask.shape != (h, w) or label_mask.dtype != np.uint8:
            raise ValueError(
                f"label mask of {name} is {label_mask.dtype} {label_mask.shape}; expected uint8 {(h, w)}"
            )
        ok, mask_png = cv2.imencode(".png", label_mask)
        if not ok:
            raise OSError(f"could not encode the label mask of {name} as PNG")
        (self.out_dir / "masks" / split / f"{name}.png").write_bytes(mask_png.tobytes())
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise OSError(f"could not encode tile {name} as PNG")
        data = png.tobytes()
        (self.out_dir / "images" / split / f"{name}.png").write_bytes(data)
        label_text = "".join(b.yolo_line(w, h) + "\n" for b in boxes)
        (self.out_dir / "labels" / split / f"{name}.txt").write_text(label_text, encoding="utf-8")
        self._digest.update(name.encode())
        self._digest.update(hashlib.sha256(data).digest())
        self._digest.update(label_text.encode())
        self._digest.update(hashlib.sha256(mask_png.tobytes()).digest())
        coco = self._coco[split]
        image_id = len(coco["images"]) + 1
        coco["images"].append(
            {"id": image_id, "file_name": f"images/{split}/{name}.png", "width": w, "height": h}
        )
        for b in boxes:
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": b.class_id,
                    "bbox": [b.x0, b.y0, b.w, b.h],
                    "area": b.w * b.h,
                    "iscrowd": 0,
                }
            )
            self.boxes_per_class[split][self.classes[b.class_id]] += 1
        self.tiles[split] += 1

    @property
    def content_hash(self) -> str:
        return self._digest.hexdigest()

    def finish(self) -> Path:
        """Write data.yaml (for ultralytics) and the COCO files; return the data.yaml path."""
        categories = [{"id": i, "name": c} for i, c in enumerate(self.classes)]
        for split in SPLITS:
            doc = {**self._coco[split], "categories": categories}
            (self.out_dir / f"annotations_{split}.json").write_text(json.dumps(doc), encoding="utf-8")
        names = "\n".join(f"  {i}: {c}" for i, c in enumerate(self.classes))
        data_yaml = self.out_dir / "data.yaml"
        data_yaml.write_text(
            f"# written by loomsight dataset\npath: {self.out_dir.resolve()}\ntrain: images/train\n"
            f"val: images/val\nnames:\n{names}\n",
            encoding="utf-8",
        )
        return data_yaml
