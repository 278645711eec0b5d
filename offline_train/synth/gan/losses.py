"""GAN losses: R3GAN's relativistic pairing loss with zero-centred R1/R2 penalties, or classic BCE.

Relativistic pairing (RpGAN, as R3GAN uses it): each real sample is paired with a fake one and the
critic is asked that the real outscore the fake,

    L_D = E[ softplus(-(D(x_real) - D(x_fake))) ],   L_G = E[ softplus(-(D(x_fake) - D(x_real))) ],

regularised by zero-centred gradient penalties on both sides,

    R1 = gamma / 2 * E[ ||grad_x D(x_real)||^2 ],    R2 = gamma / 2 * E[ ||grad_x D(x_fake)||^2 ],

with gamma decayed over training (`gamma_at`). The classic non-saturating loss is `L_D = softplus(-D(real))
+ softplus(D(fake))`, `L_G = softplus(-D(fake))`, with the same penalties.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

LOSSES = ("rpgan", "bce")
GAMMA_SCHEDULES = ("cosine", "linear", "constant")


def d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor, kind: str = "rpgan") -> torch.Tensor:
    """The critic's loss (mean over the batch)."""
    if kind == "rpgan":
        return F.softplus(-(real_scores - fake_scores)).mean()
    if kind == "bce":
        return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()
    raise ValueError(f"GAN loss {kind!r} is not one of {LOSSES}")


def g_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor, kind: str = "rpgan") -> torch.Tensor:
    """The generator's loss (mean over the batch); `real_scores` matter only for `rpgan`."""
    if kind == "rpgan":
        return F.softplus(-(fake_scores - real_scores)).mean()
    if kind == "bce":
        return F.softplus(-fake_scores).mean()
    raise ValueError(f"GAN loss {kind!r} is not one of {LOSSES}")


def gradient_penalty(scores: torch.Tensor, inputs: Sequence[torch.Tensor], gamma: float) -> torch.Tensor:
    """Zero-centred penalty per sample: gamma / 2 * ||d scores_i / d inputs_i||^2 (summed over every
    tensor of `inputs`, which must require grad and have produced `scores`). R1 on reals, R2 on fakes."""
    grads = torch.autograd.grad(scores.sum(), list(inputs), create_graph=True)
    sq = sum(g.pow(2).flatten(1).sum(1) for g in grads)
    assert isinstance(sq, torch.Tensor)
    return 0.5 * gamma * sq


def gamma_at(step: int, total: int, start: float, end: float, schedule: str = "cosine") -> float:
    """gamma at `step` of `total`: cosine or linear from `start` to `end`, or `start` throughout."""
    if schedule not in GAMMA_SCHEDULES:
        raise ValueError(f"gamma schedule {schedule!r} is not one of {GAMMA_SCHEDULES}")
    if schedule == "constant" or total <= 1:
        return start
    t = min(1.0, max(0.0, step / (total - 1)))
    if schedule == "linear":
        return start + (end - start) * t
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
