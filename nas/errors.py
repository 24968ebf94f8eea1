"""Exception types with messages that name the problem and the fix."""

from __future__ import annotations


class NASError(Exception):
    """Base class for every error the framework raises on bad input."""


class SpaceError(NASError, ValueError):
    """A search-space configuration is malformed."""


class ArchitectureError(NASError, ValueError):
    """An architecture is malformed or lies outside its search space."""


class LUTError(NASError, ValueError):
    """A latency lookup table is malformed, incomplete or made for something else."""


class DataError(NASError, FileNotFoundError):
    """A dataset is missing or laid out differently than expected."""


class ConfigError(NASError, ValueError):
    """A configuration value is out of range or inconsistent."""


class Interrupted(Exception):
    """A run stopped by a signal (SIGTERM, SIGINT) after saving a resumable checkpoint.

    ``message`` says what was saved and how to resume; the process exits with ``128 + signum`` (the shell's
    convention for a process ended by that signal: 143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def whole_number(value: object) -> int | None:
    """The integer a setting holds (an int, an integral float or such a string; not a bool), else ``None``: the one
    check behind every integer setting's error message."""
    if isinstance(value, bool):
        return None
    try:
        number = int(value)  # type: ignore[call-overload]
        return number if number == float(value) else None  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
