"""Entry-point helpers: turn the framework's input errors into one clear line instead of a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from nas.errors import NASError

T = TypeVar("T")
log = logging.getLogger("nas")


def main_guard(run: Callable[[], T]) -> T:
    """Call ``run``; on a :class:`NASError` print ``error: <message>`` and exit with status 2."""
    try:
        return run()
    except NASError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
