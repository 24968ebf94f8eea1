"""Alias of ``spnas profile-lut``: ``python scripts/profile_lut.py [key=value ...]``
runs :mod:`nas.entries.profile_lut`."""

from __future__ import annotations

from nas.entries.profile_lut import run_command

if __name__ == "__main__":
    run_command()
