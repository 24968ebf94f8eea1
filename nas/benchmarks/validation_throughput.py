"""Validation throughput against its limit: what one sub-network validation costs vs its forward passes alone.

    python scripts/bench_validation.py --spaces tiny cifar --archs 6 --repeats 3 --json docs/validation_throughput.json

A validation (:meth:`SupernetEvaluator.validate`, ``eval.via=child`` as configured by default) re-estimates
BatchNorm on ``--bn-batches`` training batches and scores the validation split. Its *limit* is those forward
passes alone: the calibration batches in train mode and the validation batches in eval mode through the child
network, built beforehand, with nothing else. Per space this measures, on the same uniformly drawn
sub-networks, interleaved (so load on a shared machine hits every variant alike), the minimum over
``--repeats`` rounds of:

* ``limit``: the forward passes alone;
* ``validate``: ``validate()`` end to end (child assembly, BN reset, scoring, cross-entropy);
* ``rebuild``: the same with the child built anew by ``extract_child`` for every validation (what ``validate()``
  did before it kept the extracted blocks);
* ``engine``: what the search adds per validation (pricing, the optimiser, the record in ``validations.jsonl``
  with its fsync), from a search with an instant validator.

Figures are CPU seconds of this process (what a validation costs, little affected by other processes on the
core) and wall seconds; ``ratio`` = limit / (validate + engine). The data are scikit-learn's digits at the
space's resolution (``data=digits``: batch 64 for BN, the 270-image validation split); the supernet is
``--supernet`` or a randomly initialised one of the space (the cost of a forward pass does not depend on the
weights). Writes the figures to ``--json``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from nas.benchmarks import benchmark_command, command_parser
from nas.benchmarks.trained_supernet import bench_config, supernet_evaluator
from nas.errors import ConfigError
from nas.io import atomic_write_json
from nas.space.architecture import Architecture
from nas.space.search_space import SearchSpace
from nas.subnet_search.evaluation import SupernetEvaluator
from nas.supernets.bn_calibration import reestimate_batchnorm
from nas.supernets.single_path_supernet import SinglePathSupernet

FORMAT = "spnas-validation-throughput"
VERSION = 1


def parser() -> argparse.ArgumentParser:
    ap = command_parser(__doc__)
    ap.add_argument("--spaces", nargs="+", default=["tiny", "cifar"])
    ap.add_argument("--archs", type=int, default=6, help="sub-networks drawn uniformly per space")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the minimum is kept")
    ap.add_argument("--bn-batches", type=int, default=4)
    ap.add_argument("--supernet", default=None, help="a checkpoint of the (single) space (default: random weights)")
    ap.add_argument("--engine-budget", type=int, default=300, help="validations of the engine-overhead search")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the figures here (e.g. docs/validation_throughput.json)")
    return ap


def clocks() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def timed(call: Callable[[], Any]) -> tuple[float, float]:
    """CPU and wall seconds of ``call()``."""
    cpu, wall = clocks()
    call()
    cpu2, wall2 = clocks()
    return cpu2 - cpu, wall2 - wall


class Variants:
    """The measured ways of validating one sub-network with one evaluator (``via=child``)."""

    def __init__(self, evaluator: SupernetEvaluator) -> None:
        self.ev = evaluator

    @torch.no_grad()
    def forwards(self, net: torch.nn.Module) -> None:
        """The forward passes of a validation, nothing else: calibration batches in train mode, then the
        validation batches in eval mode."""
        net.train()
        for x in self.ev.calibration:
            net(x)
        net.eval()
        for x, _ in self.ev.validation:
            net(x)

    def limit(self, arch: Architecture) -> tuple[float, float]:
        child = self.ev.child(arch)
        return timed(lambda: self.forwards(child))

    def validate(self, arch: Architecture) -> tuple[float, float]:
        return timed(lambda: self.ev.validate(arch))

    @torch.no_grad()
    def rebuild(self, arch: Architecture) -> tuple[float, float]:
        def run() -> None:
            child = self.ev.supernet.extract_child(arch).to(self.ev.device)
            reestimate_batchnorm(child, child, self.ev.calibration)
            child.eval()
            for x, y in self.ev.validation:
                out = child(x)
                int((out.argmax(1) != y).sum())
                float(torch.nn.functional.cross_entropy(out.double(), y, reduction="sum"))
        return timed(run)


class InstantValidator:
    """Objective values without any computation (a hash of the architecture): the engine's own cost."""

    def validate(self, arch: Architecture) -> dict[str, float]:
        h = int(hashlib.sha256(" ".join(arch.keys).encode()).hexdigest()[:8], 16) / 16**8
        return {"error": 0.1 + 0.8 * h, "ce": 1.0 + h}


def engine_seconds(space: SearchSpace, in_ch: int, n_cls: int, budget: int, seed: int) -> tuple[float, float]:
    """CPU and wall seconds the search engine spends per validation (NSGA-II, population 50, MACs-proxy LUT,
    records written to a temporary ``validations.jsonl``)."""
    from nas.cost.backends import MacsProxy
    from nas.cost.profiler import profile_space
    from nas.subnet_search.encoding import GenomeCodec
    from nas.subnet_search.engine import AlgorithmConfig, BudgetedSearch
    from nas.subnet_search.hypervolume import Normalisation
    from nas.subnet_search.search_objectives import ObjectiveSpace, Target
    from nas.subnet_search.store import ValidationStore

    lut = profile_space(space, MacsProxy(), in_ch, n_cls, progress=False)
    target = Target.from_lut("proxy", space, lut, in_ch, n_cls)
    objectives = ObjectiveSpace.build(GenomeCodec(space), ["error", "latency"], [target], in_ch, n_cls)
    norm = Normalisation.build(objectives.names, objectives.bounds("proxy"))
    with tempfile.TemporaryDirectory() as folder:
        store = ValidationStore(Path(folder) / "validations.jsonl", "bench", space.digest,
                                {"proxy": target.fingerprint})
        search = BudgetedSearch(objectives, "proxy", InstantValidator(), store, AlgorithmConfig(population=50),
                                budget, seed, norm)
        cpu, wall = timed(search.run)
        n = search.result.consumed
    return cpu / n, wall / n


