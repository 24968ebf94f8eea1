"""Validation throughput against its limit: a sub-network validation vs its forward passes alone, per space.

``python scripts/bench_validation.py --help`` for its settings; runs :mod:`nas.benchmarks.validation_throughput`.
"""

from __future__ import annotations

from nas.benchmarks.validation_throughput import main

if __name__ == "__main__":
    main()
