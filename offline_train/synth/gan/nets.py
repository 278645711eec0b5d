"""The networks: stage 1 `DefectGenerator`, stage 2 `FusionNet`, and the `Critic` of both stages.

All work on patches of `patch_px` (a power of two, 16..256) in [-1, 1], three colour channels (gray
fabric is three equal channels), with small residual blocks and no normalization layer: each block
is `x + conv(lrelu(conv(lrelu(x))))` with the second convolution zero-initialised (the block starts
as the identity, as in R3GAN's fix-up style initialisation). Channel widths grow as resolution falls:
`channels(res) = min(max_channels, base_channels * patch_px / res)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from offline_train.synth.base import MASK_DILATION_PX

IMAGE_CHANNELS = 3
LRELU_SLOPE = 0.2


def check_patch_px(patch_px: int) -> int:
    if patch_px < 16 or patch_px > 256 or patch_px & (patch_px - 1):
        raise ValueError(f"patch_px must be a power of two in 16..256, got {patch_px}")
    return patch_px


def channels_at(res: int, patch_px: int, base: int, top: int) -> int:
    return int(min(top, base * patch_px // res))


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


class ResBlock(nn.Module):
    """`x + conv2(lrelu(conv1(lrelu(x))))`, conv2 zero-initialised; optional FiLM conditioning."""

    def __init__(self, ch: int, cond_dim: int = 0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)  # type: ignore[arg-type]
        self.film = nn.Linear(cond_dim, 2 * ch) if cond_dim else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = x
        if self.film is not None and cond is not None:
            scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
            h = h * (1.0 + scale) + shift
        return x + self.conv2(_lrelu(self.conv1(_lrelu(h))))


class DefectGenerator(nn.Module):
    """Stage 1: (z, class index, texture code) -> (patch image in [-1, 1], mask logits)."""

    def __init__(
        self,
        n_classes: int,
        code_width: int,
        *,
        z_dim: int = 64,
        patch_px: int = 64,
        base_channels: int = 16,
        max_channels: int = 128,
        embed_dim: int = 32,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        check_patch_px(patch_px)
        self.z_dim, self.patch_px = z_dim, patch_px
        self.embed = nn.Embedding(n_classes, embed_dim)
        self.mapping = nn.Sequential(
            nn.Linear(z_dim + embed_dim + code_width, hidden),
            nn.LeakyReLU(LRELU_SLOPE),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(LRELU_SLOPE),
        )
        c4 = channels_at(4, patch_px, base_channels, max_channels)
        self.fc = nn.Linear(hidden, c4 * 16)
        self.c4 = c4
        self.blocks = nn.ModuleList()
        self.ups = nn.ModuleList()
        res, c = 4, c4
        self.blocks.append(ResBlock(c, hidden))
        while res < patch_px:
            res *= 2
            c_next = channels_at(res, patch_px, base_channels, max_channels)
            self.ups.append(nn.Conv2d(c, c_next, 3, padding=1))
            self.blocks.append(ResBlock(c_next, hidden))
            c = c_next
        self.to_image = nn.Conv2d(c, IMAGE_CHANNELS, 3, padding=1)
        self.to_mask = nn.Conv2d(c, 1, 3, padding=1)

    def forward(
        self, z: torch.Tensor, cls: torch.Tensor, code: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.mapping(torch.cat([z, self.embed(cls), code], dim=1))
        h = self.fc(w).view(-1, self.c4, 4, 4)
        h = self.blocks[0](h, w)
        for up, block in zip(self.ups, self.blocks[1:], strict=True):
            h = _lrelu(up(F.interpolate(h, scale_factor=2.0, mode="nearest")))
            h = block(h, w)
        h = _lrelu(h)
        return torch.tanh(self.to_image(h)), self.to_mask(h)


class Critic(nn.Module):
    """A residual critic on `in_channels` x patch_px^2 (image + mask channel), optionally conditioned
    by projection on a class (embedding . features) and a texture code (linear(code) . features)."""

    def __init__(
        self,
        in_channels: int,
        *,
        patch_px: int = 64,
        n_classes: int = 0,
        code_width: int = 0,
        base_channels: int = 16,
        max_channels: int = 128,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        check_patch_px(patch_px)
        c = channels_at(patch_px, patch_px, base_channels, max_channels)
        self.stem = nn.Conv2d(in_channels, c, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        res = patch_px
        while res > 4:
            res //= 2
            c_next = channels_at(res, patch_px, base_channels, max_channels)
            self.blocks.append(ResBlock(c))
            self.downs.append(nn.Conv2d(c, c_next, 3, padding=1))
            c = c_next
        self.head = nn.Linear(c * 16, hidden)
        self.out = nn.Linear(hidden, 1)
        self.class_embed = nn.Embedding(n_classes, hidden) if n_classes else None
        self.code_proj = nn.Linear(code_width, hidden, bias=False) if code_width else None

    def forward(
        self, x: torch.Tensor, cls: torch.Tensor | None = None, code: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.stem(x)
        for block, down in zip(self.blocks, self.downs, strict=True):
            h = _lrelu(down(F.avg_pool2d(block(h), 2)))
        feat = _lrelu(self.head(h.flatten(1)))
        score = self.out(feat).squeeze(1)
        if self.class_embed is not None and cls is not None:
            score = score + (self.class_embed(cls) * feat).sum(1) / math.sqrt(feat.shape[1])
        if self.code_proj is not None and code is not None:
            score = score + (self.code_proj(code) * feat).sum(1) / math.sqrt(feat.shape[1])
        return score


class FusionNet(nn.Module):
    """Stage 2 T: (pasted patch in [-1, 1], mask channel in [-1, 1]) -> fused patch; a small U-Net
    whose output is `input + residual` (the residual head starts at zero: T starts as the identity)."""

    def __init__(self, *, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(IMAGE_CHANNELS + 1, width, 3, padding=1)
        self.enc = ResBlock(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid = nn.ModuleList([ResBlock(2 * width), ResBlock(2 * width)])
        self.up = nn.Conv2d(2 * width, width, 3, padding=1)
        self.merge = nn.Conv2d(2 * width, width, 3, padding=1)
        self.dec = ResBlock(width)
        self.out = nn.Conv2d(width, IMAGE_CHANNELS, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)  # type: ignore[arg-type]

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image, mask], dim=1)
        skip = self.enc(_lrelu(self.stem(x)))
        h = _lrelu(self.down(skip))
        for block in self.mid:
            h = block(h)
        h = _lrelu(self.up(F.interpolate(h, size=skip.shape[-2:], mode="nearest")))
        h = self.dec(_lrelu(self.merge(torch.cat([h, skip], dim=1))))
        return torch.clamp(image + self.out(_lrelu(h)), -1.0, 1.0)


def dilate_mask(mask: torch.Tensor, radius_px: int = MASK_DILATION_PX) -> torch.Tensor:
    """A Bx1xHxW {0, 1} mask grown by `radius_px` (square element: chessboard distance, as base.dilate)."""
    if radius_px <= 0:
        return mask
    return F.max_pool2d(mask, 2 * radius_px + 1, stride=1, padding=radius_px)


def paste(defect: torch.Tensor, soft_mask: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """The generated defect laid on the fabric: `m * defect + (1 - m) * background`."""
    return soft_mask * defect + (1.0 - soft_mask) * background


def fuse(
    t_net: FusionNet, pasted: torch.Tensor, soft_mask: torch.Tensor, background: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(`M_dil * T(pasted, mask) + (1 - M_dil) * background`, M_dil), M_dil the hard mask
    (soft > 0.5) dilated by MASK_DILATION_PX: pixels outside it are the background's."""
    m_dil = dilate_mask((soft_mask > 0.5).to(soft_mask.dtype))
    fused = t_net(pasted, soft_mask * 2.0 - 1.0)
    return m_dil * fused + (1.0 - m_dil) * background, m_dil
