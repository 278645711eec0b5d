"""The daemon's configuration: one TOML file, validated at start.

Every section forbids unknown keys. `load_config` turns pydantic's errors into one message per
problem that names the key path, the bad value and what is allowed (with a "did you mean"
for misspelt keys). Units are part of every numeric name.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runtime.errors import ConfigError
from runtime.taxonomy import ACROSS_WEB_STREAKS, ALONG_WEB_STREAKS, UNKNOWN_CLASS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (Jetson images)
    import tomli as tomllib

NodeValue = int | float | bool | str
Provider = Literal["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenicamSourceConfig(StrictModel):
    """A GenICam camera through a GenTL producer (.cti) and harvesters."""

    cti_path: Path | None = Field(
        None, description="GenTL producer; default $LOOMSIGHT_CTI, else the genicam wheel's viky.cti"
    )
    serial_number: str | None = None
    device_id: str | None = None
    user_defined_name: str | None = None
    nodes: dict[str, NodeValue] = Field(
        default_factory=dict, description="GenICam node values applied in order at start"
    )
    output: Literal["gray", "bgr"] = "gray"
    timeout_s: float = Field(1.0, gt=0, le=60)
    num_buffers: int = Field(8, ge=2, le=256)
    advance_lines_per_frame: int | None = Field(
        None,
        ge=1,
        description="area-scan: web advance per frame in lines; None = contiguous line-scan blocks",
    )
    no_progress_timeout_s: float = Field(
        5.0, gt=0, description="no complete frame for this long = camera lost"
    )
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)


class SyntheticSourceConfig(StrictModel):
    """The built-in synthetic loom (also the demo camera)."""

    fabric: str = "plain_gray"
    width_px: int = Field(2048, ge=64, le=16384)
    block_lines: int = Field(512, ge=1, le=65536)
    mm_per_px: float = Field(0.1, gt=0)
    mm_per_line: float = Field(0.1, gt=0)
    speed_m_min: float = Field(10.0, gt=0, le=300)
    realtime: bool = True
    seed: int = 0
    length_m: float | None = Field(None, gt=0, description="stop after this many metres; None = endless")
    defects_per_m: float = Field(1.0, ge=0)


class ReplaySourceConfig(StrictModel):
    """A folder of images or one tall web image, read in blocks of lines."""

    path: Path
    block_lines: int = Field(512, ge=1)
    realtime: bool = False
    line_rate_hz: float | None = Field(None, gt=0, description="pace when realtime; required if realtime")
    loop: bool = False

    @model_validator(mode="after")
    def _pace(self) -> ReplaySourceConfig:
        if self.realtime and self.line_rate_hz is None:
            raise ValueError("source.replay.realtime = true needs source.replay.line_rate_hz")
        return self


class SourceConfig(StrictModel):
    kind: Literal["genicam", "synthetic", "replay"] = "synthetic"
    genicam: GenicamSourceConfig = Field(default_factory=GenicamSourceConfig)
    synthetic: SyntheticSourceConfig = Field(default_factory=SyntheticSourceConfig)
    replay: ReplaySourceConfig | None = None

    @model_validator(mode="after")
    def _replay_needs_path(self) -> SourceConfig:
        if self.kind == "replay" and self.replay is None:
            raise ValueError("source.kind = 'replay' needs a [source.replay] table with a path")
        return self


class CalibrationConfig(StrictModel):
    """Where pixels become millimetres. A file from `loomsight calib` wins over the numbers here."""

    path: Path | None = None
    mm_per_px_x: float | None = Field(None, gt=0)
    mm_per_line: float | None = Field(None, gt=0)


class UnknownDefectsConfig(StrictModel):
    """The open set: a dense model's class-agnostic channel sees a defect that no class is sure of."""

    enabled: bool = Field(
        False,
        description="report a region whose peak P(defect) clears `threshold` but not its class's threshold "
        'as class "unknown" (dense bundles only)',
    )
    threshold: float = Field(0.8, gt=0, le=1, description="peak P(defect) an unknown defect must reach")


