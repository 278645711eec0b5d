"""Tensor <-> uint8 conversions and the sample grids training writes.

Patches are N x H x W x 3 uint8 RGB on the numpy side and N x 3 x H x W float in [-1, 1] on the
torch side; the texture encoder takes [0, 1] (`unit`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from offline_train.synth.gan.nets import fuse, paste

if TYPE_CHECKING:
    from offline_train.synth.gan.checkpoint import GanModels
    from offline_train.synth.gan.data import GanData

GRID_SEED = 12345


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """N x H x W x 3 uint8 -> N x 3 x H x W float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """N x C x H x W in [-1, 1] -> N x H x W x C uint8 (rounded, clipped)."""
    arr = ((x.detach().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (what the texture encoder takes)."""
    return x * 0.5 + 0.5


def grid_image(rows: list[torch.Tensor], patch_px: int, gap: int = 2) -> np.ndarray:
    """Rows of N x 3 x P x P patches in [-1, 1] as one RGB uint8 grid (small patches enlarged to
    about 128 px, nearest neighbour, so single yarns stay visible)."""
    p, columns = patch_px, rows[0].shape[0]
    scale = max(1, 128 // p)
    cell = p * scale + gap
    grid = np.full((len(rows) * cell, columns * cell, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(to_uint8(row)):
            grid[r * cell : r * cell + p * scale, c * cell : c * cell + p * scale] = np.kron(
                tile, np.ones((scale, scale, 1), np.uint8)
            )
    return grid


@torch.no_grad()
def sample_grid(
    models: GanModels, data: GanData, codes: torch.Tensor, stage: str, columns: int = 8
) -> np.ndarray:
    """Stage 1 rows: real defect / its mask / G1's defect for the same class and fabric code / its
    mask. Stage 2 rows: clean fabric / G1's defect pasted / fused by T / hard mask. Fixed seeds,
    so grids compare across steps."""
    gen = np.random.default_rng(GRID_SEED)
    idx = data.sample(gen, columns)
    z = torch.randn(columns, models.cfg.z_dim, generator=torch.Generator().manual_seed(GRID_SEED))
    if stage == "1":
        cls = torch.from_numpy(data.labels[idx])
        f_img, f_logit = models.g1(z, cls, codes[idx])
        real_mask = torch.from_numpy(data.masks[idx]).float()[:, None] * 2 - 1
        rows = [to_tensor(data.images[idx]), real_mask.expand(-1, 3, -1, -1),
                f_img, (torch.sigmoid(f_logit) * 2 - 1).expand(-1, 3, -1, -1)]  # fmt: skip
    else:
        background = to_tensor(data.clean_patches(gen, columns))
        cls = torch.from_numpy(gen.integers(len(models.cfg.classes), size=columns))
        f_img, f_logit = models.g1(z, cls, models.encoder(unit(background)))
        soft = torch.sigmoid(f_logit)
        pasted = paste(f_img, soft, background)
        fused, _ = fuse(models.t, pasted, soft, background)
        hard = (soft > 0.5).float() * 2 - 1
        rows = [background, pasted, fused, hard.expand(-1, 3, -1, -1)]
    return grid_image(rows, models.cfg.patch_px)


def write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
