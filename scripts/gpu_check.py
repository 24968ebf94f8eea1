"""Alias of ``spnas gpu-check``: ``python scripts/gpu_check.py [key=value ...]``
runs :mod:`nas.entries.gpu_check`."""

from __future__ import annotations

from nas.entries.gpu_check import run_command

if __name__ == "__main__":
    run_command()
