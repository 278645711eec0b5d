"""Build the frame source a config names. The source comes back unstarted: call `start()`."""

from __future__ import annotations

import logging

from runtime.config import SourceConfig
from runtime.errors import ConfigError
from runtime.sources.base import FrameSource

log = logging.getLogger(__name__)


def open_source(config: SourceConfig) -> FrameSource:
    """A `FrameSource` for `config.kind` (genicam, synthetic or replay).

    Problems visible without touching the device (a missing `.cti`, a missing replay path or an
    empty folder) raise CameraError here; the device itself is opened by `start()`.
    """
    if config.kind == "genicam":
        from runtime.sources.genicam import GenicamSource

        return GenicamSource(config.genicam)
    if config.kind == "replay":
        if config.replay is None:
            raise ConfigError("source.kind = 'replay' needs a [source.replay] table with a path")
        from runtime.sources.replay import ReplaySource

        return ReplaySource(config.replay)
    if config.kind == "synthetic":
        from runtime.sources.synthetic import SyntheticSource

        return SyntheticSource(config.synthetic)
    raise ConfigError(f"source.kind = {config.kind!r} is not one of genicam, synthetic, replay")
