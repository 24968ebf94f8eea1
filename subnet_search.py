"""Search the Pareto front of sub-networks of a trained supernet, per device: `python subnet_search.py supernet=...`.

Examples:
    python search.py solver=supernet trainer.max_epochs=30                # train the supernet once
    python subnet_search.py supernet=outputs/search/<date>/<time>/checkpoints/last.ckpt budget=500
    python subnet_search.py supernet=... devices=[cpu_onnx,macs_proxy]     # one front per device, shared validations
    python subnet_search.py supernet=... hardware=cpu_torch warm_start=<other run>/pareto.json
    python subnet_search.py supernet=... algorithm=random seed=1          # the baseline
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from nas.cli import main_guard
from nas.subnet_search.run import run_subnet_search


@hydra.main(version_base="1.3", config_path="conf", config_name="subnet_search")
def main(cfg: DictConfig) -> float:
    """Returns the hypervolume of the first device's front (for Hydra sweepers)."""
    result = main_guard(lambda: run_subnet_search(cfg))
    return float(next(iter(result["pareto"]["devices"].values()))["hypervolume"])


if __name__ == "__main__":
    main()
