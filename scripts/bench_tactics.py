"""Search tactics on a trained supernet: validation vs full vs ConcurrentNAS, and PopDB.

``python scripts/bench_tactics.py --help`` for its settings; runs :mod:`nas.benchmarks.subnet_tactics`.
"""

from __future__ import annotations

from nas.benchmarks.subnet_tactics import main

if __name__ == "__main__":
    main()
