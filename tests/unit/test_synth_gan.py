"""The Multistage GAN: losses on known inputs, R1 on a linear critic, shapes after a few training
steps of both stages on tiny patches, the outside-mask invariance, checkpoints that reload and sample
identically, and `GanSynthesizer` under the same contract as every other synthesizer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from offline_train.synth.base import MASK_DILATION_PX, Synthesizer, dilate  # noqa: E402
from offline_train.synth.gan.augment import augment, parse_policy  # noqa: E402
from offline_train.synth.gan.checkpoint import GanConfig, GanModels, load_checkpoint  # noqa: E402
from offline_train.synth.gan.data import from_dataset  # noqa: E402
from offline_train.synth.gan.losses import d_loss, g_loss, gamma_at, gradient_penalty  # noqa: E402
from offline_train.synth.gan.nets import fuse, paste  # noqa: E402
from offline_train.synth.gan.synthesizer import GanSynthesizer  # noqa: E402
from offline_train.synth.gan.texture import ExtractorConfig, TextureEncoder  # noqa: E402
from offline_train.synth.registry import gan_synthesizer_from  # noqa: E402
from runtime.cli import main  # noqa: E402
from runtime.errors import ConfigError  # noqa: E402
from runtime.taxonomy import DEFECT_CLASSES  # noqa: E402
from tests.unit.test_synth_contract import assert_label_true, weave_tile  # noqa: E402

PATCH = 32
STAGE1_STEPS = 3


def write_tiny_dataset(root: Path, n_tiles: int = 10, size: int = 48) -> Path:
    """A `loomsight dataset`-shaped folder: weave tiles, some with a dark knot or a bright broken end
    drawn in and labelled in masks/, some clean."""
    classes = list(DEFECT_CLASSES)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n_tiles):
        tile = weave_tile(size, size, seed=i, twill=bool(i % 2))
        label = np.zeros((size, size), np.uint8)
        if i % 3 != 2:
            m = np.zeros((size, size), np.uint8)
            cx, cy = (int(v) for v in rng.integers(10, size - 10, 2))
            if i % 3 == 0:
                cv2.circle(m, (cx, cy), int(rng.integers(3, 6)), 1, -1)
                tile[m > 0] = 35
                label[m > 0] = classes.index("knot") + 1
            else:
                m[:, cx : cx + 2] = 1
                tile[m > 0] = 225
                label[m > 0] = classes.index("broken_end") + 1
        split = "val" if i == n_tiles - 1 else "train"
        cv2.imwrite(str(root / "images" / split / f"t{i:03d}.png"), tile)
        cv2.imwrite(str(root / "masks" / split / f"t{i:03d}.png"), label)
    card = {"spec": {"classes": classes}, "recipe": {"synth": "none"}}
    (root / "dataset.json").write_text(json.dumps(card), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GAN trained through the CLI on a tiny dataset (stage 1 3 steps, then stage 2 3 steps,
    continuing the same run folder): the folder."""
    base = tmp_path_factory.mktemp("gan")
    ds = write_tiny_dataset(base / "ds")
    out = base / "run"
    argv = ["gan", "train", str(ds), "--out", str(out), "--patch-px", str(PATCH), "--batch", "8"]
    assert main([*argv, "--stage", "1", "--steps", str(STAGE1_STEPS)]) == 0
    assert main([*argv, "--stage", "2", "--steps", "3"]) == 0
    return out


def teach_masks(run: Path, out: Path, steps: int = 100) -> Path:
    """The checkpoint of `run` with G1 then fitted `steps` supervised steps to the real masks and
    patches (BCE + L1), written to `out` in the same format: a few GAN steps do not yet make masks
    above 0.5, and the contract tests need a generator that draws defects."""
    from offline_train.synth.gan.checkpoint import models_from_checkpoint, save_checkpoint
    from offline_train.synth.gan.grids import to_tensor, unit

    ckpt = load_checkpoint(run / "last.pt")
    models = models_from_checkpoint(ckpt)
    data = from_dataset(write_tiny_dataset(out.parent / "ds_taught"), PATCH)
    codes = models.encoder(unit(to_tensor(data.textures)))
    image, mask = to_tensor(data.images), torch.from_numpy(data.masks).float()[:, None]
    labels = torch.from_numpy(data.labels)
    opt = torch.optim.Adam(models.g1.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        out_img, logit = models.g1(torch.randn(len(labels), models.cfg.z_dim, generator=gen), labels, codes)
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(logit, mask) + (out_img - image).abs().mean()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(out, {**ckpt, "models": models.trained_state()})
    return out


@pytest.fixture(scope="module")
def taught(trained: Path) -> Path:
    return teach_masks(trained, trained.parent / "taught.pt")


# -- losses ---------------------------------------------------------------------------------------


def test_r1_equals_its_analytic_value_on_a_linear_critic() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3 * 8 * 8, generator=gen)
    x = torch.randn(5, 3, 8, 8, generator=gen, requires_grad=True)
    scores = x.flatten(1) @ w  # D(x) = w . x: its gradient is w for every sample
    for gamma in (0.1, 1.0, 10.0):
        r1 = gradient_penalty(scores, [x], gamma)
        assert r1.shape == (5,)
        torch.testing.assert_close(r1, torch.full((5,), gamma / 2 * float(w @ w)))


