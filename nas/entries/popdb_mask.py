"""PopDB: mask the rarely explored candidates of a space from a previous search's history (source 002 §4.6).

    spnas popdb history=outputs/subnet_search/<date>/<time>/validations.jsonl [space=tiny] [threshold=0.01]
    python subnet_search.py supernet=<ckpt> tactic=concurrent search_mask=outputs/popdb/<date>/<time>/mask.json

Prints the values removed per layer and the space size before and after; writes ``mask.json``.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from nas.cli import hydra_command
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


#: ``main`` (the Hydra app) and ``run_command`` (``spnas popdb``: the command line checked first, then run)
main, run_command = hydra_command(popdb, "popdb")
