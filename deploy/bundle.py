"""Write a model bundle directory: model files plus a manifest that lists their sha256."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from runtime.detect.manifest import MANIFEST_NAME, MODEL_SCHEMA, ModelManifest, sha256_file


def write_bundle(out_dir: Path, files: dict[str, Path], manifest_fields: dict[str, Any]) -> ModelManifest:
    """Copy `files` (bundle name -> source path) into `out_dir` and write a validated manifest.

    The directory is assembled next to its destination and renamed into place, so a crash never
    leaves a half-written bundle under the final name.
    """
    if "model.onnx" not in files:
        raise ValueError("a bundle needs model.onnx")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o755 & ~umask)  # mkdtemp makes it 0700; a daemon user must be able to read it
    try:
        for name, src in files.items():
            shutil.copyfile(src, staging / name)
        fields = dict(manifest_fields)
        fields["schema"] = MODEL_SCHEMA
        fields["sha256"] = {name: sha256_file(staging / name) for name in files}
        manifest = ModelManifest.model_validate(fields)
        (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        if out_dir.exists():
            backup = out_dir.with_name(out_dir.name + ".old")
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(out_dir, backup)
            os.replace(staging, out_dir)
            shutil.rmtree(backup)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def read_manifest_dict(bundle_dir: Path) -> dict[str, Any]:
    return dict(json.loads((Path(bundle_dir) / MANIFEST_NAME).read_text(encoding="utf-8")))
