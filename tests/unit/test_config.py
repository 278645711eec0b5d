from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import load_config, parse_config
from runtime.errors import ConfigError


def test_defaults_are_valid() -> None:
    cfg = parse_config({})
    assert cfg.source.kind == "synthetic" and cfg.model.retry_load_s == 30.0


def test_misspelt_key_names_the_path_and_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"publish": {"pub_endpiont": "tcp://127.0.0.1:1"}})
    msg = str(err.value)
    assert "publish.pub_endpiont: unknown key" in msg and "did you mean 'pub_endpoint'" in msg
    assert "allowed here:" in msg and "replay_endpoint" in msg


def test_bad_value_names_key_value_and_what_is_allowed() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"source": {"kind": "usb"}, "model": {"batch_size": 0}})
    msg = str(err.value)
    assert "source.kind = 'usb'" in msg and "'genicam', 'synthetic' or 'replay'" in msg
    assert "model.batch_size = 0" in msg and "greater than or equal to 1" in msg


def test_cross_field_rules_are_explained() -> None:
    with pytest.raises(ConfigError, match="overlap_lines"):
        parse_config({"web": {"strip_lines": 100, "overlap_lines": 100}})
    with pytest.raises(ConfigError, match="server_secret_key"):
        parse_config({"security": {"curve": True}})
    with pytest.raises(ConfigError, match=r"\[source.replay\]"):
        parse_config({"source": {"kind": "replay"}})


def test_toml_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("line_id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    ok = tmp_path / "ok.toml"
    ok.write_text('line_id = "loom-3"\n[model]\nretry_load_s = 0\n')
    cfg = load_config(ok)
    assert cfg.line_id == "loom-3" and cfg.model.retry_load_s == 0  # 0 = exit when the model cannot load


def test_streak_join_gaps_map_to_the_models_classes_and_a_wrong_name_is_an_error() -> None:
    from runtime.daemon.app import _class_gaps
    from runtime.detect.manifest import ModelManifest
    from tests.helpers.tiny_models import manifest_fields

    fields = manifest_fields(classes=["hole", "broken_end"], size_px=64, num_queries=5)
    manifest = ModelManifest.model_validate(
        {**fields, "schema": "loomsight.model/1", "sha256": {"model.onnx": "0" * 64}}
    )
    cfg = parse_config({})
    # defaults: broken_end along the web; broken_pick (absent from this model) is skipped quietly
    assert _class_gaps(cfg.merge.along_web_gap_mm, "along", manifest) == {1: 150.0}
    assert _class_gaps(cfg.merge.across_web_gap_mm, "across", manifest) == {}
    typo = parse_config({"merge": {"along_web_gap_mm": {"broken_ends": 80}}})
    with pytest.raises(ConfigError, match=r"broken_ends.*hole, broken_end"):
        _class_gaps(typo.merge.along_web_gap_mm, "along", manifest)
    with pytest.raises(ConfigError, match=r"merge.along_web_gap_mm.*>= 0"):
        parse_config({"merge": {"along_web_gap_mm": {"broken_end": -5}}})
