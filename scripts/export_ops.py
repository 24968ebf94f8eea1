"""Alias of ``spnas export-ops``: ``python scripts/export_ops.py [key=value ...]``
runs :mod:`nas.entries.export_ops`."""

from __future__ import annotations

from nas.entries.export_ops import run_command

if __name__ == "__main__":
    run_command()
