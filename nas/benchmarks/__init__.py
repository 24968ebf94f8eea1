"""Benchmarks and reports: the logic of the command lines in ``scripts/`` (``python scripts/<name>.py --help``).

One module per benchmark, each with ``main(argv=None)``: its command line is parsed by
:class:`nas.cli.CommandLineParser` and the benchmark runs under :func:`nas.cli.main_guard`, so bad input is one
``error:`` line and exit status 2, like every ``spnas`` command. Configs are composed by
:func:`nas.cli.compose_config` (no raw YAML), figures drawn on :func:`nas.io.agg_figure` (no pyplot).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def benchmark_command(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], T],
                      argv: Sequence[str] | None = None) -> T:
    """Parse ``argv`` (default: the process' arguments) with ``parser`` and call ``run(args)``; bad input ends in
    one ``error:`` line, exit status 2 (:func:`nas.cli.main_guard`)."""
    from nas.cli import main_guard

    args = parser.parse_args(None if argv is None else list(argv))
    return main_guard(lambda: run(args))


def command_parser(doc: str | None, full: bool = True) -> argparse.ArgumentParser:
    """The parser of a benchmark whose module docstring is ``doc``: its ``--help`` shows the whole docstring
    (``full``) or its first line; errors are one line (:class:`nas.cli.CommandLineParser`)."""
    from nas.cli import CommandLineParser

    text = doc or ""
    if full:
        return CommandLineParser(description=text, formatter_class=argparse.RawDescriptionHelpFormatter)
    return CommandLineParser(description=text.split("\n")[0])
