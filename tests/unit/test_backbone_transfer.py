"""RT-DETR started from the dense model's encoder: the weights land in layers 0-8 of loomsight-s,
a gray stem is spread over the three input channels (same response on a gray tile), and a
detector whose backbone is another architecture is refused with the fix named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")

from offline_train.backbone_transfer import dense_backbone, load_backbone  # noqa: E402
from offline_train.dense.model import DenseDefectNet  # noqa: E402
from offline_train.dense.train import ARCH  # noqa: E402
from offline_train.train import MODEL_CONFIGS, ensure_offline  # noqa: E402
from runtime.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.train


def _dense_ckpt(tmp_path: Path) -> tuple[Path, DenseDefectNet]:
    torch.manual_seed(0)
    net = DenseDefectNet(9, in_channels=1)
    path = tmp_path / "dense.pt"
    torch.save({"arch": ARCH, "hparams": net.hparams(), "classes": [str(i) for i in range(9)],
                "model": net.state_dict(), "spec": {}}, path)  # fmt: skip
    return path, net


def test_the_dense_encoder_becomes_the_rtdetr_backbone(tmp_path: Path) -> None:
    ensure_offline(tmp_path)
    from ultralytics import RTDETR

    path, net = _dense_ckpt(tmp_path)
    det = RTDETR(MODEL_CONFIGS["loomsight-s"])
    assert load_backbone(det, path) == 9
    inner: Any = det.model
    sd = inner.state_dict()
    for k, v in net.encoder.state_dict().items():
        if k == "0.conv.weight":
            assert sd[f"model.{k}"].shape[1] == 3
            torch.testing.assert_close(sd[f"model.{k}"].sum(dim=1, keepdim=True), v)
        else:
            torch.testing.assert_close(sd[f"model.{k}"], v)
    # on a gray tile replicated to 3 channels the transferred stem answers like the dense one
    gray = torch.rand(1, 1, 64, 64)
    holder: Any
    holder, _ = dense_backbone(path)
    holder.eval(), net.eval()
    torch.testing.assert_close(
        holder.model[0](gray.repeat(1, 3, 1, 1)), net.encoder[0](gray), atol=1e-5, rtol=1e-4
    )


def test_a_detector_with_another_backbone_is_refused(tmp_path: Path) -> None:
    ensure_offline(tmp_path)
    from ultralytics import RTDETR

    path, _ = _dense_ckpt(tmp_path)
    with pytest.raises(ConfigError, match="use --model loomsight-s"):
        load_backbone(RTDETR(MODEL_CONFIGS["loomsight-xs"]), path)
