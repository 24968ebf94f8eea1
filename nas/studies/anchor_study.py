"""Study B: the best searched networks of Study A, retrained longer, against the published Fashion-MNIST rows.

The networks are chosen by **validation** accuracy (never by test accuracy) among Study A's searched networks
of the chosen solvers that stay within a parameter budget, then retrained from scratch with a longer recipe
(``recipe=fashion_mnist_long``). Each record states parameters, MACs, latency measured on this CPU, test
accuracy, and the CPU time of the search that found the network and of this retraining.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nas.errors import ConfigError
from nas.io import append_jsonl, read_jsonl
from nas.studies.solver_study import RECORD_FORMAT, RECORD_VERSION, SolverStudy


def select_networks(records: list[dict[str, Any]], solvers: list[str], max_params: int, top: int) -> list[dict]:
    """The ``top`` searched networks of ``solvers`` with at most ``max_params`` parameters, by validation accuracy."""
    eligible = [r for r in records if r.get("kind") == "search" and r.get("solver") in solvers
                and r.get("params") is not None and r["params"] <= max_params and r.get("val_acc") is not None]
    return sorted(eligible, key=lambda r: (-r["val_acc"], r["key"]))[:top]


class AnchorStudy(SolverStudy):
    """Runs (or continues) Study B from ``nas/conf/study_anchors.yaml``."""

    def check_config(self) -> None:
        if not isinstance(self.cfg.select.max_params, int) or self.cfg.select.max_params < 1:
            raise ConfigError(f"select.max_params must be an integer >= 1, got {self.cfg.select.max_params}")
        if not isinstance(self.cfg.select.top, int) or self.cfg.select.top < 1:
            raise ConfigError(f"select.top must be an integer >= 1, got {self.cfg.select.top}")

    def run(self) -> list[dict[str, Any]]:
        from nas.space.architecture import Architecture, LayerChoice

        source = read_jsonl(self.cfg.source, "study network")
        chosen = select_networks(source, list(self.cfg.select.solvers), int(self.cfg.select.max_params),
                                 int(self.cfg.select.top))
        if not chosen:
            raise ConfigError(f"{self.cfg.source} has no searched network of {list(self.cfg.select.solvers)} with "
                              f"at most {self.cfg.select.max_params} parameters yet; run spnas study-solvers "
                              "first (or widen select.*)")
        self.setup_model()
        done = {r.get("key"): r for r in read_jsonl(self.records_path, "anchor network")}
        for found in chosen:
            # the first recipe's records are keyed long/...; another recipe keys its own, so both are kept
            prefix = "long" if self.cfg.retrain.recipe == "fashion_mnist_long" else str(self.cfg.retrain.recipe)
            key = f"{prefix}/{found['key']}"
            if key in done:
                continue
            arch_path = self.work / "arch" / f"{found['key'].replace('/', '_')}.json"
            if not arch_path.is_file():
                self.space.architecture([LayerChoice.from_key(k) for k in found["architecture"]]).save(arch_path)
            arch = Architecture.load(arch_path, self.space)
            print(f"{key}: retraining with recipe={self.cfg.retrain.recipe} "
                  f"(val acc in Study A {found['val_acc']:.4f})", flush=True)
            trained = self.retrain(key, arch_path)
            cpu = [found.get("search_cpu_s"), trained.get("retrain_cpu_s")]
            record = {"format": RECORD_FORMAT, "version": RECORD_VERSION, "key": key, "kind": "long",
                      "source_key": found["key"], "solver": found["solver"], "seed": found["seed"],
                      "lambda": found.get("lambda"), "architecture": arch.keys, "timm": self.timm_string(arch),
                      "predicted_latency_ms": self.model.predict(arch), **trained, "macs": self.macs(arch),
                      "search_wall_s": found.get("search_wall_s"), "search_cpu_s": found.get("search_cpu_s"),
                      "total_cpu_s": sum(cpu) if None not in cpu else None, "space": self.cfg.space,
                      "data": self.cfg.data, "hardware": self.cfg.hardware, "recipe": self.cfg.retrain.recipe,
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            append_jsonl(self.records_path, record)
            done[key] = record
        return list(done.values())

    def setup_model(self) -> None:
        """Space, data check and runtime model (no cloud, no target)."""
        from hydra.utils import instantiate

        from nas.cli import compose_config
        from nas.cost.backends import build_backend
        from nas.cost.profiler import obtain_lut
        from nas.cost.runtime_model import RuntimeModel
        from nas.space.search_space import SearchSpace

        base = compose_config("search", self.base_overrides())
        self.space = SearchSpace.from_config(base.space)
        datamodule = instantiate(base.data)
        datamodule.check_available()
        self.in_channels, self.num_classes = datamodule.in_channels, datamodule.num_classes
        self.lut = obtain_lut(self.space, build_backend(base.hardware.backend), self.in_channels, self.num_classes,
                              cache_dir=base.paths.cache_dir, progress=True)
        self.model = RuntimeModel(self.space, self.lut, self.in_channels, self.num_classes)


def anchor_table(records: list[dict[str, Any]], anchors: dict[str, float]) -> str:
    """Markdown: each long-trained network beside the published rows."""
    lines = ["| network | params | MACs | measured ms | test acc | search + training CPU h |",
             "|---|---|---|---|---|---|"]
    for r in records:
        total = r.get("total_cpu_s")
        lines.append(f"| {r['key']} | {r['params']:,} | {r['macs']:,} | {r['measured_latency_ms']:.4f} | "
                     f"{100 * r['test_acc']:.2f} % | {'n/a' if total is None else f'{total / 3600:.2f}'} |")
    lines += ["", "| published (Fashion-MNIST benchmark table) | test acc |", "|---|---|"]
    lines += [f"| {name} | {100 * value:.1f} % |" for name, value in anchors.items()]
    return "\n".join(lines) + "\n"


def write_anchor_report(records: list[dict[str, Any]], cfg: DictConfig) -> str:
    from nas.io import atomic_write_text

    text = anchor_table(records, dict(cfg.anchors))
    atomic_write_text(Path(cfg.table), text)
    return text
