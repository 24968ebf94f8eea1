"""Same-run comparison of the search solvers over seeds, every derived network retrained.

``python scripts/compare_solvers.py --help`` for its settings; runs :mod:`nas.benchmarks.solver_comparison`.
"""

from __future__ import annotations

from nas.benchmarks.solver_comparison import main

if __name__ == "__main__":
    main()
