"""Millimetres of web per camera line, from the line rate and web speed or from an encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.errors import CalibrationError


@dataclass(frozen=True)
class AlongResult:
    mm_per_line: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_document(self) -> dict[str, Any]:
        return {"mm_per_line": self.mm_per_line, "method": self.method, "details": self.details}

    def advice(self, mm_per_px_x: float | None) -> str:
        """How far from square pixels, and what would make them square."""
        if mm_per_px_x is None:
            return ""
        ratio = self.mm_per_line / mm_per_px_x
        text = f"pixel aspect along/across = {ratio:.4f}"
        if self.method == "speed":
            square_hz = self.details["speed_m_min"] * 1000 / 60 / mm_per_px_x
            text += f"; square pixels at this speed need a line rate of {square_hz:.1f} Hz"
        elif self.method == "encoder":
            square = 1 / (self.details["pulses_per_mm"] * mm_per_px_x)
            text += f"; square pixels need {square:.4f} lines per encoder pulse"
        return text


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise CalibrationError(f"{name} {value} must be positive")
    return float(value)


def from_speed(speed_m_min: float, line_rate_hz: float) -> AlongResult:
    """Free-running camera: the web moves speed/line_rate per line."""
    speed = _positive("--speed-m-min", speed_m_min)
    rate = _positive("--line-rate-hz", line_rate_hz)
    return AlongResult(
        mm_per_line=speed * 1000.0 / 60.0 / rate,
        method="speed",
        details={"speed_m_min": speed, "line_rate_hz": rate},
    )


def from_encoder(
    lines_per_pulse: float,
    pulses_per_mm: float | None = None,
    pulses_per_rev: float | None = None,
    wheel_circumference_mm: float | None = None,
) -> AlongResult:
    """Encoder-triggered camera: `lines_per_pulse` lines for every encoder pulse.

    Give pulses per mm of web, or the encoder's pulses per revolution and the circumference of the
    measuring wheel it turns with.
    """
    k = _positive("--lines-per-pulse", lines_per_pulse)
    details: dict[str, Any] = {"lines_per_pulse": k}
    if pulses_per_mm is None:
        if pulses_per_rev is None or wheel_circumference_mm is None:
            raise CalibrationError(
                "give --encoder-pulses-per-mm, or --encoder-pulses-per-rev with --wheel-circumference-mm"
            )
        pulses_per_mm = _positive("--encoder-pulses-per-rev", pulses_per_rev) / _positive(
            "--wheel-circumference-mm", wheel_circumference_mm
        )
        details |= {"pulses_per_rev": pulses_per_rev, "wheel_circumference_mm": wheel_circumference_mm}
    p = _positive("--encoder-pulses-per-mm", pulses_per_mm)
    details["pulses_per_mm"] = p
    return AlongResult(mm_per_line=1.0 / (p * k), method="encoder", details=details)