def test_relativistic_and_bce_losses_on_known_inputs() -> None:
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731  softplus
    assert float(d_loss(real, fake)) == pytest.approx((sp(-2.0) + sp(0.0)) / 2)
    assert float(g_loss(real, fake)) == pytest.approx((sp(2.0) + sp(0.0)) / 2)
    assert float(d_loss(real, fake, "bce")) == pytest.approx((sp(-2.0) + sp(0.0)) / 2 + sp(0.0))
    assert float(g_loss(real, fake, "bce")) == pytest.approx(sp(0.0))
    with pytest.raises(ValueError, match="wgan"):
        d_loss(real, fake, "wgan")


def test_gamma_schedules_run_from_start_to_end() -> None:
    assert gamma_at(0, 101, 1.0, 0.1) == pytest.approx(1.0)
    assert gamma_at(100, 101, 1.0, 0.1) == pytest.approx(0.1)
    assert gamma_at(50, 101, 1.0, 0.1) == pytest.approx(0.55)
    assert gamma_at(25, 101, 1.0, 0.1, "linear") == pytest.approx(0.775)
    assert gamma_at(500, 101, 1.0, 0.1) == pytest.approx(0.1)  # past the horizon: stays at the end
    assert gamma_at(50, 101, 1.0, 0.1, "constant") == 1.0


def test_augmentation_keeps_shapes_moves_the_mask_with_the_image_and_passes_gradients() -> None:
    x = torch.rand(4, 4, 16, 16, requires_grad=True)
    y = augment(x, parse_policy("translation,cutout,brightness"), 3)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    z = augment(x.detach(), ("brightness",), 3)
    torch.testing.assert_close(z[:, 3], x.detach()[:, 3])  # the mask channel keeps its values
    with pytest.raises(ValueError, match="rotate"):
        parse_policy("rotate")


# -- texture code ---------------------------------------------------------------------------------


def test_texture_code_is_seeded_fixed_width_and_tells_fabrics_apart() -> None:
    cfg = ExtractorConfig(code_width=24)
    a, b = TextureEncoder(cfg), TextureEncoder(cfg)
    plain = torch.from_numpy(np.stack([weave_tile(32, 32, seed=1)] * 3, 0)).float()[None] / 255
    twill = torch.from_numpy(np.stack([weave_tile(32, 32, seed=1, twill=True)] * 3, 0)).float()[None] / 255
    x = torch.cat([plain, twill])
    ca, cb = a(x), b(x)
    assert ca.shape == (2, 24)
    torch.testing.assert_close(ca, cb)  # the same seed: the same extractor and projection
    assert not torch.allclose(ca[0], ca[1])
    other = TextureEncoder(ExtractorConfig(code_width=24, seed=99))(x)
    assert not torch.allclose(other, ca)


def test_vgg16_extractor_loads_a_local_state_dict_and_refuses_a_missing_file(tmp_path: Path) -> None:
    import torchvision

    features = torchvision.models.vgg16(weights=None).features[:16]
    path = tmp_path / "vgg16_features.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    enc = TextureEncoder(ExtractorConfig(kind="vgg16", vgg_weights=str(path), code_width=16))
    assert enc(torch.rand(2, 3, 32, 32)).shape == (2, 16)
    with pytest.raises(ConfigError, match="not found"):
        TextureEncoder(ExtractorConfig(kind="vgg16", vgg_weights=str(tmp_path / "none.pth")))


# -- data -----------------------------------------------------------------------------------------


def test_real_samples_come_from_the_dataset_masks(tmp_path: Path) -> None:
    data = from_dataset(write_tiny_dataset(tmp_path / "ds"), PATCH)
    assert data.classes == ("broken_end", "knot")
    assert len(data) >= 5 and set(data.counts()) == {"broken_end", "knot"}
    assert data.images.shape[1:] == (PATCH, PATCH, 3) and data.masks.any(axis=(1, 2)).all()
    assert len(data.clean_tiles) >= 2
    empty = tmp_path / "no_masks"
    (empty / "images" / "train").mkdir(parents=True)
    with pytest.raises(ConfigError, match="masks"):
        from_dataset(empty, PATCH)