class ModelConfig(StrictModel):
    bundle: Path = Path("models/default")
    backend: str = Field("onnxruntime", description="a detector backend of runtime/detect/backends.py")
    providers: list[Provider] = Field(default_factory=lambda: list[Provider](["CPUExecutionProvider"]))
    batch_size: int = Field(4, ge=1, le=256)
    intra_op_threads: int = Field(0, ge=0, description="0 = ONNX Runtime's default")
    intra_op_spinning: bool = Field(
        True,
        description="ONNX Runtime's worker threads spin while they wait for work (its default). False frees "
        "the cores between inferences for other processes; `loomsight bench pipeline [--no-spinning]` on the "
        "2-core CPU: the daemon's tiles/s is the same either way, the bare detector 5% slower without",
    )
    thresholds: dict[str, float] = Field(default_factory=dict, description="per-class score overrides")
    unknown_defects: UnknownDefectsConfig = Field(default_factory=UnknownDefectsConfig)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        from runtime.detect.backends import BACKENDS

        if name not in BACKENDS:
            raise ValueError(f"{name!r} is not a detector backend; choose one of {', '.join(BACKENDS)}")
        return name

    def output_classes(self, model_classes: list[str]) -> list[str]:
        """The classes events can carry: the model's, and "unknown" when the open set is on."""
        return [*model_classes, UNKNOWN_CLASS] if self.unknown_defects.enabled else list(model_classes)

    warmup_runs: int = Field(2, ge=0)
    retry_load_s: float | None = Field(
        30.0,
        ge=0,
        description="a model that fails to load is retried this often (the daemon stays live, not ready); "
        "0 (or None) = exit with the error instead",
    )


class WebConfig(StrictModel):
    strip_lines: int | Literal["fit"] = Field(
        1024,
        description='new camera lines per strip, or "fit": a whole number of tile rows at the model\'s '
        "resolution (about 1,500 lines). At 0.1 mm/line and the bundled model, 1,024 lines cost 58.5 tiles "
        'per metre and "fit" 33.6 (the web can run 1.75x faster), but the default\'s extra tile rows '
        'look at most lines twice, at two offsets, which the bundled model needs: with "fit" its '
        "broken-end recall falls from 0.73 to 0.67 (loomsight eval, 28 rolls)",
    )
    overlap_lines: int | None = Field(
        None, ge=0, description="lines repeated from the previous strip; None: the model's tile overlap"
    )

    edge_mask_mm: dict[str, float] | None = Field(
        None,
        description="class -> width of the zone inside each tracked web edge where that class's detections "
        "are dropped (counted in status as edge_masked): the selvedge's border can read as a broken end. "
        "Only sides where the camera sees past the fabric are masked. None: the model bundle's own "
        "(manifest edge_mask_mm, chosen by `loomsight tune`); {} : no mask",
    )

    @field_validator("strip_lines")
    @classmethod
    def _strip_lines(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 16:
            raise ValueError(f'web.strip_lines must be >= 16 lines or "fit", got {value}')
        return value

    @field_validator("edge_mask_mm")
    @classmethod
    def _non_negative_mask(cls, mask: dict[str, float] | None) -> dict[str, float] | None:
        if mask is None:
            return None
        bad = {k: v for k, v in mask.items() if not v >= 0}
        if bad:
            raise ValueError(f"edge mask widths must be >= 0 mm, got {bad}")
        return mask

    @model_validator(mode="after")
    def _overlap(self) -> WebConfig:
        if (
            self.overlap_lines is not None
            and isinstance(self.strip_lines, int)
            and self.overlap_lines >= self.strip_lines
        ):
            raise ValueError(
                f"web.overlap_lines ({self.overlap_lines}) must be smaller than web.strip_lines ({self.strip_lines})"
            )
        return self


DEFAULT_ALONG_WEB_GAP_MM = dict.fromkeys(sorted(ALONG_WEB_STREAKS), 150.0)
DEFAULT_ACROSS_WEB_GAP_MM = dict.fromkeys(sorted(ACROSS_WEB_STREAKS), 150.0)


class MergeConfig(StrictModel):
    min_overlap_ratio: float = Field(0.3, gt=0, le=1, description="intersection over the smaller box")
    gap_mm: float = Field(3.0, ge=0, description="boxes of one class closer than this join")
    class_agnostic: bool = False
    along_web_gap_mm: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_ALONG_WEB_GAP_MM),
        description="class -> join gap along the web for streaks that run with it (a broken end the "
        "detector loses for a few cm is still one defect); the class stays open that long",
    )
    across_web_gap_mm: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_ACROSS_WEB_GAP_MM),
        description="class -> join gap across the web for streaks that run across it (broken picks)",
    )

    @field_validator("along_web_gap_mm", "across_web_gap_mm")
    @classmethod
    def _non_negative(cls, gaps: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in gaps.items() if not v >= 0}
        if bad:
            raise ValueError(f"join gaps must be >= 0 mm, got {bad}")
        return gaps


