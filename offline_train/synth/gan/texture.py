"""The texture code of a defect-free patch: projected, signed-square-rooted Gram matrices.

Features come from one of two frozen extractors, described by an `ExtractorConfig` that every
checkpoint stores:

- ``kind="random"``: a seeded stack of random-filter convolutions (one layer per entry of `widths`,
  with the matching kernel size, stride 2 after the first, ReLU), whose every layer is used; random
  shallow networks capture texture statistics well (Ustyuzhaninov et al., 2017) and need no download;
- ``kind="vgg16"``: torchvision's VGG16 (`weights=None`) loaded from a LOCAL state-dict file the user
  names, ImageNet normalization, features taken after the torchvision layer indices in `vgg_layers`
  (3, 8, 15 = relu1_2, relu2_2, relu3_3).

For each layer's features F (C x N positions) the Gram matrix F F^T / N is taken, its upper
triangle (with the diagonal) kept, each entry replaced by sign(x) sqrt(|x|), all layers concatenated
and projected to `code_width` by a Gaussian matrix drawn from `projection_seed` (regenerated, not
stored). `TextureEncoder` finally standardizes the code with per-dimension statistics measured on
the training patches (stored in the checkpoint).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runtime.errors import ConfigError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG_RELU_NAMES = {3: "relu1_2", 8: "relu2_2", 15: "relu3_3", 22: "relu4_3"}


@dataclass(frozen=True)
class ExtractorConfig:
    """Which frozen feature extractor the texture code uses (stored with every checkpoint)."""

    kind: str = "random"  # "random" or "vgg16"
    seed: int = 1234  # random filters
    widths: tuple[int, ...] = (16, 32, 32)
    kernels: tuple[int, ...] = (3, 5, 7)
    vgg_layers: tuple[int, ...] = (3, 8, 15)  # torchvision indices into vgg16().features
    vgg_weights: str = ""  # the local file the weights came from
    vgg_sha256: str = ""
    code_width: int = 64
    projection_seed: int = 4321

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"], d["kernels"], d["vgg_layers"] = (
            list(self.widths),
            list(self.kernels),
            list(self.vgg_layers),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExtractorConfig:
        d = dict(d)
        for key in ("widths", "kernels", "vgg_layers"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RandomFilterExtractor(nn.Module):
    """Seeded random convolutions; `forward(x in [0, 1], Bx3xHxW)` returns every layer's features."""

    def __init__(self, seed: int, widths: tuple[int, ...], kernels: tuple[int, ...]) -> None:
        super().__init__()
        if len(widths) != len(kernels) or not widths:
            raise ValueError(
                f"random extractor: widths {widths} and kernels {kernels} must be non-empty and match"
            )
        gen = torch.Generator().manual_seed(seed)
        layers = []
        c_in = 3
        for i, (w, k) in enumerate(zip(widths, kernels, strict=True)):
            conv = nn.Conv2d(c_in, w, k, stride=1 if i == 0 else 2, padding=k // 2, bias=True)
            with torch.no_grad():
                weight = torch.randn(conv.weight.shape, generator=gen) / (c_in * k * k) ** 0.5
                conv.weight.copy_(weight)
                assert conv.bias is not None
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)
            layers.append(conv)
            c_in = w
        self.layers = nn.ModuleList(layers)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - 0.5) / 0.25
        feats = []
        for conv in self.layers:
            h = torch.relu(conv(h))
            feats.append(h)
        return feats


