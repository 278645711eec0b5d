"""A realism proxy that needs no downloaded network: can a small CNN tell synthetic defects from real ones?

For each synthesizer family, crops (48 x 48 px at the model's 0.4 mm/px, centred on the defect) of
(real) the simulator's rendered defects on the held-out fabrics and (synthetic) that family's
defects placed on the same fabrics' clean tiles are split by fabric-independent halves; a small
CNN is trained from scratch on one half and tested on the other. Test accuracy near 50 % means the
classifier cannot tell them apart (more realistic); near 100 % means the synthetic defects are easy
to spot. Used by `scripts/adapt_experiment.py report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CROP = 48


def _crop(img: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    cy, cx = int(ys.mean()), int(xs.mean())
    y0 = int(np.clip(cy - CROP // 2, 0, img.shape[0] - CROP))
    x0 = int(np.clip(cx - CROP // 2, 0, img.shape[1] - CROP))
    return img[y0 : y0 + CROP, x0 : x0 + CROP]


def real_crops(fabric_seeds: Sequence[int], per_fabric: int = 40) -> list[np.ndarray]:
    """Crops of the simulator's own defects on each fabric, at the model's resolution."""
    from runtime.preprocess import resample_mask, resample_to_model, to_gray
    from runtime.sim.fabric import get_fabric
    from runtime.sim.loom import render_web

    out: list[np.ndarray] = []
    for fs in fabric_seeds:
        px, labels, truth = render_web(get_fabric(f"random:{fs}"), length_m=3.0, width_px=2048, mm_per_px=0.1,
                                       mm_per_line=0.1, seed=8000 + fs, defects_per_m=15, with_masks=True)  # fmt: skip
        small = resample_to_model(to_gray(px), 0.25, 0.25)
        for t in truth[:per_fabric]:
            m = resample_mask(np.asarray(labels == t.defect_id), 0.25, 0.25)
            c = _crop(small, m)
            if c is not None and c.shape == (CROP, CROP):
                out.append(c)
    return out


def synthetic_crops(synth: Any, tiles: Sequence[np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for _ in range(n * 4):
        if len(out) >= n:
            break
        tile = tiles[int(rng.integers(len(tiles)))]
        r = synth(np.ascontiguousarray(tile), rng)
        if r is None:
            continue
        c = _crop(r.image if r.image.ndim == 2 else r.image.mean(axis=2).astype(np.uint8), r.mask)
        if c is not None and c.shape == (CROP, CROP):
            out.append(c)
    return out


def classifier_accuracy(
    real: list[np.ndarray], fake: list[np.ndarray], *, steps: int = 300, seed: int = 0
) -> float:
    """Held-out accuracy of a small from-scratch CNN telling `real` from `fake` (balanced)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    n = min(len(real), len(fake))
    rng = np.random.default_rng(seed)
    x = np.stack([*rng.permutation(np.stack(real))[:n], *rng.permutation(np.stack(fake))[:n]]).astype(
        np.float32
    )
    y = np.array([0] * n + [1] * n, np.int64)
    order = rng.permutation(2 * n)
    x, y = x[order] / 255.0, y[order]
    half = n  # train on one half, test on the other
    xt, yt = torch.from_numpy(x[:half, None]), torch.from_numpy(y[:half])
    xv, yv = torch.from_numpy(x[half:, None]), torch.from_numpy(y[half:])
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2),
    )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = torch.randint(0, half, (32,))
        xb = xt[idx]
        xb = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, xb.flip(3), xb)
        loss = nn.functional.cross_entropy(net(xb), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((net(xv).argmax(1) == yv).float().mean())
