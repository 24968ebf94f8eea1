"""PopDB: mask the rarely explored candidates of a space from a previous search's history (source 002 §4.6).

    spnas popdb history=outputs/subnet_search/<date>/<time>/validations.jsonl [space=tiny] [threshold=0.01]
    python subnet_search.py supernet=<ckpt> tactic=concurrent search_mask=outputs/popdb/<date>/<time>/mask.json

Prints the values removed per layer and the space size before and after; writes ``mask.json``.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from nas.cli import CONFIG_DIR, hydra_entry, main_guard
from nas.io import atomic_write_json
from nas.space.search_space import SearchSpace
from nas.subnet_search.encoding import GenomeCodec
from nas.subnet_search.popdb import build_mask, format_mask_report, read_history


def popdb(cfg: DictConfig) -> dict[str, Any]:
    space = SearchSpace.from_config(cfg.space)
    genes = read_history(cfg.history, space, GenomeCodec(space))
    doc = build_mask(space, genes, threshold=float(cfg.threshold), min_cluster_size=cfg.min_cluster_size,
                     min_samples=cfg.min_samples, source=str(cfg.history))
    path = atomic_write_json(cfg.out, doc)
    print(format_mask_report(doc))
    print(f"mask written to {path}; search inside it with subnet_search.py search_mask={path}")
    return doc


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="popdb")
def main(cfg: DictConfig) -> None:
    main_guard(lambda: popdb(cfg))


def run_command() -> None:
    """``spnas popdb [overrides]``: check the command line (one ``error:`` line if it is bad), then run."""
    hydra_entry(main, "popdb")
