"""Alias of ``spnas evaluate-predictor``: ``python scripts/evaluate_predictor.py [key=value ...]``
runs :mod:`nas.entries.evaluate_predictor`."""

from __future__ import annotations

from nas.entries.evaluate_predictor import run_command

if __name__ == "__main__":
    run_command()
