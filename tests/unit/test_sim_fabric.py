"""Fabric specs and weaves: serializable, validated, varied, and rendered as described."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import ConfigError
from runtime.sim.fabric import FABRICS, FabricSpec, get_fabric, random_fabric
from runtime.sim.render import FabricRenderer
from runtime.sim.weaves import WEAVES, weave_pattern


def test_catalog_has_six_weaves_gray_and_colour_and_the_default() -> None:
    assert "plain_gray" in FABRICS
    weaves = {f.weave for f in FABRICS.values()}
    assert {"plain", "twill_2_1", "twill_3_1", "satin_5", "basket"} <= weaves
    assert weaves & {"rib", "herringbone"}
    assert len(weaves) >= 6
    assert any(f.color for f in FABRICS.values()) and any(not f.color for f in FABRICS.values())
    assert all(name == f.name for name, f in FABRICS.items())


@pytest.mark.parametrize("name", sorted(FABRICS))
def test_spec_round_trips_through_a_dict(name: str) -> None:
    spec = FABRICS[name]
    import json

    data = json.loads(json.dumps(spec.to_dict()))
    assert FabricSpec.from_dict(data) == spec


def test_random_fabrics_vary_and_round_trip() -> None:
    rng = np.random.default_rng(0)
    specs = [random_fabric(rng, color=bool(i % 2)) for i in range(20)]
    assert len({s.weave for s in specs}) >= 4
    assert len({s.warp_pitch_px for s in specs}) == 20
    for s in specs:
        assert FabricSpec.from_dict(s.to_dict()) == s
        assert 1.5 <= s.warp_pitch_px <= 24
    assert all(s.color for s in specs[1::2]) and not any(s.color for s in specs[::2])


def test_bad_specs_and_names_are_errors_that_say_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        FabricSpec.from_dict({"name": "x", "wave": "plain"})
    with pytest.raises(ConfigError, match="unknown weave"):
        FabricSpec("x", weave="jacquard")
    with pytest.raises(ConfigError, match="warp_pitch_px"):
        FabricSpec("x", warp_pitch_px=0.5)
    with pytest.raises(ConfigError, match="plain_gray"):
        get_fabric("no_such_fabric")
    assert get_fabric("plain") is FABRICS["plain_gray"]


@pytest.mark.parametrize("name", sorted(WEAVES))
def test_every_weave_interlaces(name: str) -> None:
    w = weave_pattern(name)
    # Every end and every pick goes both over and under somewhere in the repeat (else it is no weave).
    assert w.any(0).all() and (~w).any(0).all()
    assert w.any(1).all() and (~w).any(1).all()


def test_weaves_are_distinct() -> None:
    shapes = {name: weave_pattern(name) for name in WEAVES}
    keys = {(p.shape, p.tobytes()) for p in shapes.values()}
    assert len(keys) == len(WEAVES)


@pytest.mark.parametrize("name", ["plain_gray", "denim_color", "satin_5_gray", "rib_gray"])
def test_rendered_fabric_looks_like_a_periodic_weave_inside_its_edges(name: str) -> None:
    spec = FABRICS[name]
    r = FabricRenderer(spec, width_px=1024, mm_per_px=0.1, mm_per_line=0.1, seed=1)
    img = r.render(0, 512)
    assert img.dtype == np.uint8 and img.shape == ((512, 1024, 3) if spec.color else (512, 1024))
    gray = img.mean(axis=2) if img.ndim == 3 else img.astype(float)
    bg = float(np.mean(spec.background_bgr)) * float(np.mean(r.illum[:10]))  # vignetted at the line end
    # Background beyond the web edge, fabric inside.
    assert abs(gray[:, :10].mean() - bg) < 8
    body = gray[:, 300:700]
    assert abs(body.mean() - bg) > 20
    # The weave is a fine periodic texture: strong spectral peak near the warp pitch across the web.
    prof = body.mean(axis=0) - body.mean()
    spec_x = np.abs(np.fft.rfft(prof))
    freqs = np.fft.rfftfreq(prof.size)
    peak = freqs[np.argmax(spec_x[5:]) + 5]
    pitch = spec.warp_pitch_px
    assert any(abs(peak - k / (pitch * m)) < 0.02 for k in (1, 2) for m in (1, 2, 4, 8))
    # Sensor noise and yarn irregularity: not flat.
    assert body.std() > 3


def test_same_spec_and_seed_give_the_same_pixels() -> None:
    a = FabricRenderer(FABRICS["twill_2_1_gray"], width_px=256, mm_per_px=0.1, mm_per_line=0.1, seed=3)
    b = FabricRenderer(
        FabricSpec.from_dict(FABRICS["twill_2_1_gray"].to_dict()),
        width_px=256,
        mm_per_px=0.1,
        mm_per_line=0.1,
        seed=3,
    )
    assert np.array_equal(a.render(1000, 1400), b.render(1000, 1400))
    assert np.array_equal(a.render(1000, 1400, 40, 90), a.render(1000, 1400)[:, 40:90])


def test_sim_help_lists_the_catalog() -> None:
    from runtime.sim.commands import CATALOG_NAMES

    assert tuple(FABRICS) == CATALOG_NAMES


def test_held_out_random_fabrics_are_named_by_seed_reproducible_and_wider_than_the_catalog() -> None:
    from runtime.sim.novel_fabrics import RANGES, novel_fabric

    specs = [get_fabric(f"random:{s}") for s in range(1, 41)]
    assert get_fabric("random:3") == specs[2]  # the same seed, the same fabric
    assert specs[0].name == "random:1"
    assert len({s.weave for s in specs}) >= 5
    assert any(s.color for s in specs) and any(not s.color for s in specs)
    for s in specs:
        assert FabricSpec.from_dict(s.to_dict()) == s
    catalog_pitch = [f.warp_pitch_px for f in FABRICS.values()]
    pitches = [s.warp_pitch_px for s in specs]
    assert min(pitches) < min(catalog_pitch) and max(pitches) > max(catalog_pitch)
    assert all(RANGES["noise_sigma"][0] <= s.noise_sigma <= RANGES["noise_sigma"][1] for s in specs)
    # the builder's training variations (random_fabric) never produce a random:SEED name
    rng = np.random.default_rng(0)
    assert not any(random_fabric(rng).name.startswith("random:") for _ in range(20))
    assert novel_fabric(7) != novel_fabric(8)


def test_a_bad_random_fabric_name_says_the_form() -> None:
    with pytest.raises(ConfigError, match="random:SEED"):
        get_fabric("random:abc")
    with pytest.raises(ConfigError, match=">= 0"):
        get_fabric("random:-2")
