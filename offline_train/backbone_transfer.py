"""Start an RT-DETR from a dense model's encoder (`loomsight train --backbone-from DENSE_CKPT`).

The dense model's encoder (offline_train.dense.model) is layer for layer the backbone of the
`loomsight-s` RT-DETR config (layers 0-8), so its weights load by name and shape. A gray dense
model's first convolution takes one channel; RT-DETR takes the gray tile replicated to three, so
that filter is spread over the three inputs (each a third): the same response on a gray tile.
The transferred layers can be frozen for the first epochs (the new neck and decoder learn on
stable features) and are then trained with the rest.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from torch import nn

from runtime.errors import ConfigError

log = logging.getLogger(__name__)


def dense_backbone(path: Path) -> tuple[nn.Module, int]:
    """A module whose state dict reads like an RT-DETR's first layers (`model.0.` ...), and their count."""
    from offline_train.dense.train import load_dense_checkpoint

    dense, _ = load_dense_checkpoint(Path(path))
    encoder = copy.deepcopy(dense.encoder)
    stem: Any = encoder[0]
    first: nn.Conv2d = stem.conv
    if first.in_channels == 1:
        spread = nn.Conv2d(3, first.out_channels, first.kernel_size, first.stride, first.padding, bias=False)  # type: ignore[arg-type]
        spread.weight.data = first.weight.data.repeat(1, 3, 1, 1) / 3.0
        stem.conv = spread
    holder = nn.Module()
    holder.model = encoder
    return holder, len(encoder)


def load_backbone(model: Any, path: Path) -> int:
    """Load the dense encoder into `model` (an ultralytics RTDETR); returns the layers transferred.
    Fails when the detector's backbone is not the dense encoder's architecture."""
    holder, n_layers = dense_backbone(path)
    target = model.model.state_dict()
    source = {k: v for k, v in holder.state_dict().items()}
    mismatched = [k for k, v in source.items() if k not in target or target[k].shape != v.shape]
    if mismatched:
        raise ConfigError(
            f"--backbone-from {path}: {len(mismatched)} of {len(source)} encoder tensors do not fit this RT-DETR "
            f"(first: {mismatched[0]}); use --model loomsight-s, whose backbone is the dense model's encoder"
        )
    model.load(holder)
    log.info("RT-DETR backbone: %d layers (%d tensors) from the dense model %s", n_layers, len(source), path)
    return n_layers


def unfreeze_after(model: Any, n_layers: int, epochs: int) -> None:
    """Train the first `n_layers` again from epoch `epochs` on (ultralytics froze them with `freeze`)."""
    prefixes = tuple(f"model.{i}." for i in range(n_layers))

    def on_epoch_start(trainer: Any) -> None:
        if trainer.epoch == epochs:
            n = 0
            for name, p in trainer.model.named_parameters():
                if name.startswith(prefixes) and p.dtype.is_floating_point:
                    p.requires_grad = True
                    n += 1
            log.info("epoch %d: the transferred backbone (%d tensors) trains from now on", epochs + 1, n)

    model.add_callback("on_train_epoch_start", on_epoch_start)
