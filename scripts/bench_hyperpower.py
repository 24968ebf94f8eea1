"""HyperPower vs vanilla constrained BO vs random search on digits (thesis Sec 3.4).

``python scripts/bench_hyperpower.py --help`` for its settings; runs :mod:`nas.benchmarks.hyperpower_vs_baselines`.
"""

from __future__ import annotations

from nas.benchmarks.hyperpower_vs_baselines import main

if __name__ == "__main__":
    main()
