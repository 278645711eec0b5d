"""`loomsight run`: the daemon (`--config FILE`) or the demo on the synthetic loom (`--demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime.commands import Command

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "default"


def _add_arguments(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--config", type=Path, help="TOML config (see systemd/loomsight.example.toml)")
    mode.add_argument(
        "--demo", action="store_true", help="run on the built-in synthetic loom with the bundled model"
    )
    demo = p.add_argument_group("demo options")
    demo.add_argument(
        "--length-m", type=float, default=None, help="stop after this many metres (default: endless)"
    )
    demo.add_argument("--speed-m-min", type=float, default=6.0, help="web speed")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--fabric", default="plain_gray", help="a fabric of the synthetic loom")
    demo.add_argument("--width-px", type=int, default=2048, help="camera line width")
    demo.add_argument("--defects-per-m", type=float, default=1.5)
    demo.add_argument(
        "--fast", action="store_true", help="run as fast as the detector allows (no real-time pacing)"
    )
    demo.add_argument("--model", type=Path, default=DEFAULT_BUNDLE, help="model bundle directory")
    demo.add_argument("--pub", default="tcp://127.0.0.1:5556", help="ZeroMQ PUB endpoint for events")
    demo.add_argument("--replay", default="tcp://127.0.0.1:5557", help="ZeroMQ ROUTER endpoint for replay")
    demo.add_argument(
        "--spool", type=Path, default=None, help="event spool (default: a file in the temp dir)"
    )
    demo.add_argument("--truth-out", type=Path, default=None, help="write the simulator's ground truth here")
    demo.add_argument("--quiet", action="store_true", help="no live summary line")
    demo.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="serve /healthz, /metrics and the operator's live page on 127.0.0.1:PORT (0: a free port)",
    )


def demo_config(args: argparse.Namespace) -> object:
    import tempfile

    from runtime.config import parse_config

    spool = args.spool or Path(tempfile.gettempdir()) / f"loomsight-demo-{args.seed}.sqlite3"
    return parse_config(
        {
            "line_id": "demo",
            "source": {
                "kind": "synthetic",
                "synthetic": {
                    "fabric": args.fabric,
                    "width_px": args.width_px,
                    "speed_m_min": args.speed_m_min,
                    "realtime": not args.fast,
                    "seed": args.seed,
                    "length_m": args.length_m,
                    "defects_per_m": args.defects_per_m,
                },
            },
            "model": {"bundle": str(args.model), "retry_load_s": None},
            "publish": {"pub_endpoint": args.pub, "replay_endpoint": args.replay},
            "spool": {"path": str(spool)},
            "health": {"enabled": args.http_port is not None, "port": args.http_port or 0},
        },
        source="demo options",
    )


def _run(args: argparse.Namespace) -> int:
    import json
    import signal
    import sys

    from runtime.config import LoomsightConfig, load_config
    from runtime.daemon.app import Daemon
    from runtime.daemon.live import LiveSummary
    from runtime.ops.sdnotify import Notifier

    config: LoomsightConfig = demo_config(args) if args.demo else load_config(args.config)  # type: ignore[assignment]
    source = None
    if args.demo:
        from runtime.sources.synthetic import SyntheticSource

        source = SyntheticSource(config.source.synthetic)
    health = http = None
    if config.health.enabled:
        from runtime.ops.health import HealthServer, HealthState

        health = HealthState(line_id=config.line_id, stale_after_s=10.0)
        page = None
        if config.health.operator_page != "off":
            from runtime.ops.operator_page import OperatorPage

            page = OperatorPage(
                health, config.spool.path, allow_network=config.health.operator_page == "network"
            )
        http = HealthServer.from_config(config.health, health, page).start()
        if page is not None:
            print(f"operator page: {http.url}/", file=sys.stderr, flush=True)
    live = None if (not args.demo or args.quiet) else LiveSummary(sys.stderr)
    daemon = Daemon(
        config,
        source=source,
        notifier=Notifier.from_env(),
        health=health,
        http=http,
        on_status=live.update if live else None,
    )
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    # SIGUSR1 (`systemctl kill -s USR1 loomsight`): end the current roll, the next frames start a new one
    signal.signal(signal.SIGUSR1, lambda *_: daemon.new_roll())
    summary = daemon.run()
    if live:
        live.finish(summary)
    if args.demo and args.truth_out and source is not None:
        args.truth_out.parent.mkdir(parents=True, exist_ok=True)
        truth = {
            "fabric": source.fabric.to_dict(),
            "mm_per_px": config.source.synthetic.mm_per_px,
            "mm_per_line": config.source.synthetic.mm_per_line,
            "lines": source.lines_emitted if hasattr(source, "lines_emitted") else None,
            "defects": [d.to_dict() for d in source.truth],
        }
        args.truth_out.write_text(json.dumps(truth, indent=2), encoding="utf-8")
    print(json.dumps({"roll_summary": summary}), flush=True)
    return 0


RUN = Command(
    name="run",
    help="run the inspection daemon (--config FILE) or the demo (--demo)",
    add_arguments=_add_arguments,
    run=_run,
)