class Vgg16Extractor(nn.Module):
    """VGG16 features from a local state dict; returns the activations after `layers` (indices)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, weights: Path, layers: tuple[int, ...]) -> None:
        super().__init__()
        import torchvision

        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"--vgg16-weights {path} does not exist: give a local VGG16 state-dict file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(
                f"--vgg16-weights {path} is not a readable torch state dict ({type(exc).__name__}: {exc})"
            ) from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ConfigError(f"--vgg16-weights {path} holds a {type(state).__name__}, not a state dict")
        last = max(layers)
        try:  # only the convolutional part: the classifier's 120 M parameters are never used
            from torchvision.models.vgg import cfgs, make_layers

            all_features = make_layers(cfgs["D"], batch_norm=False)
        except ImportError:
            all_features = torchvision.models.vgg16(weights=None).features
        features = all_features[: last + 1]
        wanted = {f"features.{k}": v for k, v in features.state_dict().items()}
        missing = [k for k in wanted if k not in state]
        if missing:
            raise ConfigError(
                f"--vgg16-weights {path} lacks {missing[:3]}...: expected torchvision vgg16 keys (features.N.weight)"
            )
        features.load_state_dict({k.removeprefix("features."): state[k] for k in wanted})
        self.features = features
        self.layers = tuple(sorted(layers))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean) / self.std
        feats = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.layers:
                feats.append(h)
        return feats


def build_extractor(cfg: ExtractorConfig, vgg_weights: Path | None = None) -> nn.Module:
    """The frozen extractor `cfg` describes; a VGG16 config needs its weights file (`vgg_weights`
    overrides the path stored in the config, and must have the same sha256)."""
    if cfg.kind == "random":
        return RandomFilterExtractor(cfg.seed, cfg.widths, cfg.kernels)
    if cfg.kind == "vgg16":
        path = Path(vgg_weights) if vgg_weights is not None else Path(cfg.vgg_weights)
        if not path.is_file():
            raise ConfigError(
                f"this GAN's texture code uses VGG16 weights from {cfg.vgg_weights!r}, which is not found; "
                "pass the same file (vgg16_weights=...)"
            )
        if cfg.vgg_sha256 and file_sha256(path) != cfg.vgg_sha256:
            raise ConfigError(
                f"VGG16 weights {path} differ from those the GAN was trained with (sha256 {cfg.vgg_sha256[:12]}...)"
            )
        return Vgg16Extractor(path, cfg.vgg_layers)
    raise ConfigError(f"texture extractor kind {cfg.kind!r} is not 'random' or 'vgg16'")


def gram_code(feats: list[torch.Tensor]) -> torch.Tensor:
    """Concatenated signed-sqrt upper triangles of each layer's Gram matrix (B x D)."""
    parts = []
    for f in feats:
        b, c, h, w = f.shape
        flat = f.reshape(b, c, h * w)
        gram = flat @ flat.transpose(1, 2) / float(h * w)
        iu = torch.triu_indices(c, c)
        tri = gram[:, iu[0], iu[1]]
        parts.append(torch.sign(tri) * torch.sqrt(tri.abs() + 1e-12))
    return torch.cat(parts, dim=1)


class TextureEncoder(nn.Module):
    """Patch (Bx3xHxW in [0, 1]) -> standardized texture code (B x code_width); frozen."""

    projection: torch.Tensor
    code_mean: torch.Tensor
    code_std: torch.Tensor

    def __init__(self, cfg: ExtractorConfig, vgg_weights: Path | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.extractor = build_extractor(cfg, vgg_weights)
        with torch.no_grad():
            dim = gram_code(self.extractor(torch.zeros(1, 3, 32, 32))).shape[1]
        gen = torch.Generator().manual_seed(cfg.projection_seed)
        proj = torch.randn(dim, cfg.code_width, generator=gen) / dim**0.5
        self.register_buffer("projection", proj, persistent=False)
        self.register_buffer("code_mean", torch.zeros(cfg.code_width))
        self.register_buffer("code_std", torch.ones(cfg.code_width))
        self.requires_grad_(False)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return gram_code(self.extractor(x)) @ self.projection

    @torch.no_grad()
    def fit_stats(self, patches: torch.Tensor, batch: int = 64) -> None:
        """Measure the per-dimension mean and spread of the raw code over `patches`."""
        codes = torch.cat([self.raw(patches[i : i + batch]) for i in range(0, len(patches), batch)])
        self.code_mean.copy_(codes.mean(0))
        self.code_std.copy_(
            codes.std(0, unbiased=False).clamp_min(1e-6) if len(codes) > 1 else torch.ones_like(codes[0])
        )

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x) - self.code_mean) / self.code_std
