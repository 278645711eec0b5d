"""The new fabric's training set, and fine-tuning a bundle's model on it within a time budget.

The training set is the clean training images tiled at the model's resolution (the runtime's own
resampling and tiler, via the dataset builder), each pass giving the tiles different synthetic
defects (`variants` passes), plus a few simulator webs with their rendered defects so the classes
no synthesizer makes (thin places, floats, slubs, holes) are not forgotten. The held-back images
are the set's validation split. The bundle's own fine-tunable weights (`checkpoint.pt`, written by
`loomsight export --include-checkpoint`) start the run; which trainer runs follows the bundle's
output format (RT-DETR: ultralytics with its `time` budget; mask: the dense trainer's `hours`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from offline_train.dataset.builder import DatasetCard, DatasetSpec, build_dataset
from offline_train.dataset.webs import LabelledWeb, simulator_webs
from runtime.detect.manifest import ModelManifest
from runtime.errors import ConfigError

log = logging.getLogger(__name__)

MIN_MINUTES = 0.1  # below this (6 s) not one pass over even a small set finishes on two cores


def fine_tunable_weights(bundle: Path) -> Path:
    path = Path(bundle) / "checkpoint.pt"
    if not path.is_file():
        raise ConfigError(
            f"bundle {bundle} carries no fine-tunable weights (checkpoint.pt); export it with "
            "`loomsight export CHECKPOINT --out DIR --include-checkpoint`, or pass --minutes 0 to only choose "
            "thresholds for the new fabric"
        )
    return path


def check_budget(minutes: float) -> None:
    if minutes != 0 and minutes < MIN_MINUTES:
        raise ConfigError(
            f"--minutes {minutes}: a fine-tune needs at least {MIN_MINUTES:g} min (one pass over a small set on this CPU); give more, "
            "or --minutes 0 to only choose thresholds"
        )


def _passes(webs: Sequence[LabelledWeb], variants: int) -> Iterator[LabelledWeb]:
    for k in range(variants):
        for w in webs:
            yield dataclasses.replace(w, name=f"{w.name}_v{k}")


def build_training_set(
    out: Path,
    manifest: ModelManifest,
    train: Sequence[LabelledWeb],
    val: Sequence[LabelledWeb],
    synthesizers: Sequence[Any],
    *,
    variants: int,
    sim_webs: int,
    seed: int,
    recipe: dict[str, Any],
    progress: Callable[[str], None] | None = None,
) -> DatasetCard:
    """The fine-tuning dataset (train: `variants` passes over `train` + `sim_webs` simulator webs; val: `val`)."""
    spec = DatasetSpec(
        classes=tuple(manifest.classes),
        mm_per_px=manifest.mm_per_px,
        tile_px=manifest.tile.size_px,
        overlap_px=manifest.tile.overlap_px,
        color=manifest.input.color,
        val_every=0,
        synth_probability=0.75 if synthesizers else 0.0,
        clean_keep_probability=0.35,
        seed=seed,
    )
    sims = simulator_webs(
        sim_webs, length_m=2.0, width_px=2048, mm_per_px=0.1, mm_per_line=0.1, seed=seed + 4242,
        defects_per_m=6.0,
    )  # fmt: skip
    webs: list[LabelledWeb] = [*_passes(train, variants)]
    webs_iter = (*webs, *(dataclasses.replace(w, split="train") for w in sims), *val)
    return build_dataset(webs_iter, out, spec, synthesizers, progress=progress, recipe=recipe)


def fine_tune(
    dataset: Path,
    manifest: ModelManifest,
    weights: Path,
    *,
    minutes: float,
    out: Path,
    seed: int,
    batch: int = 8,
) -> tuple[Path, dict[str, Any]]:
    """Train from `weights` for `minutes`; the best checkpoint and the trainer's metrics."""
    if manifest.output.format == "mask":
        from offline_train.dense.train import DenseOptions, train_dense

        d = train_dense(
            DenseOptions(
                dataset=dataset, out=out, name="adapt", weights=weights, epochs=10_000, batch=batch,
                samples_per_epoch=800, lr0=5e-4, seed=seed, hours=minutes / 60, checkpoint_every_s=120.0,
                command="loomsight adapt",
            )
        )  # fmt: skip
        return d.best, d.metrics
    from offline_train.train import TrainOptions, train

    r = train(
        TrainOptions(
            dataset=dataset, out=out, name="adapt", weights=weights, epochs=1000, batch=batch,
            seed=seed, time_hours=minutes / 60, command="loomsight adapt", workers=0,
        )
    )  # fmt: skip
    return r.best, r.metrics


def export(checkpoint: Path, out: Path, manifest: ModelManifest, *, name: str) -> Path:
    """The fine-tuned weights as a bundle (with its own fine-tunable checkpoint), the source's
    thresholds as the start of the threshold choice."""
    from deploy.export import ExportOptions, export_bundle

    result = export_bundle(
        ExportOptions(
            checkpoint=checkpoint, out=out, thresholds=dict(manifest.thresholds), include_checkpoint=True,
            latency_runs=3, parity_tiles=4, name=name, command="loomsight adapt",
        )
    )  # fmt: skip
    return result.bundle
