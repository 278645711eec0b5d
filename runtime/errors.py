"""The small set of exceptions Loomsight raises on purpose.

Every message names the bad value and says how to fix it. Code that catches these at a process
boundary prints the message (no traceback) and exits non-zero.
"""

from __future__ import annotations


class LoomsightError(Exception):
    """Base class: an expected failure with a message meant for the operator."""


class ConfigError(LoomsightError):
    """A configuration file or command-line value is missing, unknown or out of range."""


class ModelError(LoomsightError):
    """A model bundle is missing, corrupt, or does not match its manifest or this runtime."""


class CameraError(LoomsightError):
    """The frame source cannot be opened, configured or read."""


class SourceInputError(CameraError):
    """The frame source's input itself is wrong (a replay file, not a camera fault): retrying
    cannot clear it, so the daemon stops at the first one instead of retrying."""


class CalibrationError(LoomsightError):
    """A calibration file is missing, malformed, or does not fit the camera."""


class SpoolError(LoomsightError):
    """The durable event spool cannot be opened or written."""


class MissingExtraError(LoomsightError):
    """A command needs an optional dependency group that is not installed."""

    def __init__(self, command: str, extra: str, missing_module: str) -> None:
        self.command = command
        self.extra = extra
        self.missing_module = missing_module
        super().__init__(
            f"'loomsight {command}' needs the '{extra}' extra (module {missing_module!r} is not installed): "
            f"pip install 'loomsight[{extra}]'"
        )


class ReportError(LoomsightError):
    """A roll report cannot be made: no such roll in the spool, or an output folder not writable."""
