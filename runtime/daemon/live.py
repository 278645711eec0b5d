"""The demo's live one-line summary: metres inspected, defects by class, tiles/s, drops."""

from __future__ import annotations

from typing import Any, TextIO


class LiveSummary:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last_len = 0

    @staticmethod
    def line(status: dict[str, Any]) -> str:
        defects = status.get("defects_by_class") or {}
        by_class = ", ".join(f"{k} {v}" for k, v in sorted(defects.items())) or "none"
        return (
            f"{status.get('inspected_m', 0):7.2f} m inspected | {status.get('tiles_per_s', 0):5.1f} tiles/s | "
            f"defects: {by_class} | open {status.get('open_defects', 0)} | "
            f"dropped strips {status.get('strips_dropped', 0)}"
        )

    def update(self, status: dict[str, Any]) -> None:
        text = self.line(status)
        if self.tty:
            pad = " " * max(0, self._last_len - len(text))
            self.stream.write("\r" + text + pad)
            self._last_len = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        if self.tty:
            self.stream.write("\n")
        by_class = summary.get("defects_by_class") or {}
        self.stream.write(
            f"roll done: {summary.get('inspected_m', 0):.2f} m, {sum(by_class.values())} defects "
            f"({', '.join(f'{k} {v}' for k, v in sorted(by_class.items())) or 'none'}), "
            f"{summary.get('points_per_100_sq_yd', 0)} points/100 yd²\n"
        )
        self.stream.flush()
