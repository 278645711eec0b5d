"""The model bundle contract (`manifest.json`, schema "loomsight.model/1").

A bundle is a directory: `model.onnx`, optional `model.engine` (built per GPU) and `manifest.json`.
The manifest says what the model expects (input size, channels, normalisation), what it returns
(RT-DETR: cx, cy, w, h normalised + per-class scores; or a dense model's probability maps), the resolution it was trained at
(`mm_per_px`), how to tile, the per-class thresholds and the sha256 of every model file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runtime.errors import ModelError

MODEL_SCHEMA = "loomsight.model/1"
MANIFEST_NAME = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalization(_Strict):
    """x_model = (x_uint8 * scale - mean) / std, per channel."""

    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


class InputSpec(_Strict):
    name: str = "images"
    size_px: int = Field(gt=0, description="square tile side the model takes")
    channels: Literal[1, 3] = 3
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    layout: Literal["NCHW"] = "NCHW"
    color: Literal["gray", "rgb"] = Field(
        "gray", description="gray: the web is converted to gray (replicated to 3 channels); rgb: colour"
    )
    batch: int | None = Field(None, ge=1, description="fixed batch size of model.onnx, None = dynamic")
    normalization: Normalization = Field(default_factory=Normalization)


class RtdetrOutput(_Strict):
    """(N, queries, 4 + C): cx, cy, w, h normalised to the input, then one probability per class."""

    name: str = "output0"
    format: Literal["rtdetr"] = "rtdetr"
    boxes: Literal["cxcywh_normalized"] = "cxcywh_normalized"
    scores: Literal["per_class_probability"] = "per_class_probability"
    num_queries: int = Field(gt=0)


class MaskOutput(_Strict):
    """(N, 1 + C, H / stride, W / stride) probabilities of a dense model: channel 0 is P(defect),
    channels 1..C are P(class | defect). The runtime turns connected regions into boxes
    (`runtime.detect.mask_decode`)."""

    name: str = "output0"
    format: Literal["mask"] = "mask"
    stride_px: Literal[1, 2, 4] = Field(description="input pixels per output cell")
    channels: Literal["defect+classes"] = "defect+classes"
    region_floor: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="P(defect) at which cells join a region; a region is reported when its "
        "peak P(defect) clears its class's threshold",
    )


OutputSpec = RtdetrOutput  # the name older code and tests use
AnyOutput = Annotated[RtdetrOutput | MaskOutput, Field(discriminator="format")]


class TileSpec(_Strict):
    size_px: int = Field(gt=0)
    overlap_px: int = Field(ge=0)

    @model_validator(mode="after")
    def _overlap(self) -> TileSpec:
        if self.overlap_px >= self.size_px:
            raise ValueError(f"tile.overlap_px ({self.overlap_px}) must be < tile.size_px ({self.size_px})")
        return self


class ModelManifest(_Strict):
    schema_: Literal["loomsight.model/1"] = Field(alias="schema")
    name: str
    classes: list[str] = Field(min_length=1)
    input: InputSpec
    output: AnyOutput
    mm_per_px: float = Field(gt=0, description="web resolution the model was trained at")
    tile: TileSpec
    thresholds: dict[str, float]
    edge_mask_mm: dict[str, float] = Field(
        default_factory=dict,
        description="class -> zone inside each web edge where this model's detections of it are not trusted "
        "(chosen by `loomsight tune`; the config's web.edge_mask_mm overrides it)",
    )
    onnx_opset: int = Field(ge=7, le=18)
    sha256: dict[str, str] = Field(description="file name -> hex sha256 of every model file in the bundle")
    provenance: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _rtdetr_by_default(cls, data: Any) -> Any:
        """Manifests written before dense models carry no output format: they are RT-DETR."""
        if isinstance(data, dict) and isinstance(data.get("output"), dict) and "format" not in data["output"]:
            data = {**data, "output": {**data["output"], "format": "rtdetr"}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        unknown = sorted(set(self.thresholds) - set(self.classes))
        if unknown:
            raise ValueError(
                f"thresholds name classes the model does not have: {unknown}; classes: {self.classes}"
            )
        unknown = sorted(set(self.edge_mask_mm) - set(self.classes))
        if unknown:
            raise ValueError(
                f"edge_mask_mm names classes the model does not have: {unknown}; classes: {self.classes}"
            )
        negative = {c: v for c, v in self.edge_mask_mm.items() if not v >= 0}
        if negative:
            raise ValueError(f"edge_mask_mm widths must be >= 0 mm, got {negative}")
        if self.tile.size_px != self.input.size_px:
            raise ValueError(
                f"tile.size_px ({self.tile.size_px}) must equal input.size_px ({self.input.size_px})"
            )
        if "model.onnx" not in self.sha256:
            raise ValueError("sha256 must list model.onnx")
        return self

    def threshold_for(self, class_name: str, default: float = 0.5) -> float:
        return self.thresholds.get(class_name, default)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2, sort_keys=False) + "\n"


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(bundle_dir: Path) -> ModelManifest:
    """Parse and validate `manifest.json`; every failure is a ModelError that says what to do."""
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise ModelError(
            f"model bundle {bundle_dir} does not exist; set model.bundle in the config to a directory "
            "made by `loomsight export`"
        )
    if not path.is_file():
        raise ModelError(
            f"model bundle {bundle_dir} has no {MANIFEST_NAME}; re-export it with `loomsight export`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}); the bundle is corrupt, re-export it") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} must hold a JSON object")
    schema = data.get("schema")
    if schema != MODEL_SCHEMA:
        raise ModelError(
            f"{path}: schema is {schema!r} but this runtime reads {MODEL_SCHEMA!r}; "
            "export the model with this version of loomsight"
        )
    try:
        return ModelManifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in exc.errors()
        )
        raise ModelError(f"{path} does not match {MODEL_SCHEMA}: {problems}") from None


def verify_files(bundle_dir: Path, manifest: ModelManifest, names: list[str] | None = None) -> None:
    """Check that each listed model file exists and its sha256 matches the manifest."""
    for name in names if names is not None else list(manifest.sha256):
        expected = manifest.sha256.get(name)
        path = bundle_dir / name
        if expected is None:
            raise ModelError(
                f"{path} is not listed in {MANIFEST_NAME} sha256; refusing to load an unlisted file"
            )
        if not path.is_file():
            raise ModelError(f"model bundle {bundle_dir} lacks {name} (listed in {MANIFEST_NAME})")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(
                f"{path}: sha256 {actual[:16]}… does not match the manifest's {expected[:16]}…; "
                "the file is corrupt or was replaced; re-export the bundle"
            )
