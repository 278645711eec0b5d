"""Dense loss on exact masks (MemSeg/DRAEM family): focal + dice on the defect channel, and
class cross-entropy only where the mask is a defect (class-balanced)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def downsample_labels(label: torch.Tensor, stride: int) -> torch.Tensor:
    """(N, H, W) uint8/long labels (0 clean, k class k-1) -> (N, H/s, W/s): a cell is a defect if any
    of its pixels is (thin streaks survive); its class is the largest label inside (ties are rare)."""
    if stride == 1:
        return label.long()
    return F.max_pool2d(label[:, None].float(), stride, stride)[:, 0].long()


def focal_loss(
    logit: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.75
) -> torch.Tensor:
    p = torch.sigmoid(logit)
    ce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return (a_t * (1 - p_t) ** gamma * ce).mean()


def dice_loss(logit: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft dice per tile, averaged over the tiles that hold a defect (clean tiles: focal only)."""
    p = torch.sigmoid(logit).flatten(1)
    t = target.flatten(1)
    has = t.sum(1) > 0
    if not bool(has.any()):
        return logit.sum() * 0.0
    inter = (p * t).sum(1)
    dice = 1 - (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)
    return dice[has].mean()


def dense_loss(
    defect_logit: torch.Tensor,
    class_logits: torch.Tensor,
    label: torch.Tensor,
    *,
    class_weights: torch.Tensor | None = None,
    focal_weight: float = 10.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """`label` (N, h, w) at the logits' resolution. Returns the loss and its parts."""
    target = (label > 0).float()
    d = defect_logit[:, 0]
    focal = focal_loss(d, target) * focal_weight
    dice = dice_loss(d, target)
    fg = label > 0
    if bool(fg.any()):
        logits = class_logits.permute(0, 2, 3, 1)[fg]
        ce = F.cross_entropy(logits, label[fg] - 1, weight=class_weights)
    else:
        ce = class_logits.sum() * 0.0
    total = focal + dice + ce
    return total, {"focal": focal.item(), "dice": dice.item(), "ce": ce.item()}
