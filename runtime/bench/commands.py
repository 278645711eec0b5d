"""`loomsight bench TOPIC`: the committed benchmarks whose figures the issue notes quote.

Each topic is a module `runtime.bench.<topic>` (a dash in the topic is an underscore in the module) with `add_arguments(parser)` and `main(args) -> int`;
it prints a human summary and, with `--json FILE`, writes its figures as JSON.
"""

from __future__ import annotations

import argparse
import importlib

from runtime.commands import Command

TOPICS = {
    "sim": "synthetic loom throughput (Mpx/s on one core)",
    "merge": "merging 1,000 and 10,000 boxes",
    "publish": "publish latency on loopback at a fixed event rate",
    "pipeline": "daemon path vs bare detector (efficiency ratio)",
    "stop-latency": "last camera line of a stopping defect -> stop on PUB, on the demo line",
}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="topic", metavar="TOPIC", required=True)
    for topic, help_text in TOPICS.items():
        p = sub.add_parser(topic, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument(
            "--json", dest="json_out", default=None, help="also write the figures to this JSON file"
        )
        try:
            module = importlib.import_module(f"runtime.bench.{topic.replace('-', '_')}")
        except ImportError as exc:
            p.description = f"unavailable: {exc}"
            continue
        module.add_arguments(p)


def _run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"runtime.bench.{args.topic.replace('-', '_')}")
    return int(module.main(args))


BENCH = Command(
    name="bench",
    help="run a benchmark (sim, merge, publish, pipeline, stop-latency)",
    add_arguments=_add_arguments,
    run=_run,
)
