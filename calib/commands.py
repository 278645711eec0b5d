"""`loomsight calib`: flat field, scale across, scale along, assemble, show.

A typical session at the loom:

    loomsight calib flatfield --dark caps/dark --bright caps/white --out work/flatfield.npz
    loomsight calib scale --image caps/stripes.png --pitch-mm 2 --distortion-degree 3 --out work/scale.json
    loomsight calib along --speed-m-min 30 --line-rate-hz 8000 --out work/along.json
    loomsight calib write --scale work/scale.json --along work/along.json --flatfield work/flatfield.npz \\
        --camera-serial 40123456 --out /etc/loomsight/calibration.json
    loomsight calib show /etc/loomsight/calibration.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from runtime.commands import Command
from runtime.errors import CalibrationError

log = logging.getLogger(__name__)


def _add_flatfield(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dark", type=Path, required=True, help="dark capture: an image or a folder of images")
    p.add_argument("--bright", type=Path, required=True, help="uniform white reference: an image or a folder")
    p.add_argument("--out", type=Path, required=True, help="flat-field reference to write (.npz)")
    p.add_argument("--plot", type=Path, default=None, help="profile plot (PNG); default: beside --out")
    p.add_argument(
        "--target-level", type=float, default=None, help="DN of white after correction (default: p95)"
    )
    p.add_argument(
        "--dead-fraction", type=float, default=0.5, help="dead: signal below this share of neighbours"
    )
    p.add_argument("--hot-dn", type=float, default=10.0, help="hot: dark level this far above neighbours")
    p.add_argument("--window-px", type=int, default=51, help="running-median window for the neighbours")


def _add_scale(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", type=Path, required=True, help="image of the target (many lines of it)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-width-mm", type=float, help="width of a bar target between its two edges")
    target.add_argument(
        "--pitch-mm", type=float, help="pitch of a printed stripe target (one dark + one light)"
    )
    p.add_argument("--edges", default="auto", help="'auto' or LEFT,RIGHT edge positions in px (bar target)")
    p.add_argument(
        "--distortion-degree", type=int, default=0, help="stripe target: lens polynomial degree (0 = none)"
    )
    p.add_argument("--out", type=Path, default=None, help="write the result for `calib write --scale`")


def _add_along(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speed-m-min", type=float, help="web speed, free-running camera")
    p.add_argument("--line-rate-hz", type=float, help="camera line rate, free-running camera")
    p.add_argument("--encoder-pulses-per-mm", type=float, help="encoder pulses per mm of web")
    p.add_argument("--encoder-pulses-per-rev", type=float, help="encoder pulses per revolution of its wheel")
    p.add_argument(
        "--wheel-circumference-mm", type=float, help="circumference of the encoder's measuring wheel"
    )
    p.add_argument(
        "--lines-per-pulse", type=float, help="camera lines per encoder pulse (0.25 = one every 4)"
    )
    p.add_argument("--mm-per-px-x", type=float, default=None, help="across scale, to report the pixel aspect")
    p.add_argument("--out", type=Path, default=None, help="write the result for `calib write --along`")


def _add_write(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", type=Path, required=True, help="calibration JSON to write (the .npz goes beside it)"
    )
    across = p.add_mutually_exclusive_group(required=True)
    across.add_argument("--scale", type=Path, help="result of `calib scale --out`")
    across.add_argument("--mm-per-px-x", type=float, help="mm per pixel across, measured otherwise")
    along = p.add_mutually_exclusive_group(required=True)
    along.add_argument("--along", type=Path, help="result of `calib along --out`")
    along.add_argument("--mm-per-line", type=float, help="mm of web per line, measured otherwise")
    p.add_argument("--flatfield", type=Path, default=None, help="reference from `calib flatfield`")
    p.add_argument("--width-px", type=int, default=None, help="camera line width (when no part gives it)")
    p.add_argument("--camera-serial", default=None, help="recorded in the provenance")
    p.add_argument("--note", default=None, help="free text recorded in the provenance")
    p.add_argument("--force", action="store_true", help="overwrite an existing calibration file")


def _add_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="calibration JSON")
    p.add_argument("--json", action="store_true", help="print the file's JSON instead of the summary")


SUBCOMMANDS = {
    "flatfield": ("per-column dark and gain from dark and white captures (+ PNG plot)", _add_flatfield),
    "scale": ("mm per pixel across, from a bar or stripe target", _add_scale),
    "along": ("mm per line along, from speed and line rate or an encoder", _add_along),
    "write": ("assemble the calibration JSON + flat-field npz the runtime reads", _add_write),
    "show": ("print a calibration file (and check its flat-field hash)", _add_show),
}


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the example session's line breaks and shows defaults."""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _Formatter
    sub = parser.add_subparsers(dest="calib_command", metavar="STEP", required=True)
    for name, (help_text, add) in SUBCOMMANDS.items():
        add(
            sub.add_parser(
                name,
                help=help_text,
                description=help_text,
                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            )
        )


