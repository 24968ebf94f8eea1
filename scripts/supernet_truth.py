"""Truth check of weight sharing: Kendall tau of supernet-measured vs retrained error.

``python scripts/supernet_truth.py --help`` for its settings; runs :mod:`nas.benchmarks.weight_sharing_truth`.
"""

from __future__ import annotations

from nas.benchmarks.weight_sharing_truth import main

if __name__ == "__main__":
    main()
