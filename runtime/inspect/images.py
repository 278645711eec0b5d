"""Run images through the daemon path, one roll per image: events as JSON, overlays as pictures.

Each image (area-scan photo, line-scan strip or tall web) is fed to a `Daemon` as its own roll,
in blocks of lines, with the bundle's detector opened once for all of them. Events are collected
in process (no sockets, no spool: nothing to collide with between runs) and each defect names its
source file and the frame (image) index. Scale is never assumed: the camera's mm per pixel is
given, and a warning says when it is far from the model's.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from runtime.config import LoomsightConfig, parse_config
from runtime.errors import ConfigError
from runtime.frame import Frame
from runtime.sources.base import SourceStatus

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
FAR_FROM_MODEL = 4.0  # resampling by more than this either way is flagged


def image_files(paths: Iterable[Path]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted); nothing found is an error."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"{p} does not exist; give image files or folders of images")
    if not out:
        raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return out


def read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ConfigError(f"{path} is not an image OpenCV can read")
    if img.dtype == np.uint16:
        img = (np.asarray(img, np.uint16) >> 8).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.dtype != np.uint8:
        raise ConfigError(f"{path}: pixels are {img.dtype}; give 8- or 16-bit images")
    return np.ascontiguousarray(img)


class ImageSource:
    """One image as one roll's web, in blocks of lines (the daemon's frame-source interface)."""

    def __init__(self, pixels: np.ndarray, name: str, block_lines: int = 512) -> None:
        self.pixels, self.name, self.block = pixels, name, block_lines
        self.y = self.seq = 0

    live = False  # frames as fast as they are read: the pipeline waits for the inspector
    advance_lines_per_frame = None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    @property
    def finished(self) -> bool:
        return self.y >= len(self.pixels)

    def status(self) -> SourceStatus:
        return SourceStatus(
            state="finished" if self.finished else "running", frames=self.seq, source=self.name
        )

    def read(self, *, timeout_s: float) -> Frame | None:
        if self.finished:
            return None
        block = np.ascontiguousarray(self.pixels[self.y : self.y + self.block])
        frame = Frame(block, self.seq, time.time_ns(), self.y, self.name)
        self.seq += 1
        self.y += len(block)
        return frame


@dataclass
class EventCollector:
    """The publisher interface the daemon uses, keeping events in memory."""

    events: list[dict[str, Any]] = field(default_factory=list)
    crops: dict[int, bytes] = field(default_factory=dict)

    def start(self) -> None:
        pass

    def publish(
        self, kind: str, fields: dict[str, Any], *, roll_id: str, crop_jpeg: bytes | None = None
    ) -> int:
        seq = len(self.events) + 1
        self.events.append({"seq": seq, "kind": kind, "roll_id": roll_id, **fields})
        if crop_jpeg:
            self.crops[seq] = crop_jpeg
        return seq

    def set_heartbeat_fields(self, fields: dict[str, Any]) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"events": len(self.events)}

    def close(self, timeout_s: float = 0.0) -> None:
        pass


def _colour(class_name: str) -> tuple[int, int, int]:
    hsv = np.array([[[sum(map(ord, class_name)) * 47 % 180, 230, 255]]], np.uint8)
    b, g, r = np.asarray(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))[0, 0]
    return int(b), int(g), int(r)


def draw_overlay(pixels: np.ndarray, defects: list[dict[str, Any]]) -> np.ndarray:
    img = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR) if pixels.ndim == 2 else pixels.copy()
    thick = max(1, round(max(img.shape[:2]) / 800))
    for d in defects:
        x0, y0, x1, y1 = (round(v) for v in d["bbox_px"])
        c = _colour(d["class"])
        cv2.rectangle(img, (x0, y0), (max(x1, x0 + 1), max(y1, y0 + 1)), c, thick)
        label = f"{d['class']} {d.get('score', 0):.2f}"
        cv2.putText(img, label, (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, c, thick)
    return img


def image_run_config(
    bundle: Path, *, mm_per_px: float, mm_per_line: float, thresholds: dict[str, float] | None = None,
    batch_size: int = 8, line_id: str = "inspect",
) -> LoomsightConfig:  # fmt: skip
    """The daemon config for running images through the daemon path in process: the bundle, the
    images' scale, no replay server; the source is replaced by an `ImageSource` per image."""
    return parse_config(
        {
            "line_id": line_id,
            "source": {"kind": "synthetic", "synthetic": {"realtime": False}},  # replaced by each image
            "model": {"bundle": str(bundle), "batch_size": batch_size, "retry_load_s": 0,
                      "thresholds": thresholds or {}},
            "calibration": {"mm_per_px_x": mm_per_px, "mm_per_line": mm_per_line},
            "publish": {"replay_endpoint": None},
        }
    )  # fmt: skip


def inspect_images(
    paths: list[Path], *, bundle: Path, out: Path, mm_per_px: float, mm_per_line: float | None = None,
    thresholds: dict[str, float] | None = None, batch_size: int = 8,
) -> dict[str, Any]:  # fmt: skip
    """Inspect every image; write OUT/events.jsonl, OUT/<stem>.overlay.jpg, OUT/summary.json."""
    from runtime.daemon.app import Daemon
    from runtime.detect.bundle import open_detector

    files = image_files(paths)
    if mm_per_px <= 0 or (mm_per_line is not None and mm_per_line <= 0):
        raise ConfigError(f"--mm-per-px {mm_per_px} / --mm-per-line {mm_per_line} must be > 0")
    along = mm_per_line or mm_per_px
    config = image_run_config(bundle, mm_per_px=mm_per_px, mm_per_line=along, thresholds=thresholds,
                              batch_size=batch_size)  # fmt: skip
    detector = open_detector(config.model)
    model_mm = detector.manifest.mm_per_px
    for name, mm in (("--mm-per-px", mm_per_px), ("--mm-per-line", along)):
        if not 1 / FAR_FROM_MODEL <= model_mm / mm <= FAR_FROM_MODEL:
            log.warning(
                "%s %g is %.1fx from the model's %g mm/px: images are resampled that much and defects change "
                "size with it; check the camera's scale (`loomsight calib scale`)", name, mm, model_mm / mm, model_mm,
            )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"bundle": str(bundle), "model": detector.manifest.name, "mm_per_px": mm_per_px,
                               "mm_per_line": along, "images": []}  # fmt: skip
    totals: Counter[str] = Counter()
    with (out / "events.jsonl").open("w", encoding="utf-8") as fh:
        for index, path in enumerate(files):
            pixels = read_image(path)
            collector = EventCollector()
            roll = f"{index:04d}-{path.stem}"
            Daemon(config, source=ImageSource(pixels, path.name), detector=detector, publisher=collector,
                   roll_id=roll).run()  # fmt: skip
            defects = []
            for e in collector.events:
                e["source_file"], e["frame_index"] = str(path), index
                fh.write(json.dumps(e) + "\n")
                if e["kind"] == "defect":
                    defects.append(e)
            overlay = out / f"{index:04d}-{path.stem}.overlay.jpg"
            cv2.imwrite(str(overlay), draw_overlay(pixels, defects))
            by_class = Counter(d["class"] for d in defects)
            totals.update(by_class)
            summary["images"].append({"file": str(path), "frame_index": index, "size_px": list(pixels.shape[:2]),
                                      "defects": len(defects), "by_class": dict(by_class),
                                      "overlay": overlay.name})  # fmt: skip
            log.info("%s: %d defects %s", path.name, len(defects), dict(by_class))
    detector.close()
    summary["defects_by_class"] = dict(totals)
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
