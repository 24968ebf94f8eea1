"""Time and memory of one supernet training step vs its largest and smallest child.

``python scripts/bench_search_step.py --help`` for its settings; runs :mod:`nas.benchmarks.supernet_step_cost`.
"""

from __future__ import annotations

from nas.benchmarks.supernet_step_cost import main

if __name__ == "__main__":
    main()
