"""Differentiable augmentation for small data (after DiffAugment, Zhao et al. 2020).

The critic sees every real and every fake batch through the same random policy, so it cannot
memorise a few hundred real defects and the generator still gets gradients through the transform.
Inputs are Bx(C+1)xHxW: image channels followed by the mask channel. Translation and cutout move or
blank image and mask together; brightness only shifts the image channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("translation", "cutout", "brightness")


def parse_policy(text: str) -> tuple[str, ...]:
    """`"translation,cutout,brightness"` -> a tuple; `""` or `"none"` -> ()."""
    if text.strip() in ("", "none"):
        return ()
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in POLICIES]
    if bad:
        raise ValueError(f"augmentation {bad} unknown; choose from {', '.join(POLICIES)} (or 'none')")
    return parts


def brightness(x: torch.Tensor, image_channels: int, gen: torch.Generator | None = None) -> torch.Tensor:
    shift = torch.rand(x.shape[0], 1, 1, 1, generator=gen, device=x.device) - 0.5
    img = x[:, :image_channels] + shift
    return torch.cat([img, x[:, image_channels:]], dim=1)


def translation(x: torch.Tensor, ratio: float = 0.125, gen: torch.Generator | None = None) -> torch.Tensor:
    """Shift each sample by up to `ratio` of its size (zero padding: -1 after the shift, i.e. black)."""
    b, _, h, w = x.shape
    sh, sw = max(1, int(h * ratio)), max(1, int(w * ratio))
    dy = torch.randint(-sh, sh + 1, (b,), generator=gen, device=x.device)
    dx = torch.randint(-sw, sw + 1, (b,), generator=gen, device=x.device)
    gy = (torch.arange(h, device=x.device)[None, :] - dy[:, None]).clamp(-1, h)  # B x H
    gx = (torch.arange(w, device=x.device)[None, :] - dx[:, None]).clamp(-1, w)  # B x W
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    idx_y = (gy + 1)[:, None, :, None].expand(b, x.shape[1], h, w + 2)
    rows = padded.gather(2, idx_y)
    idx_x = (gx + 1)[:, None, None, :].expand(b, x.shape[1], h, w)
    return rows.gather(3, idx_x)


def cutout(x: torch.Tensor, ratio: float = 0.5, gen: torch.Generator | None = None) -> torch.Tensor:
    """Blank (set to 0) one square of `ratio` of the size per sample, at a random position."""
    b, _, h, w = x.shape
    ch, cw = max(1, int(h * ratio)), max(1, int(w * ratio))
    cy = torch.randint(0, h - ch + 1, (b,), generator=gen, device=x.device)
    cx = torch.randint(0, w - cw + 1, (b,), generator=gen, device=x.device)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_y = (ys >= cy[:, None]) & (ys < cy[:, None] + ch)
    in_x = (xs >= cx[:, None]) & (xs < cx[:, None] + cw)
    keep = ~(in_y[:, :, None] & in_x[:, None, :])
    return x * keep[:, None].to(x.dtype)


def augment(
    x: torch.Tensor, policy: tuple[str, ...], image_channels: int, gen: torch.Generator | None = None
) -> torch.Tensor:
    """`x` through each transform of `policy` in order (a differentiable function of `x`)."""
    for name in policy:
        if name == "brightness":
            x = brightness(x, image_channels, gen)
        elif name == "translation":
            x = translation(x, gen=gen)
        elif name == "cutout":
            x = cutout(x, gen=gen)
        else:
            raise ValueError(f"augmentation {name!r} unknown; choose from {', '.join(POLICIES)}")
    return x
