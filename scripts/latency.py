"""Alias of ``spnas latency``: ``python scripts/latency.py [key=value ...]``
runs :mod:`nas.entries.latency`."""

from __future__ import annotations

from nas.entries.latency import run_command

if __name__ == "__main__":
    run_command()
