"""Training both GAN stages: resumable, within a step or time budget, with sample grids.

Stage 1 trains the defect generator G1 and its critic D1 on real (patch, mask, class, fabric code)
samples. Stage 2 freezes G1, pastes its defects on clean fabric and trains the fusion net T against
critic D2 (which sees real defects on their fabric), plus an L1 term: a real defect hard-pasted on
a clean patch of its own fabric must come back as the real defect inside the dilated mask. Both use
`losses` (R3GAN by default) and `augment` on everything the critics see.

Every `checkpoint_every_s` and at the end of each stage the trainer writes `OUT/last.pt`,
`OUT/record.json` (wall-clock hours, steps, data hash, steps/s) and a sample grid
`OUT/samples/stage{1,2}_{steps}.png` (also copied to `OUT/samples_stage{1,2}.png`).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline_train.synth.gan.augment import augment, parse_policy
from offline_train.synth.gan.checkpoint import (
    CHECKPOINT_NAME,
    RECORD_NAME,
    GanConfig,
    GanModels,
    load_checkpoint,
    save_checkpoint,
)
from offline_train.synth.gan.data import GanData
from offline_train.synth.gan.grids import sample_grid, to_tensor, unit, write_png
from offline_train.synth.gan.losses import d_loss, g_loss, gamma_at, gradient_penalty
from offline_train.synth.gan.nets import IMAGE_CHANNELS, fuse, paste
from runtime.errors import ConfigError

log = logging.getLogger(__name__)

# Fields a resumed run must share with its checkpoint (the networks' shapes and the texture code).
STRUCTURAL = ("classes", "patch_px", "z_dim", "base_channels", "max_channels", "fusion_width", "extractor")
STAGE1_SHARE = 0.6  # of a --minutes budget, when both stages train


def _bar(total: int | None, desc: str) -> Any:
    """A tqdm bar on a terminal; None otherwise (plain lines are logged instead)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)


