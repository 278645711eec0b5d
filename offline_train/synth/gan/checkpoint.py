"""The GAN's configuration, its models built from it, and checkpoints that carry both.

A checkpoint (`last.pt`, written atomically) is a dict: `schema` ("loomsight.gan/1"), `config`
(every `GanConfig` field, the texture extractor's config among them), `models` (state dicts of the
stage 1 generator and critic, the stage 2 fusion net and critic, and the texture code's statistics),
`optim` (optimizer states), `progress` (steps per stage, wall-clock seconds, the data hash, the
random states) and `record` (the training record, also written beside it as `record.json`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from offline_train.synth.gan.nets import IMAGE_CHANNELS, Critic, DefectGenerator, FusionNet, check_patch_px
from offline_train.synth.gan.texture import ExtractorConfig, TextureEncoder
from runtime.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA = "loomsight.gan/1"
CHECKPOINT_NAME = "last.pt"
RECORD_NAME = "record.json"


@dataclass(frozen=True)
class GanConfig:
    """Everything that shapes the GAN and its training (stored in every checkpoint)."""

    classes: tuple[str, ...]
    patch_px: int = 64
    z_dim: int = 64
    base_channels: int = 16
    max_channels: int = 128
    fusion_width: int = 16
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    loss: str = "rpgan"  # "rpgan" (R3GAN) or "bce" (classic non-saturating)
    gamma_start: float = 1.0
    gamma_end: float = 0.1
    gamma_schedule: str = "cosine"
    gamma_horizon_steps: int = 4000  # gamma reaches gamma_end after this many steps of a stage
    lr: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.99)
    batch: int = 16
    rec_weight: float = 5.0  # stage 2: weight of the L1 reconstruction term
    augment: str = "translation,cutout,brightness"
    seed: int = 0

    def __post_init__(self) -> None:
        check_patch_px(self.patch_px)
        if not self.classes:
            raise ValueError("GanConfig needs at least one defect class")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"], d["betas"] = list(self.classes), list(self.betas)
        d["extractor"] = self.extractor.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GanConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"GAN checkpoint config has unknown keys {unknown}: written by a newer loomsight?"
            )
        d = dict(d)
        d["classes"] = tuple(d["classes"])
        d["betas"] = tuple(d.get("betas", (0.0, 0.99)))
        d["extractor"] = ExtractorConfig.from_dict(d.get("extractor", {}))
        return cls(**d)


class GanModels(nn.Module):
    """The four trained networks and the frozen texture encoder, built from a `GanConfig`."""

    def __init__(self, cfg: GanConfig, vgg_weights: Path | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        n, width = len(cfg.classes), cfg.extractor.code_width
        common = {
            "patch_px": cfg.patch_px,
            "base_channels": cfg.base_channels,
            "max_channels": cfg.max_channels,
        }
        self.encoder = TextureEncoder(cfg.extractor, vgg_weights)
        self.g1 = DefectGenerator(n, width, z_dim=cfg.z_dim, **common)
        self.d1 = Critic(IMAGE_CHANNELS + 1, n_classes=n, code_width=width, **common)
        self.t = FusionNet(width=cfg.fusion_width)
        self.d2 = Critic(IMAGE_CHANNELS + 1, code_width=width, **common)

    def trained_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """State dicts of what training changes (the extractor is rebuilt from its config)."""
        return {
            "g1": self.g1.state_dict(),
            "d1": self.d1.state_dict(),
            "t": self.t.state_dict(),
            "d2": self.d2.state_dict(),
            "code_stats": {"mean": self.encoder.code_mean.clone(), "std": self.encoder.code_std.clone()},
        }

    def load_trained_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for name in ("g1", "d1", "t", "d2"):
            getattr(self, name).load_state_dict(state[name])
        self.encoder.code_mean.copy_(state["code_stats"]["mean"])
        self.encoder.code_std.copy_(state["code_stats"]["std"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` (with the schema) to `path` atomically (a temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"schema": SCHEMA, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict at `path`, checked for its schema; a clear error when it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ConfigError(
            f"GAN checkpoint {path} does not exist: train one with `loomsight gan train DATASET --out DIR`"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"GAN checkpoint {path} is unreadable or corrupt ({type(exc).__name__}: {exc}); "
            "retrain, or restore it from a copy"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("schema") != SCHEMA:
        got = ckpt.get("schema") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConfigError(f"{path} is not a loomsight GAN checkpoint (schema {got!r}, expected {SCHEMA!r})")
    for key in ("config", "models", "progress"):
        if key not in ckpt:
            raise ConfigError(f"GAN checkpoint {path} lacks {key!r}: it is incomplete; retrain")
    return dict(ckpt)


def models_from_checkpoint(ckpt: dict[str, Any], vgg_weights: Path | None = None) -> GanModels:
    cfg = GanConfig.from_dict(ckpt["config"])
    models = GanModels(cfg, vgg_weights)
    models.load_trained_state(ckpt["models"])
    return models
