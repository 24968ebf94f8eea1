"""Alias of ``spnas popdb``: ``python scripts/popdb.py [key=value ...]``
runs :mod:`nas.entries.popdb_mask`."""

from __future__ import annotations

from nas.entries.popdb_mask import run_command

if __name__ == "__main__":
    run_command()
