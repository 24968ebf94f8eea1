"""Run a hardware-aware architecture search: `python search.py [hydra overrides]`.

Examples:
    python search.py                                   # digits, tiny space, ONNX Runtime CPU LUT
    python search.py solver.lambda_=0.5 trainer.max_epochs=12
    python search.py space=cifar data=cifar10 data.root=/data hardware=cpu_torch
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from nas.cli import hydra_entry, main_guard
from nas.search.pipeline import run_search


@hydra.main(version_base="1.3", config_path="conf", config_name="search")
def main(cfg: DictConfig) -> float:
    """Returns the objective (validation accuracy, or Eq 6.2 with hardware.target_ms) for Hydra sweepers."""
    objective = main_guard(lambda: run_search(cfg)["objective"])
    return float("nan") if objective is None else objective  # None: no validation ran (a sweeper's failed trial)


if __name__ == "__main__":
    hydra_entry(main, "search")
