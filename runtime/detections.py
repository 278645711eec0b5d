"""Detector output in one place: boxes, class ids and scores as parallel numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Detections:
    """N boxes as `xyxy` (float32, N x 4, pixels), `class_id` (int32, N) and `score` (float32, N)."""

    xyxy: np.ndarray
    class_id: np.ndarray
    score: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        if self.xyxy.shape != (n, 4) or self.class_id.shape != (n,) or self.score.shape != (n,):
            raise ValueError(
                f"Detections arrays disagree: xyxy {self.xyxy.shape}, class_id {self.class_id.shape}, "
                f"score {self.score.shape}; expected (N, 4), (N,), (N,)"
            )

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            class_id=np.zeros((0,), np.int32),
            score=np.zeros((0,), np.float32),
        )

    @classmethod
    def concatenate(cls, parts: list[Detections]) -> Detections:
        if not parts:
            return cls.empty()
        return cls(
            xyxy=np.concatenate([p.xyxy for p in parts]).astype(np.float32, copy=False),
            class_id=np.concatenate([p.class_id for p in parts]).astype(np.int32, copy=False),
            score=np.concatenate([p.score for p in parts]).astype(np.float32, copy=False),
        )

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: np.ndarray | slice) -> Detections:
        return Detections(self.xyxy[index], self.class_id[index], self.score[index])