def _run_flatfield(args: argparse.Namespace) -> int:
    from calib.flatfield import compute_flat_field, plot_flat_field, save_reference
    from calib.images import column_stats

    dark = column_stats(args.dark, "dark")
    bright = column_stats(args.bright, "bright")
    result = compute_flat_field(
        dark.mean,
        bright.mean,
        target_level=args.target_level,
        dead_fraction=args.dead_fraction,
        hot_dn=args.hot_dn,
        window_px=args.window_px,
        dark_std=dark.std,
        bright_std=bright.std,
        inputs={
            "dark": {"path": str(args.dark), "lines": dark.lines, "files": dark.files},
            "bright": {"path": str(args.bright), "lines": bright.lines, "files": bright.files},
        },
    )
    save_reference(result, args.out)
    plot = plot_flat_field(result, args.plot or args.out.with_suffix(".png"))
    print(f"flat field: {result.summary()}")
    print(f"  from {dark.lines} dark and {bright.lines} bright lines")
    print(f"  wrote {args.out} and {plot}")
    return 0


def _run_scale(args: argparse.Namespace) -> int:
    from calib.assemble import SCALE_KIND, input_record, save_step
    from calib.images import read_image
    from calib.scale import line_profile, scale_from_edges, scale_from_stripes

    profile = line_profile(read_image(args.image))
    if args.target_width_mm is not None:
        edges = None
        if args.edges != "auto":
            try:
                left, right = (float(v) for v in args.edges.split(","))
            except ValueError:
                raise CalibrationError(
                    f"--edges {args.edges!r}: use 'auto' or LEFT,RIGHT in px, e.g. 812.5,3301.0"
                ) from None
            edges = (left, right)
        result = scale_from_edges(profile, args.target_width_mm, edges)
        d = result.details
        print(
            f"edges at {d['left_px']:.2f} and {d['right_px']:.2f} px: {d['target_px']:.2f} px = {d['target_width_mm']} mm"
        )
    else:
        result = scale_from_stripes(profile, args.pitch_mm, args.distortion_degree)
        d = result.details
        print(
            f"stripes: pitch {d['pitch_px_fft']:.3f} px (FFT), {d['coverage']:.0%} of the line used, "
            f"fit residual {d['residual_rms_mm'] * 1000:.1f} um rms, lens deviation from linear up to "
            f"{d['max_deviation_from_linear_mm']:.3f} mm"
        )
    print(
        f"mm_per_px_x = {result.mm_per_px_x:.7f} ({result.width_px} px = {result.mm_per_px_x * result.width_px:.2f} mm)"
    )
    if args.out:
        doc = result.to_document() | {"inputs": {"image": input_record(args.image)}}
        print(f"wrote {save_step(args.out, SCALE_KIND, doc)}")
    return 0


def _run_along(args: argparse.Namespace) -> int:
    from calib.along import from_encoder, from_speed
    from calib.assemble import ALONG_KIND, save_step

    encoder = (args.encoder_pulses_per_mm, args.encoder_pulses_per_rev, args.wheel_circumference_mm)
    if args.speed_m_min is not None or args.line_rate_hz is not None:
        if args.speed_m_min is None or args.line_rate_hz is None or any(v is not None for v in encoder):
            raise CalibrationError("free-running camera: give exactly --speed-m-min and --line-rate-hz")
        result = from_speed(args.speed_m_min, args.line_rate_hz)
    elif args.lines_per_pulse is not None:
        result = from_encoder(args.lines_per_pulse, *encoder)
    else:
        raise CalibrationError(
            "give --speed-m-min S --line-rate-hz R, or --lines-per-pulse K with --encoder-pulses-per-mm P "
            "(or --encoder-pulses-per-rev N --wheel-circumference-mm C)"
        )
    print(f"mm_per_line = {result.mm_per_line:.7f} ({1 / result.mm_per_line:.3f} lines per mm)")
    if advice := result.advice(args.mm_per_px_x):
        print(advice)
    if args.out:
        print(f"wrote {save_step(args.out, ALONG_KIND, result.to_document())}")
    return 0


