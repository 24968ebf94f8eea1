"""The tables of docs/latency.md from runs of scripts/validate_runtime_model.py.

``python scripts/latency_report.py --help`` for its settings; runs :mod:`nas.benchmarks.latency_tables`.
"""

from __future__ import annotations

from nas.benchmarks.latency_tables import main

if __name__ == "__main__":
    raise SystemExit(main())
