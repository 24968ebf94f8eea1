"""Alias of ``spnas validate-runtime-model``: ``python scripts/validate_runtime_model.py [key=value ...]``
runs :mod:`nas.entries.validate_runtime_model`."""

from __future__ import annotations

from nas.entries.validate_runtime_model import run_command

if __name__ == "__main__":
    run_command()
