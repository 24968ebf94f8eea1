"""Train a derived architecture from scratch: `python train.py arch=<search run>/arch.json [overrides]`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from nas.cli import hydra_entry, main_guard
from nas.search.training import run_train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Returns the test accuracy."""
    test_acc = main_guard(lambda: run_train(cfg)["test_acc"])
    return float("nan") if test_acc is None else test_acc


if __name__ == "__main__":
    hydra_entry(main, "train")