class GradingConfig(StrictModel):
    """Four-point system and the stop rule."""

    stop_points_per_100_sq_yd: float = Field(40.0, gt=0)
    stop_classes: list[str] = Field(default_factory=lambda: ["hole"])
    stop_open_length_mm: float = Field(
        1000.0, gt=0, description="a streak still open past this stops the loom"
    )
    stop_min_inspected_m: float = Field(5.0, ge=0, description="the points rule waits for this much web")
    accept_points_per_100_sq_yd: float = Field(
        40.0,
        gt=0,
        description="a roll passes when its points per 100 sq yd are at most this (the roll report's pass/fail)",
    )


class ReportConfig(StrictModel):
    """The roll report (JSON, CSV, PNG defect map) written by the daemon at every roll end."""

    dir: Path | None = Field(None, description="write each ended roll's report here; None = off")
    crops: bool = Field(False, description="also write each defect's JPEG crop")


class PublishConfig(StrictModel):
    pub_endpoint: str = "tcp://127.0.0.1:5556"
    replay_endpoint: str | None = "tcp://127.0.0.1:5557"
    control_endpoint: str | None = Field(
        None, description="ZeroMQ ROUTER for status and roll commands (runtime/daemon/control.py); None = off"
    )
    sndhwm: int = Field(20000, ge=100, description="messages; sized for >= 10 s of events")
    linger_ms: int = Field(1000, ge=0, le=60000)
    heartbeat_s: float = Field(1.0, gt=0)
    restart_grace_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="after a restart (a spool that holds events), the longest wait between binding and the "
        "first event for the subscriptions active before the restart (at least one) to come back, so plain "
        "SUB clients hear it; it ends as soon as they are back (heartbeats go out meanwhile); 0 = no wait",
    )
    jpeg_crops: bool = True
    crop_max_px: int = Field(256, ge=16)
    jpeg_quality: int = Field(85, ge=10, le=100)


class SpoolConfig(StrictModel):
    path: Path = Path("loomsight-spool.sqlite3")
    retention_days: float = Field(7.0, gt=0)
    max_mb: float = Field(512.0, gt=0)
    reserve_mb: float = Field(64.0, ge=0, description="free disk kept for the spool")


class SecurityConfig(StrictModel):
    curve: bool = False
    server_secret_key: Path | None = None
    authorized_keys_dir: Path | None = None
    recheck_s: float = Field(5.0, gt=0, description="revoked keys are cut off within this time")
    strict_modes: bool = Field(
        True,
        description="refuse an authorized_keys_dir or key file that another local user could write "
        "(like OpenSSH StrictModes); false only warns",
    )

    @model_validator(mode="after")
    def _keys(self) -> SecurityConfig:
        if self.curve and (self.server_secret_key is None or self.authorized_keys_dir is None):
            raise ValueError(
                "security.curve = true needs security.server_secret_key and security.authorized_keys_dir"
            )
        return self


class HealthConfig(StrictModel):
    """The HTTP server: /healthz, /metrics and the operator's live page (runtime/ops/operator_page.py)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)
    operator_page: Literal["off", "local", "network"] = Field(
        "local",
        description='the live page at "/": "local" answers it to this machine only (even where `host` opens '
        '/metrics to the network), "network" to anyone who reaches `host` (set `host` to the plant-network '
        'address or "0.0.0.0" too), "off" serves no page',
    )


class QueueConfig(StrictModel):
    frames: int = Field(16, ge=1)
    strips: int = Field(4, ge=1)
    batches: int = Field(4, ge=1)
    defects: int = Field(256, ge=1)


class LoomsightConfig(StrictModel):
    line_id: str = Field("line-1", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    source: SourceConfig = Field(default_factory=SourceConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    grading: GradingConfig = Field(default_factory=GradingConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    queues: QueueConfig = Field(default_factory=QueueConfig)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the table that holds `loc` (for "did you mean")."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s):"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(LoomsightConfig, loc)
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"  {key}: unknown key"
            if hint:
                msg += f" (did you mean '{hint[0]}'?)"
            if allowed:
                msg += f"; allowed here: {', '.join(allowed)}"
        else:
            msg = f"  {key} = {err.get('input')!r}: {err['msg']}"
        lines.append(msg)
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "config") -> LoomsightConfig:
    try:
        return LoomsightConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: Path | str) -> LoomsightConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config with a TOML file (see systemd/)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    return parse_config(data, str(path))
