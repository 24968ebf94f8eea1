"""Time and memory of one search step of each solver relative to single-path.

``python scripts/bench_solvers.py --help`` for its settings; runs :mod:`nas.benchmarks.solver_step_cost`.
"""

from __future__ import annotations

from nas.benchmarks.solver_step_cost import main

if __name__ == "__main__":
    main()
