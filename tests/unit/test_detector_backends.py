"""A detector backend is one module plus one line in runtime/detect/backends.py: shown by adding one."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from runtime.config import parse_config
from runtime.detect import backends
from runtime.detect.base import BaseDetector
from runtime.detect.bundle import open_detector
from runtime.errors import ConfigError
from tests.helpers.tiny_models import write_tiny_bundle

# The whole backend, as a user would write it: the model "runs" by finding the darkest pixel.
BACKEND_MODULE = textwrap.dedent("""
    from pathlib import Path

    import numpy as np

    from runtime.detect.base import BaseDetector
    from runtime.detect.bundle import load_bundle


    class DarkestPixelDetector(BaseDetector):
        @property
        def providers(self):
            return ["darkest-pixel"]

        def raw(self, tiles):
            n, size = len(tiles), self.manifest.input.size_px
            out = np.zeros((n, self.manifest.output.num_queries, 4 + len(self.manifest.classes)), np.float32)
            for i, t in enumerate(tiles):
                y, x = np.unravel_index(int(np.argmin(t)), t.shape[:2])
                out[i, 0, :4] = [(x + 0.5) / size, (y + 0.5) / size, 4 / size, 4 / size]
                out[i, 0, 4] = 0.9  # class 0
            return out

        def close(self):
            pass


    def open_darkest(bundle_dir: Path, config):
        bundle = load_bundle(bundle_dir)
        return DarkestPixelDetector(bundle.manifest, thresholds=dict(config.thresholds))
""")


def test_a_new_backend_is_one_module_and_one_registration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "darkest_backend.py").write_text(BACKEND_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(backends.BACKENDS, "darkest", "darkest_backend:open_darkest")  # the one line
    bundle = write_tiny_bundle(tmp_path / "bundle", size_px=64)
    cfg = parse_config({"model": {"bundle": str(bundle), "backend": "darkest"}})
    det = open_detector(cfg.model)
    try:
        assert isinstance(det, BaseDetector) and det.providers == ["darkest-pixel"]
        tiles = np.full((2, 64, 64), 200, np.uint8)
        tiles[1, 40, 20] = 0
        _d0, d1 = det.infer(tiles)  # decoded by the manifest's output format, thresholds applied
        assert d1.class_id.tolist() == [0] and abs(float(d1.xyxy[0, 0]) - 18.5) < 0.01
        det.warmup(1)
    finally:
        det.close()
        sys.modules.pop("darkest_backend", None)


def test_an_unknown_backend_is_refused_naming_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match="onnxruntime, tensorrt"):
        parse_config({"model": {"backend": "openvino"}})
