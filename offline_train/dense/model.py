"""DenseDefectNet: a small fully convolutional encoder-decoder for defect masks.

The encoder is layer for layer the backbone of `offline_train/configs/loomsight-s.yaml` (ultralytics
Conv and C2f blocks: P1/2 ... P5/32), so its weights can start an RT-DETR of that config
(`loomsight train --backbone-from`). A feature pyramid brings P5..P2 back to stride 2, with strip
pooling (a row and a column mean over the tile) on P3 so a yarn-long streak sees its whole length.
Two heads at stride 2: one class-agnostic "defect" logit and one logit per class.

The exported graph returns probabilities, (N, 1 + C, H/2, W/2): channel 0 is P(defect) (sigmoid),
channels 1..C are P(class | defect) (softmax over the classes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from ultralytics.nn.modules import C2f, Conv

OUTPUT_STRIDE_PX = 2
# (layer, in, out, repeats) of the loomsight-s backbone: Conv k3 s2 or C2f(shortcut=True)
_BACKBONE: list[tuple[str, int, int, int]] = [
    ("conv", -1, 16, 1),  # 0 P1/2
    ("conv", 16, 32, 1),  # 1 P2/4
    ("c2f", 32, 32, 1),  # 2
    ("conv", 32, 64, 1),  # 3 P3/8
    ("c2f", 64, 64, 2),  # 4
    ("conv", 64, 128, 1),  # 5 P4/16
    ("c2f", 128, 128, 2),  # 6
    ("conv", 128, 192, 1),  # 7 P5/32
    ("c2f", 192, 192, 1),  # 8
]
_TAPS = {0: 16, 2: 32, 4: 64, 6: 128, 8: 192}  # layer -> channels of the pyramid levels used


class StripPool(nn.Module):
    """x + conv(mean over rows) + conv(mean over columns): context along a whole streak."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.rows = nn.Conv2d(c, c, (1, 3), padding=(0, 1), bias=False)
        self.cols = nn.Conv2d(c, c, (3, 1), padding=(1, 0), bias=False)
        self.fuse = Conv(c, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        along_w = self.rows(x.mean(dim=2, keepdim=True)).expand(-1, -1, h, w)
        along_h = self.cols(x.mean(dim=3, keepdim=True)).expand(-1, -1, h, w)
        return x + self.fuse(along_w + along_h)


class DenseDefectNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 64) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.width = width
        layers: list[nn.Module] = []
        for kind, c_from, c_out, n in _BACKBONE:
            c_in = in_channels if c_from < 0 else c_from
            layers.append(Conv(c_in, c_out, 3, 2) if kind == "conv" else C2f(c_in, c_out, n, True))
        self.encoder = nn.Sequential(*layers)
        fine = width // 2  # the stride-4 and stride-2 levels are narrower: they cost the most
        self.lateral = nn.ModuleDict(
            {str(k): Conv(c, fine if k == 2 else width, 1, 1) for k, c in _TAPS.items() if k != 0}
        )
        self.reduce = Conv(width, fine, 1, 1)
        self.smooth = nn.ModuleDict(
            {"6": Conv(width, width, 3, 1), "4": Conv(width, width, 3, 1), "2": Conv(fine, fine, 3, 1)}
        )
        self.strip = StripPool(width)
        self.fine = nn.Sequential(Conv(_TAPS[0] + fine, 16, 1, 1), Conv(16, 16, 3, 1))
        self.defect_head = nn.Conv2d(16, 1, 1)
        self.class_head = nn.Conv2d(16, num_classes, 1)
        assert self.defect_head.bias is not None
        nn.init.constant_(self.defect_head.bias, -4.0)  # start near "clean" (focal-loss prior)

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(defect logit (N, 1, H/2, W/2), class logits (N, C, H/2, W/2))."""
        feats: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i in _TAPS:
                feats[i] = x
        y = self.lateral["8"](feats[8])
        for k in (6, 4, 2):
            if k == 2:
                y = self.reduce(y)
            y = F.interpolate(y, size=feats[k].shape[-2:], mode="nearest") + self.lateral[str(k)](feats[k])
            y = self.smooth[str(k)](y)
            if k == 4:
                y = self.strip(y)
        y = F.interpolate(y, size=feats[0].shape[-2:], mode="bilinear", align_corners=False)
        y = self.fine(torch.cat([feats[0], y], dim=1))
        return self.defect_head(y), self.class_head(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, 1 + C, H/2, W/2): P(defect), then P(class | defect)."""
        defect, classes = self.logits(x)
        return torch.cat([torch.sigmoid(defect), torch.softmax(classes, dim=1)], dim=1)

    def hparams(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "in_channels": self.in_channels, "width": self.width}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