def measure_space(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The figures of one space (see the module docstring)."""
    cfg = bench_config(name, [f"eval.bn_batches={args.bn_batches}"])
    space = SearchSpace.from_config(cfg.space)
    datamodule = instantiate(cfg.data)
    if args.supernet:
        evaluator = supernet_evaluator(args.supernet, space, datamodule, args.bn_batches, via="child")
    else:
        torch.manual_seed(args.seed)
        net = SinglePathSupernet(space, datamodule.in_channels, datamodule.num_classes)
        evaluator = SupernetEvaluator.from_datamodule(net, datamodule, args.bn_batches, seed=0, via="child")
    rng = random.Random(args.seed)
    archs = [space.sample(rng) for _ in range(args.archs)]
    variants = Variants(evaluator)
    steps = {"limit": variants.limit, "validate": variants.validate, "rebuild": variants.rebuild}
    for arch in archs[:1]:  # warm-up: first-use allocations, the kept blocks of the first child
        for step in steps.values():
            step(arch)
    best: dict[str, list[tuple[float, float]]] = {k: [(float("inf"), float("inf"))] * len(archs) for k in steps}
    for _ in range(args.repeats):
        for i, arch in enumerate(archs):
            for key, step in steps.items():
                cpu, wall = step(arch)
                best[key][i] = (min(best[key][i][0], cpu), min(best[key][i][1], wall))
    per = {key: {"cpu_s": sum(c for c, _ in v) / len(archs), "wall_s": sum(w for _, w in v) / len(archs)}
           for key, v in best.items()}
    engine_cpu, engine_wall = engine_seconds(space, datamodule.in_channels, datamodule.num_classes,
                                             args.engine_budget, args.seed)
    per["engine"] = {"cpu_s": engine_cpu, "wall_s": engine_wall}
    ratio = {clock: per["limit"][clock] / (per["validate"][clock] + per["engine"][clock])
             for clock in ("cpu_s", "wall_s")}
    return {"space": name, "searchable_layers": len(space.searchable_layers), "archs": args.archs,
            "bn_batches": len(evaluator.calibration), "bn_batch_size": int(evaluator.calibration[0].shape[0]),
            "val_samples": evaluator.num_val_samples, "resolution": space.resolution,
            "supernet": args.supernet or "random weights", "per_validation": per,
            "ratio_to_limit": ratio,
            "ratio_validate_only": {c: per["limit"][c] / per["validate"][c] for c in ("cpu_s", "wall_s")},
            "ratio_before": {c: per["limit"][c] / (per["rebuild"][c] + per["engine"][c]) for c in ("cpu_s", "wall_s")},
            "validations_per_s": {"limit": 1 / per["limit"]["wall_s"],
                                  "search": 1 / (per["validate"]["wall_s"] + per["engine"]["wall_s"])}}


def conditions(threads: int) -> dict[str, Any]:
    """Where and how it was measured: threads, the cores this process may use, the load."""
    return {"threads": threads, "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None, "cpu_count": os.cpu_count(), "loadavg": list(os.getloadavg()),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
            "machine": platform.processor() or platform.machine()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every space, print the table, write ``--json``; returns the document."""
    if args.archs < 1 or args.repeats < 1 or args.engine_budget < 50:
        raise ConfigError("--archs and --repeats must be >= 1 and --engine-budget >= 50 (one population)")
    if args.supernet and len(args.spaces) != 1:
        raise ConfigError("--supernet is a checkpoint of one space; pass that one space with --spaces")
    torch.set_num_threads(args.threads)
    before = conditions(args.threads)
    spaces = [measure_space(name, args) for name in args.spaces]
    doc = {"format": FORMAT, "version": VERSION, "conditions": before,
           "loadavg_after": list(os.getloadavg()), "spaces": {s["space"]: s for s in spaces}}
    print_table(doc)
    if args.json:
        atomic_write_json(args.json, doc)
        print(f"written to {args.json}")
    return doc


def print_table(doc: dict[str, Any]) -> None:
    c = doc["conditions"]
    print(f"threads={c['threads']} cores={c['affinity']} load {c['loadavg'][0]:.2f} -> {doc['loadavg_after'][0]:.2f}"
          " (1-min load average); per validation, minimum over rounds, mean over sub-networks")
    print(f"{'space':<7}{'clock':<6}{'limit ms':>10}{'validate':>10}{'engine':>8}{'rebuild':>9}{'ratio':>7}"
          f"{'before':>8}")
    for name, s in doc["spaces"].items():
        p = s["per_validation"]
        for clock in ("cpu_s", "wall_s"):
            print(f"{name:<7}{clock[:-2]:<6}{p['limit'][clock] * 1e3:>10.1f}{p['validate'][clock] * 1e3:>10.1f}"
                  f"{p['engine'][clock] * 1e3:>8.2f}{p['rebuild'][clock] * 1e3:>9.1f}"
                  f"{s['ratio_to_limit'][clock]:>7.3f}{s['ratio_before'][clock]:>8.3f}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python scripts/bench_validation.py [--spaces tiny cifar] [--json docs/validation_throughput.json]``."""
    return benchmark_command(parser(), run, argv)