class GanTrainer:
    """Owns the models, optimizers, data and random state; `run` trains a stage within a budget."""

    def __init__(
        self,
        cfg: GanConfig,
        data: GanData,
        out_dir: Path,
        *,
        vgg_weights: Path | None = None,
        checkpoint_every_s: float = 120.0,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if tuple(data.classes) != tuple(cfg.classes) or data.patch_px != cfg.patch_px:
            raise ValueError(f"GAN data ({data.classes}, {data.patch_px} px) does not match the config")
        self.cfg, self.data, self.out = cfg, data, Path(out_dir)
        self.checkpoint_every_s = checkpoint_every_s
        self.progress = progress or (lambda m: log.info("%s", m))
        self.policy = parse_policy(cfg.augment)
        torch.manual_seed(cfg.seed)
        self.models = GanModels(cfg, vgg_weights)
        self.opt = {
            name: torch.optim.Adam(getattr(self.models, name).parameters(), lr=cfg.lr, betas=cfg.betas)
            for name in ("g1", "d1", "t", "d2")
        }
        self.rng = np.random.default_rng(cfg.seed)
        self.steps = {"1": 0, "2": 0}
        self.wall_s = 0.0
        self.rates: dict[str, float] = {}
        self._counted = 0.0  # seconds of the current run already added to wall_s
        self.data_sha256 = data.sha256
        self.started_utc = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.models.encoder.fit_stats(
            unit(to_tensor(np.concatenate([data.textures, data.clean_patches(self.rng, 64)])))
        )
        self._refresh_codes()

    def _refresh_codes(self) -> None:
        self.codes = torch.cat(
            [
                self.models.encoder(unit(to_tensor(self.data.textures[i : i + 64])))
                for i in range(0, len(self.data), 64)
            ]
        )

    # -- checkpoints ---------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def resume(self) -> bool:
        """Continue from OUT/last.pt when it exists (it must share the networks' shapes)."""
        if not self.checkpoint_path.is_file():
            return False
        ckpt = load_checkpoint(self.checkpoint_path)
        stored = GanConfig.from_dict(ckpt["config"])
        for key in STRUCTURAL:
            if getattr(stored, key) != getattr(self.cfg, key):
                raise ConfigError(
                    f"{self.checkpoint_path} was trained with {key}={getattr(stored, key)!r}, not "
                    f"{getattr(self.cfg, key)!r}: use the same setting to continue it, or another --out"
                )
        self.models.load_trained_state(ckpt["models"])
        for name, state in ckpt.get("optim", {}).items():
            self.opt[name].load_state_dict(state)
        prog = ckpt["progress"]
        self.steps = {"1": int(prog["stage1_steps"]), "2": int(prog["stage2_steps"])}
        self.wall_s = float(prog["wall_s"])
        self.rates = dict(prog.get("steps_per_s", {}))
        self.started_utc = str(prog.get("started_utc", self.started_utc))
        if prog.get("data_sha256") != self.data_sha256:
            log.warning(
                "resuming %s on different data (hash %s...)", self.checkpoint_path, self.data_sha256[:12]
            )
        if "numpy_rng" in prog:
            self.rng.bit_generator.state = prog["numpy_rng"]
        if "torch_rng" in prog:
            torch.set_rng_state(prog["torch_rng"])
        self._refresh_codes()
        self.progress(
            f"resumed {self.checkpoint_path}: stage 1 {self.steps['1']} steps, stage 2 {self.steps['2']} steps"
        )
        return True

    def record(self) -> dict[str, Any]:
        return {
            "schema": "loomsight.gan-record/1",
            "wall_clock_hours": round(self.wall_s / 3600.0, 4),
            "stage1_steps": self.steps["1"],
            "stage2_steps": self.steps["2"],
            "steps_per_s": self.rates,
            "data_sha256": self.data_sha256,
            "data_origin": self.data.origin,
            "samples_per_class": self.data.counts(),
            "clean_tiles": len(self.data.clean_tiles),
            "torch": str(torch.__version__),
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "started_utc": self.started_utc,
            "updated_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "config": self.cfg.to_dict(),
        }

    def save(self) -> Path:
        record = self.record()
        progress = {
            "stage1_steps": self.steps["1"],
            "stage2_steps": self.steps["2"],
            "wall_s": self.wall_s,
            "steps_per_s": self.rates,
            "started_utc": self.started_utc,
            "data_sha256": self.data_sha256,
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }
        save_checkpoint(
            self.checkpoint_path,
            {
                "config": self.cfg.to_dict(),
                "models": self.models.trained_state(),
                "optim": {k: o.state_dict() for k, o in self.opt.items()},
                "progress": progress,
                "record": record,
            },
        )
        (self.out / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return self.checkpoint_path

    # -- one step of each stage ----------------------------------------------------------------

    def _gamma(self, stage: str) -> float:
        c = self.cfg
        return gamma_at(
            self.steps[stage], c.gamma_horizon_steps, c.gamma_start, c.gamma_end, c.gamma_schedule
        )

    def _real_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self.data.sample(self.rng, self.cfg.batch)
        image = to_tensor(self.data.images[idx])
        mask = torch.from_numpy(self.data.masks[idx]).float()[:, None]
        texture = to_tensor(self.data.textures[idx])
        return image, mask, torch.from_numpy(self.data.labels[idx]), self.codes[idx], texture

    def _critic_step(
        self, critic: torch.nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
        *, cond: dict[str, torch.Tensor], gamma: float,
    ) -> float:  # fmt: skip
        r = augment(real, self.policy, IMAGE_CHANNELS).detach().requires_grad_(True)
        f = augment(fake.detach(), self.policy, IMAGE_CHANNELS).detach().requires_grad_(True)
        sr, sf = critic(r, **cond), critic(f, **cond)
        loss = d_loss(sr, sf, self.cfg.loss)
        loss = loss + (gradient_penalty(sr, [r], gamma) + gradient_penalty(sf, [f], gamma)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def _adv(
        self, critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, cond: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        with torch.no_grad():
            sr = critic(augment(real, self.policy, IMAGE_CHANNELS), **cond)
        sf = critic(augment(fake, self.policy, IMAGE_CHANNELS), **cond)
        return g_loss(sr, sf, self.cfg.loss)

    def stage1_step(self) -> dict[str, float]:
        m = self.models
        image, mask, cls, code, _ = self._real_batch()
        real = torch.cat([image, mask * 2.0 - 1.0], dim=1)
        z = torch.randn(len(cls), self.cfg.z_dim)
        m.d1.requires_grad_(True)
        with torch.no_grad():
            f_img, f_logit = m.g1(z, cls, code)
        fake = torch.cat([f_img, torch.sigmoid(f_logit) * 2.0 - 1.0], dim=1)
        ld = self._critic_step(
            m.d1, self.opt["d1"], real, fake, cond={"cls": cls, "code": code}, gamma=self._gamma("1")
        )
        m.d1.requires_grad_(False)
        f_img, f_logit = m.g1(z, cls, code)
        fake = torch.cat([f_img, torch.sigmoid(f_logit) * 2.0 - 1.0], dim=1)
        lg = self._adv(m.d1, real, fake, {"cls": cls, "code": code})
        self.opt["g1"].zero_grad(set_to_none=True)
        lg.backward()
        self.opt["g1"].step()
        m.d1.requires_grad_(True)
        self.steps["1"] += 1
        return {"d": ld, "g": float(lg.detach())}

    def fake_defects(self, background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pasted patch, soft mask) of G1's defects (random classes) laid on `background`."""
        m = self.models
        n = background.shape[0]
        cls = torch.from_numpy(self.rng.integers(len(self.cfg.classes), size=n))
        with torch.no_grad():
            code = m.encoder(unit(background))
            f_img, f_logit = m.g1(torch.randn(n, self.cfg.z_dim), cls, code)
        soft = torch.sigmoid(f_logit)
        return paste(f_img, soft, background), soft

    def stage2_step(self) -> dict[str, float]:
        m = self.models
        image, mask, _, code, texture = self._real_batch()
        background = to_tensor(self.data.clean_patches(self.rng, self.cfg.batch))
        bg_code = m.encoder(unit(background))
        pasted, soft = self.fake_defects(background)
        hard = (soft > 0.5).float()
        real = torch.cat([image, mask * 2.0 - 1.0], dim=1)
        with torch.no_grad():
            fused, _ = fuse(m.t, pasted, soft, background)
        fake = torch.cat([fused, hard * 2.0 - 1.0], dim=1)
        # the critic sees each sample with its own fabric's code
        both_code = torch.cat([code, bg_code])
        m.d2.requires_grad_(True)
        r = augment(real, self.policy, IMAGE_CHANNELS).detach().requires_grad_(True)
        f = augment(fake, self.policy, IMAGE_CHANNELS).detach().requires_grad_(True)
        scores = m.d2(torch.cat([r, f]), code=both_code)
        sr, sf = scores[: len(r)], scores[len(r) :]
        gamma = self._gamma("2")
        ld = (
            d_loss(sr, sf, self.cfg.loss)
            + (gradient_penalty(sr, [r], gamma) + gradient_penalty(sf, [f], gamma)).mean()
        )
        self.opt["d2"].zero_grad(set_to_none=True)
        ld.backward()
        self.opt["d2"].step()
        m.d2.requires_grad_(False)
        fused, _ = fuse(m.t, pasted, soft, background)
        fake = torch.cat([fused, hard * 2.0 - 1.0], dim=1)
        with torch.no_grad():
            sr = m.d2(augment(real, self.policy, IMAGE_CHANNELS), code=code)
        sf = m.d2(augment(fake, self.policy, IMAGE_CHANNELS), code=bg_code)
        adv = g_loss(sr, sf, self.cfg.loss)
        # reconstruction: a real defect hard-pasted on its own fabric comes back as the real defect
        rec, m_dil = fuse(m.t, paste(image, mask, texture), mask, texture)
        target = m_dil * image + (1.0 - m_dil) * texture
        l1 = (rec - target).abs().sum() / (m_dil.sum() * IMAGE_CHANNELS + 1e-6)
        lt = adv + self.cfg.rec_weight * l1
        self.opt["t"].zero_grad(set_to_none=True)
        lt.backward()
        self.opt["t"].step()
        m.d2.requires_grad_(True)
        self.steps["2"] += 1
        return {"d": float(ld.detach()), "g": float(adv.detach()), "l1": float(l1.detach())}

    # -- sample grids --------------------------------------------------------------------------

    def write_grid(self, stage: str) -> Path:
        folder = self.out / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"stage{stage}_{self.steps[stage]:06d}.png"
        write_png(path, sample_grid(self.models, self.data, self.codes, stage))
        shutil.copyfile(path, self.out / f"samples_stage{stage}.png")
        return path

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stage: str, *, steps: int | None = None, minutes: float | None = None) -> dict[str, Any]:
        """Train `stage` ("1" or "2") for `steps` more steps or `minutes` more minutes, whichever is
        given (both: whichever ends first); checkpoint and grid at intervals and at the end."""
        if stage not in ("1", "2"):
            raise ValueError(f"stage must be '1' or '2', got {stage!r}")
        if steps is None and minutes is None:
            raise ValueError("give a budget: steps or minutes")
        if stage == "2" and self.steps["1"] == 0:
            log.warning("stage 2 with an untrained stage 1 generator: the fused defects will be noise")
        step_fn = self.stage1_step if stage == "1" else self.stage2_step
        bar = _bar(steps, f"GAN stage {stage}")
        start = last_ckpt = last_line = time.monotonic()
        cpu_start = time.process_time()
        deadline = start + minutes * 60.0 if minutes is not None else math.inf
        done = 0
        self._counted = 0.0
        losses: dict[str, float] = {}
        for module in (self.models.g1, self.models.t, self.models.d1, self.models.d2):
            module.train()
        while (steps is None or done < steps) and time.monotonic() < deadline:
            losses = step_fn()
            done += 1
            now = time.monotonic()
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
            elif now - last_line >= 30.0 or (steps is not None and done == steps):
                budget = f"{done}/{steps}" if steps is not None else f"{(now - start) / 60:.1f}/{minutes} min"
                self.progress(f"GAN stage {stage}: step {self.steps[stage]} ({budget}) "
                              + " ".join(f"{k}={v:.3f}" for k, v in losses.items()))  # fmt: skip
                last_line = now
            if now - last_ckpt >= self.checkpoint_every_s:
                self._checkpoint(stage, done, now - start, time.process_time() - cpu_start)
                last_ckpt = now
        if bar is not None:
            bar.close()
        elapsed = time.monotonic() - start
        self._checkpoint(stage, done, elapsed, time.process_time() - cpu_start)
        return {"stage": stage, "steps": done, "seconds": round(elapsed, 2), "losses": losses}

    def _checkpoint(self, stage: str, done: int, elapsed: float, cpu_s: float) -> None:
        """Grid + checkpoint; `rates` gets steps per wall-clock second and CPU seconds per step (all
        threads of this process: on a shared machine the honest figure of what a step costs)."""
        self.wall_s += elapsed - self._counted
        self._counted = elapsed
        if done and elapsed > 0:
            self.rates[f"stage{stage}"] = round(done / elapsed, 3)
            self.rates[f"stage{stage}_cpu_s_per_step"] = round(cpu_s / done, 3)
        self.write_grid(stage)
        self.save()
        if done:
            self.progress(f"GAN stage {stage}: checkpoint {self.checkpoint_path} at step {self.steps[stage]}")


def train_gan(
    data: GanData,
    out_dir: Path,
    cfg: GanConfig,
    *,
    stage: str = "both",
    steps: int | None = None,
    minutes: float | None = None,
    vgg_weights: Path | None = None,
    checkpoint_every_s: float = 120.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (or continue, when OUT/last.pt exists) the GAN; `steps` are per stage, `minutes` in all
    (stage 1 gets 60 % of them when both stages train). Returns the training record."""
    if stage not in ("1", "2", "both"):
        raise ConfigError(f"--stage must be 1, 2 or both, got {stage!r}")
    if (steps is None) == (minutes is None):
        raise ConfigError("give exactly one budget: --steps N or --minutes M")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    if minutes is not None and minutes <= 0:
        raise ConfigError(f"--minutes must be > 0, got {minutes}")
    trainer = GanTrainer(
        cfg, data, out_dir, vgg_weights=vgg_weights, checkpoint_every_s=checkpoint_every_s, progress=progress
    )
    resumed = trainer.resume()
    if stage == "2" and trainer.steps["1"] == 0:
        raise ConfigError(
            f"--stage 2 needs a trained stage 1 in {out_dir} ({CHECKPOINT_NAME}); run --stage 1 (or both) first"
        )
    results = []
    stages = ["1", "2"] if stage == "both" else [stage]
    for s in stages:
        budget = None
        if minutes is not None:
            budget = (
                minutes * (STAGE1_SHARE if s == "1" else 1.0 - STAGE1_SHARE) if stage == "both" else minutes
            )
        results.append(trainer.run(s, steps=steps, minutes=budget))
    record = trainer.record()
    record["runs"] = results
    record["resumed"] = resumed
    return record
