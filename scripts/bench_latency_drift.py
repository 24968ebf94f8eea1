"""Latency drift: the temporal floor of a machine, and whether the measurement protocol moves op times.

``python scripts/bench_latency_drift.py --help`` for its settings; runs :mod:`nas.benchmarks.latency_drift`.
"""

from __future__ import annotations

from nas.benchmarks.latency_drift import main

if __name__ == "__main__":
    main()