# -- training, checkpoints, the synthesizer -------------------------------------------------------


def test_both_stages_train_and_write_checkpoint_record_and_grids(trained: Path) -> None:
    record = json.loads((trained / "record.json").read_text())
    assert record["stage1_steps"] == STAGE1_STEPS and record["stage2_steps"] == 3
    assert record["wall_clock_hours"] > 0 and len(record["data_sha256"]) == 64
    assert (trained / "samples_stage1.png").is_file() and (trained / "samples_stage2.png").is_file()
    ckpt = load_checkpoint(trained / "last.pt")
    cfg = GanConfig.from_dict(ckpt["config"])
    assert cfg.patch_px == PATCH and cfg.classes == ("broken_end", "knot") and cfg.extractor.kind == "random"
    models = GanModels(cfg)
    models.load_trained_state(ckpt["models"])
    z, cls = torch.randn(4, cfg.z_dim), torch.tensor([0, 1, 0, 1])
    code = models.encoder(torch.rand(4, 3, PATCH, PATCH))
    image, logit = models.g1(z, cls, code)
    assert image.shape == (4, 3, PATCH, PATCH) and logit.shape == (4, 1, PATCH, PATCH)
    assert models.d1(torch.cat([image, logit], 1), cls, code).shape == (4,)
    bg = torch.rand(4, 3, PATCH, PATCH) * 2 - 1
    soft = torch.sigmoid(logit)
    fused, m_dil = fuse(models.t, paste(image, soft, bg), soft, bg)
    assert fused.shape == bg.shape
    outside = m_dil.expand_as(bg) == 0
    assert torch.equal(fused[outside], bg[outside])  # the composite keeps the background exactly


def test_training_resumes_and_refuses_another_patch_size(trained: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    ds = write_tiny_dataset(tmp_path / "ds")
    assert main(["gan", "train", str(ds), "--out", str(run), "--patch-px", str(PATCH), "--steps", "1",
                 "--batch", "4", "--stage", "2"]) == 0  # fmt: skip
    assert json.loads((run / "record.json").read_text())["stage2_steps"] == 4
    assert main(["gan", "train", str(ds), "--out", str(run), "--patch-px", "16", "--steps", "1"]) == 2


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        GanSynthesizer(tmp_path / "nothing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="corrupt"):
        GanSynthesizer(bad)


def test_reloaded_checkpoint_samples_identically_with_the_same_seed(trained: Path, taught: Path) -> None:
    assert gan_synthesizer_from(trained).classes == ("broken_end", "knot")  # a run folder works too
    a = GanSynthesizer(taught)
    b = gan_synthesizer_from(taught)
    tile = weave_tile(96, 96, seed=3)
    ra, rb = a(tile, np.random.default_rng(7)), b(tile, np.random.default_rng(7))
    assert ra is not None and rb is not None
    np.testing.assert_array_equal(ra.image, rb.image)
    np.testing.assert_array_equal(ra.mask, rb.mask)
    assert ra.class_name == rb.class_name


@pytest.mark.parametrize("color", [False, True], ids=["gray", "colour"])
def test_gan_synthesizer_keeps_the_synthesizer_contract(taught: Path, color: bool) -> None:
    synth = GanSynthesizer(taught)
    assert isinstance(synth, Synthesizer) and synth.name == "gan" and synth.classes == ("broken_end", "knot")
    made = 0
    for seed in range(12):
        tile = weave_tile(56 + 8 * (seed % 3), 72, seed=seed, twill=bool(seed % 2), color=color)
        before = tile.copy()
        result = synth(tile, np.random.default_rng(seed))
        np.testing.assert_array_equal(tile, before)
        if result is None:
            continue
        made += 1
        assert_label_true(tile, result)
        outside = ~dilate(result.mask, MASK_DILATION_PX)
        np.testing.assert_array_equal(result.image[outside], tile[outside])  # bit-exact after uint8
        assert result.class_name in synth.classes and result.synthesizer == "gan"
    assert made >= 8
    small = weave_tile(20, 24, seed=1)  # smaller than one patch: mirrored up and cut back
    r = synth(small, np.random.default_rng(0))
    if r is not None:
        assert_label_true(small, r)
    with pytest.raises(ValueError, match="uint8"):
        synth(np.zeros((64, 64), np.float32), np.random.default_rng(0))