def _run_write(args: argparse.Namespace) -> int:
    from calib.assemble import Parts, along_from_step, assemble, input_record, scale_from_step
    from calib.flatfield import load_reference

    if args.out.exists() and not args.force:
        raise CalibrationError(f"{args.out} exists; pass --force to replace it (the old one is not kept)")
    inputs: dict[str, Any] = {}
    scale = scale_from_step(args.scale) if args.scale else None
    along = along_from_step(args.along) if args.along else None
    flat = load_reference(args.flatfield) if args.flatfield else None
    if args.scale:
        inputs["scale"] = input_record(args.scale, method=scale.method if scale else None)
    if args.along:
        inputs["along"] = input_record(args.along, **(along.to_document() if along else {}))
    if flat is not None and args.flatfield:
        inputs["flat_field"] = input_record(args.flatfield, captures=flat.inputs)
    parts = Parts(
        mm_per_px_x=scale.mm_per_px_x if scale else args.mm_per_px_x,
        mm_per_line=along.mm_per_line if along else args.mm_per_line,
        width_px=args.width_px,
        scale=scale,
        along=along,
        flat_field=flat,
        inputs=inputs,
    )
    calibration = assemble(parts, camera_serial=args.camera_serial, note=args.note)
    path = calibration.save(args.out)
    print(f"wrote {path}" + (f" and {path.stem}.flatfield.npz" if flat is not None else ""))
    return _run_show(argparse.Namespace(file=path, json=False))


def _run_show(args: argparse.Namespace) -> int:
    from runtime.calibration import Calibration

    calibration = Calibration.load(args.file)  # validates the schema and the npz hash
    if args.json:
        print(args.file.read_text(encoding="utf-8"), end="")
        return 0
    for line in describe(calibration):
        print(line)
    return 0


def describe(calibration: Any) -> list[str]:
    """Human summary of a loaded runtime.calibration.Calibration."""
    import numpy as np

    width = calibration.width_px
    lines = [
        f"{calibration.source}  (loomsight.calibration/1)",
        f"  line width       {width} px",
        f"  across           {calibration.mm_per_px_x:.7f} mm/px ({calibration.mm_per_px_x * width:.2f} mm over the line)",
        f"  along            {calibration.mm_per_line:.7f} mm/line ({1 / calibration.mm_per_line:.3f} lines/mm)",
    ]
    lens = calibration.distortion
    if lens is None:
        lines.append("  lens distortion  none (linear)")
    else:
        grid = np.linspace(0.0, float(width), 257)
        deviation = np.abs(lens(grid) - grid * calibration.mm_per_px_x)
        lines.append(
            f"  lens distortion  polynomial degree {len(lens.coeffs_mm) - 1}: up to {deviation.max():.3f} mm from "
            f"linear (at px {grid[int(np.argmax(deviation))]:.0f})"
        )
    ff = calibration.flat_field
    if ff is None:
        lines.append("  flat field       none")
    else:
        good = np.ones(ff.width_px, bool)
        good[list(ff.bad_columns)] = False
        lines.append(
            f"  flat field       sha256 ok, target {ff.target_level:.1f} DN, gain {ff.gain[good].min():.3f}.."
            f"{ff.gain[good].max():.3f}, {ff.channels} channel(s)"
        )
        lines.append(
            f"                   dead columns {list(ff.dead_columns)}, hot columns {list(ff.hot_columns)}"
        )
    prov = calibration.provenance
    lines.append(
        f"  provenance       {prov.get('created_utc', '?')} by {prov.get('tool', '?')}, camera {prov.get('camera_serial') or '?'}"
    )
    for name, record in (prov.get("inputs") or {}).items():
        if isinstance(record, dict):
            lines.append(
                f"    {name:<15}{record.get('file', '')} sha256 {str(record.get('sha256', ''))[:12]}"
            )
    return lines


RUNNERS = {
    "flatfield": _run_flatfield,
    "scale": _run_scale,
    "along": _run_along,
    "write": _run_write,
    "show": _run_show,
}


def _run(args: argparse.Namespace) -> int:
    return RUNNERS[args.calib_command](args)


CALIB = Command(
    name="calib",
    help="camera calibration: flat field, mm per pixel across, mm per line along",
    add_arguments=_add_arguments,
    run=_run,
    description=__doc__,
)
