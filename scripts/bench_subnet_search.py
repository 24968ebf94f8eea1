"""Sub-network search on a trained supernet: NSGA-II vs random search, warm vs cold start.

``python scripts/bench_subnet_search.py --help`` for its settings; runs :mod:`nas.benchmarks.subnet_search_algorithms`.
"""

from __future__ import annotations

from nas.benchmarks.subnet_search_algorithms import main

if __name__ == "__main__":
    main()
