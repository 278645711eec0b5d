"""The dense model's training draws: every class about equally often among defect tiles, clean
tiles their set share, whatever the dataset's imbalance; the loss supervises classes only on
defect cells and thin streaks survive the stride-2 labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")

from offline_train.dense.data import TileRecord, sampling_weights  # noqa: E402
from offline_train.dense.loss import dense_loss, downsample_labels  # noqa: E402

pytestmark = pytest.mark.train


def test_rare_classes_are_drawn_as_often_as_common_ones() -> None:
    p = Path("x.png")
    records = (
        [TileRecord(p, p, frozenset({0})) for _ in range(900)]  # 900 stain tiles
        + [TileRecord(p, p, frozenset({1})) for _ in range(30)]  # 30 knot tiles
        + [TileRecord(p, p, frozenset({2})) for _ in range(70)]
        + [TileRecord(p, p, frozenset()) for _ in range(500)]  # clean
    )
    w = sampling_weights(records, clean_share=0.25)
    assert w.sum() == pytest.approx(1.0)
    share = {c: w[[c in r.classes for r in records]].sum() for c in (0, 1, 2)}
    assert all(s == pytest.approx(0.25, rel=1e-6) for s in share.values())
    assert w[[not r.classes for r in records]].sum() == pytest.approx(0.25)


def test_a_one_pixel_streak_survives_the_stride_2_labels_and_classes_train_only_on_defects() -> None:
    label = torch.zeros(1, 8, 8, dtype=torch.uint8)
    label[0, :, 3] = 3  # a 1-px vertical streak of class 2
    small = downsample_labels(label, 2)
    assert small.shape == (1, 4, 4) and (small[0, :, 1] == 3).all() and int((small > 0).sum()) == 4
    d_logit = torch.full((1, 1, 4, 4), -5.0)
    c_logits = torch.zeros(1, 3, 4, 4, requires_grad=True)
    _, parts = dense_loss(d_logit, c_logits, small)
    assert parts["ce"] == pytest.approx(float(np.log(3)), rel=1e-5)  # uniform over 3 classes, on the 4 cells
    clean = torch.zeros(1, 4, 4, dtype=torch.long)
    _, parts = dense_loss(d_logit, c_logits, clean)
    assert parts["ce"] == 0.0 and parts["dice"] == 0.0
