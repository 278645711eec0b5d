"""`GanSynthesizer`: a trained GAN checkpoint behind the synthesizer interface (name "gan").

For a clean tile and an rng: pick a `patch_px` window of the tile (a smaller tile is mirrored up to
one patch and cut back), compute its texture code, draw a class and a noise vector from the rng, let
G1 make a defect (image + soft mask) for that fabric, paste it, fuse it with T, and keep T's output
only inside the hard mask (soft > `mask_threshold`, specks under `min_area_px` dropped) dilated by
MASK_DILATION_PX; every other pixel is copied from the input tile in uint8, so it is bit-identical.
`base.finish` then applies the shared contract (each change inside its part's box, contrast floor).
Gray tiles go through the networks as three equal channels and come back as their channel mean.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from offline_train.synth.base import (
    MASK_DILATION_PX,
    SynthResult,
    check_class,
    check_tile,
    contrast_needed,
    dilate,
    drop_specks,
    finish,
)
from offline_train.synth.gan.checkpoint import load_checkpoint, models_from_checkpoint
from offline_train.synth.gan.data import pad_to, to_rgb
from offline_train.synth.gan.grids import to_tensor, to_uint8, unit
from offline_train.synth.gan.nets import paste

log = logging.getLogger(__name__)


class GanSynthesizer:
    """Defects from a trained GAN checkpoint (`loomsight gan train`); see the module docstring."""

    def __init__(
        self,
        checkpoint_path: Path,
        *,
        vgg16_weights: Path | None = None,
        classes: tuple[str, ...] | None = None,
        min_contrast: float = 6.0,
        relative_contrast: float = 0.3,
        min_area_px: int = 4,
        mask_threshold: float = 0.5,
        rgb_tiles: bool = True,
        max_tries: int = 6,
        name: str = "gan",
    ) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        ckpt = load_checkpoint(self.checkpoint_path)
        self.models = models_from_checkpoint(ckpt, vgg16_weights).eval()
        cfg = self.models.cfg
        self.trained_classes = tuple(check_class(c) for c in cfg.classes)
        if classes is None:
            classes = self.trained_classes
        unknown = [c for c in classes if c not in self.trained_classes]
        if unknown:
            raise ValueError(
                f"GAN {self.checkpoint_path} was not trained on {unknown}; it knows {', '.join(self.trained_classes)}"
            )
        self.classes: tuple[str, ...] = tuple(classes)
        self.patch_px = cfg.patch_px
        self.z_dim = cfg.z_dim
        self.min_contrast = min_contrast
        self.relative_contrast = relative_contrast
        self.min_area_px = min_area_px
        self.mask_threshold = mask_threshold
        self.rgb_tiles = rgb_tiles
        self.max_tries = max_tries
        self.name = name
        self.steps = {k: int(v) for k, v in ckpt["progress"].items() if k.endswith("_steps")}

    def __repr__(self) -> str:
        return (
            f"GanSynthesizer({str(self.checkpoint_path)!r}, classes={self.classes}, patch_px={self.patch_px})"
        )

    @torch.no_grad()
    def generate(
        self, background: np.ndarray, class_name: str, z: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For one RGB patch_px x patch_px uint8 patch: (pasted, fused, soft mask), the first two as
        uint8 RGB patches (the fused one not yet limited to the dilated mask), the mask float."""
        m = self.models
        bg = to_tensor(background[None])
        cls = torch.tensor([self.trained_classes.index(class_name)])
        image, logit = m.g1(torch.from_numpy(z.astype(np.float32))[None], cls, m.encoder(unit(bg)))
        soft = torch.sigmoid(logit)
        pasted = paste(image, soft, bg)
        fused = m.t(pasted, soft * 2.0 - 1.0)
        return to_uint8(pasted)[0], to_uint8(fused)[0], soft[0, 0].numpy()

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> SynthResult | None:
        check_tile(image)
        h, w = image.shape[:2]
        p = self.patch_px
        canvas = pad_to(to_rgb(image, bgr=not self.rgb_tiles), p)
        floor = contrast_needed(image, self.min_contrast, self.relative_contrast)
        for _ in range(self.max_tries):
            y0 = int(rng.integers(canvas.shape[0] - p + 1))
            x0 = int(rng.integers(canvas.shape[1] - p + 1))
            class_name = self.classes[int(rng.integers(len(self.classes)))]
            z = rng.standard_normal(self.z_dim)
            background = np.ascontiguousarray(canvas[y0 : y0 + p, x0 : x0 + p])
            _, fused, soft = self.generate(background, class_name, z)
            hard = soft > self.mask_threshold
            hard[max(0, h - y0) :, :] = False  # the mirrored padding of a small tile is no defect
            hard[:, max(0, w - x0) :] = False
            hard = drop_specks(hard, self.min_area_px)
            if not hard.any():
                continue
            m_dil = dilate(hard, MASK_DILATION_PX)
            patch = np.where(m_dil[:, :, None], fused, background)
            out = canvas.copy()
            out[y0 : y0 + p, x0 : x0 + p] = patch
            out = out[:h, :w]
            if image.ndim == 2:
                candidate = np.rint(out.astype(np.float32).mean(axis=2)).astype(np.uint8)
            else:
                candidate = out if self.rgb_tiles else np.ascontiguousarray(out[:, :, ::-1])
            mask = np.zeros((h, w), bool)
            mh, mw = min(p, h - y0), min(p, w - x0)
            mask[y0 : y0 + mh, x0 : x0 + mw] = hard[:mh, :mw]
            result = finish(
                image, candidate, mask, class_name=class_name, synthesizer=self.name, min_contrast=floor
            )
            if result is not None:
                return result
        log.debug("%s: no defect above the contrast floor after %d tries", self.name, self.max_tries)
        return None
