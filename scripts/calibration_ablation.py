"""Refit validation runs' calibration with other models, scored on their held-out networks.

``python scripts/calibration_ablation.py --help`` for its settings; runs :mod:`nas.benchmarks.calibration_models`.
"""

from __future__ import annotations

from nas.benchmarks.calibration_models import main

if __name__ == "__main__":
    main()
