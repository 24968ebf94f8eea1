"""Truth study: does the supernet rank sub-networks as retraining them does? (issue 19, "truth check at scale").

Ground truth: the networks of Study A (``docs/evidence/fashion_mnist_solvers.jsonl``: searched networks and a
random cloud over the whole latency range), each retrained from scratch with the studies' recipe, and the front
networks below; their test error is the truth. For each supernet *variant* of the config (a list of ``search.py``
overrides on top of the common ones: ``solver.distill=true``, more epochs, ...):

1. the supernet is trained once (``search.py solver=supernet``, a separate process: :meth:`SolverStudy._run_in`;
   a finished variant is skipped, a killed one resumes from its ``last.ckpt``);
2. every ground-truth architecture is validated with the shared weights
   (:class:`~nas.subnet_search.evaluation.SupernetEvaluator`: BatchNorm statistics re-estimated per sub-network,
   top-1 error on the validation split the supernet was not trained on), one JSONL record per (variant, network);
3. the report ranks both: Kendall's τ (τ-b) and Spearman's ρ between the supernet error and the retrained test
   error, each with a percentile-bootstrap 95 % interval over the networks (:func:`bootstrap_interval`).

Architectures that occur more than once in the source (two searches finding the same network) count once: the
retraining is deterministic, so their records agree. Re-running skips recorded (variant, network) pairs.

More ground truth (``front``): members of the NSGA-II fronts of sub-network searches (``pareto.json``), the
networks a train-once-search-many user would deploy, ``size`` of them evenly spread over MACs, retrained here with
Study A's recipe (``retrain``) into a records file of Study A's format. Several processes may retrain them side by
side (:mod:`nas.studies.claims`). A variant's ``eval.*`` entries change how its supernet is measured (BatchNorm
batches, validation images), not how it is trained: variants that train alike share one supernet.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from nas.errors import ConfigError
from nas.io import append_jsonl, read_jsonl
from nas.studies.claims import claim, release
from nas.studies.solver_study import RECORD_FORMAT as STUDY_RECORD_FORMAT
from nas.studies.solver_study import RECORD_VERSION as STUDY_RECORD_VERSION
from nas.studies.solver_study import SolverStudy, cpu_seconds, read_sitting, with_sitting

RECORD_FORMAT = "spnas-truth-network"
RECORD_VERSION = 1
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
#: ranking baselines from the ground truth alone: (label, record field, sign). The retrained network's own
#: validation error is about the best any measurement on the validation split can do; size is the free proxy.
REFERENCES = (("retrained validation error", "retrained_val_error", 1.0),
              ("parameters (more: lower error)", "params", -1.0),
              ("MACs (more: lower error)", "macs", -1.0))


# ---------------------------------------------------------------------- ground truth
def ground_truth(records: list[dict[str, Any]], space: str, data: str) -> list[dict[str, Any]]:
    """The distinct architectures of the source records of ``space`` and ``data`` that have a test accuracy, in
    file order: ``{"key", "also", "architecture", "kind", "solver", "test_error", "val_error", "latency_ms",
    "params", "macs"}`` (``also``: keys of later records of the same architecture)."""
    networks: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in records:
        if r.get("space") != space or r.get("data") != data or r.get("test_acc") is None \
                or not r.get("architecture") or not r.get("key"):
            continue
        arch = tuple(r["architecture"])
        if arch in networks:
            networks[arch]["also"].append(r["key"])
            continue
        networks[arch] = {"key": r["key"], "also": [], "architecture": list(arch), "kind": r.get("kind"),
                          "solver": r.get("solver"), "test_error": 1.0 - float(r["test_acc"]),
                          "val_error": None if r.get("val_acc") is None else 1.0 - float(r["val_acc"]),
                          "latency_ms": r.get("measured_latency_ms"), "params": r.get("params"),
                          "macs": r.get("macs")}
    return list(networks.values())


def front_members(files: Sequence[str | os.PathLike]) -> dict[tuple[str, ...], dict[str, Any]]:
    """The distinct members of the fronts in ``pareto.json`` files (every device's), in file order:
    ``{architecture keys: {"files": [...], "error": the lowest error a front gave it}}``."""
    from nas.io import read_json_document

    members: dict[tuple[str, ...], dict[str, Any]] = {}
    for f in files:
        doc = read_json_document(f, "front.files", "spnas-pareto", 1, "sub-network search front",
                                 "pass the pareto.json of a subnet_search.py run")
        for device in (doc.get("devices") or {}).values():
            for m in device.get("members") or []:
                arch = tuple(str(m["key"]).split())
                entry = members.setdefault(arch, {"files": [], "error": None})
                if str(f) not in entry["files"]:
                    entry["files"].append(str(f))
                error = (m.get("objectives") or {}).get("error")
                if error is not None and (entry["error"] is None or error < entry["error"]):
                    entry["error"] = float(error)
    return members


def spread_over(values: Sequence[float], size: int) -> list[int]:
    """Indices of ``size`` items evenly spread over the sorted ``values`` (ties broken by position), both ends
    included; every index when ``size >= len(values)``."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    if size >= len(order):
        return order
    if size == 1:
        return [order[len(order) // 2]]
    return [order[int(round(k * (len(order) - 1) / (size - 1)))] for k in range(size)]


# ---------------------------------------------------------------------- statistics
def rank_correlations(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
    """Kendall's τ-b and Spearman's ρ of ``x`` and ``y`` with their two-sided p-values (``None`` when undefined,
    e.g. constant values)."""
    from scipy.stats import kendalltau, spearmanr

    from nas.io import finite_or_none

    if len(x) < 2 or np.ptp(np.asarray(x, dtype=float)) == 0 or np.ptp(np.asarray(y, dtype=float)) == 0:
        return {"kendall_tau": None, "kendall_p": None, "spearman_rho": None, "spearman_p": None}
    tau, rho = kendalltau(x, y), spearmanr(x, y)
    return {"kendall_tau": finite_or_none(tau.statistic), "kendall_p": finite_or_none(tau.pvalue),
            "spearman_rho": finite_or_none(rho.statistic), "spearman_p": finite_or_none(rho.pvalue)}


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's τ-b (Kendall 1945) along the last axis, vectorised over the leading ones:
    ``Σ sign(Δx)·sign(Δy) / sqrt(Σ|sign Δx| · Σ|sign Δy|)`` over the pairs ``i < j`` (tied pairs drop out of
    each factor of the denominator); NaN where either is constant. Equals :func:`scipy.stats.kendalltau`."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(x.shape[-1], k=1)
    sx, sy = np.sign(x[..., i] - x[..., j]), np.sign(y[..., i] - y[..., j])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sx * sy).sum(-1) / np.sqrt(np.abs(sx).sum(-1) * np.abs(sy).sum(-1))


def spearman_rho(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ along the last axis: Pearson's correlation of the average ranks (ties share their mean rank);
    NaN where either is constant. Equals :func:`scipy.stats.spearmanr`."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))


def bootstrap_interval(x: Sequence[float], y: Sequence[float], statistic: Callable[[np.ndarray, np.ndarray], Any],
                       resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Percentile bootstrap interval of a paired statistic (Efron & Tibshirani 1993, Sec. 13.3): resample the
    ``n`` pairs with replacement ``resamples`` times (seeded), take the ``(1 ∓ confidence) / 2`` quantiles of the
    statistic (vectorised along the last axis: :func:`kendall_tau_b`, :func:`spearman_rho`). Resamples where it
    is undefined (NaN: all values tied) are dropped and counted. Returns ``{"low", "high", "resamples",
    "undefined"}`` (``low``/``high`` ``None`` if no resample is defined)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    values = np.asarray(statistic(x[idx], y[idx]), dtype=float)
    defined = values[np.isfinite(values)]
    alpha = (1.0 - confidence) / 2.0
    low, high = (np.quantile(defined, [alpha, 1.0 - alpha]) if len(defined) else (None, None))
    return {"low": None if low is None else float(low), "high": None if high is None else float(high),
            "resamples": int(resamples), "undefined": int(len(values) - len(defined))}


def agreement(x: Sequence[float], y: Sequence[float], resamples: int, confidence: float,
              seed: int) -> dict[str, Any]:
    """τ and ρ of ``x`` against ``y`` with p-values and bootstrap intervals (:func:`bootstrap_interval`, the same
    resamples for both), and n."""
    out: dict[str, Any] = {"n": len(x), **rank_correlations(x, y)}  # constant values: None, reported as n/a
    out["kendall_ci"] = bootstrap_interval(x, y, kendall_tau_b, resamples, confidence, seed)
    out["spearman_ci"] = bootstrap_interval(x, y, spearman_rho, resamples, confidence, seed)
    return out


# ---------------------------------------------------------------------- the study
class TruthStudy(SolverStudy):
    """Runs (or continues) the truth study from ``nas/conf/study_truth.yaml``."""

    def check_config(self) -> None:
        cfg = self.cfg
        if not isinstance(cfg.get("variants"), (dict, DictConfig)) or not cfg.variants:
            raise ConfigError("variants must map a name to a list of search.py overrides, e.g. "
                              "'+variants.distill=[\"solver.distill=true\"]'")
        for name, overrides in cfg.variants.items():
            if not VARIANT_NAME.match(str(name)):
                raise ConfigError(f"variant name {name!r} must be letters, digits, '_' or '-' (it names a folder "
                                  "and the records)")
            plain = OmegaConf.to_container(overrides) if OmegaConf.is_config(overrides) else overrides
            if not isinstance(plain, list) or not all(isinstance(o, str) and "=" in o for o in plain):
                raise ConfigError(f"variants.{name} must be a list of search.py overrides (key=value), got {plain!r}")
            self.check_eval(self.variant_eval(str(name)), f"variants.{name}: eval")
        common = OmegaConf.to_container(cfg.supernet.overrides) if OmegaConf.is_config(cfg.supernet.overrides) \
            else cfg.supernet.overrides
        if not isinstance(common, list) or not all(isinstance(o, str) and "=" in o for o in common):
            raise ConfigError(f"supernet.overrides must be a list of search.py overrides (key=value), got {common!r}")
        boot = cfg.bootstrap
        if isinstance(boot.resamples, bool) or not isinstance(boot.resamples, int) or boot.resamples < 100:
            raise ConfigError(f"bootstrap.resamples must be an integer >= 100, got {boot.resamples!r}")
        if not isinstance(boot.confidence, float) or not 0.0 < boot.confidence < 1.0:
            raise ConfigError(f"bootstrap.confidence must lie in (0, 1), got {boot.confidence!r}")
        self.check_eval(cfg.eval, "eval")
        front = cfg.get("front") or {}
        size = front.get("size", 0)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigError(f"front.size must be an integer >= 0, got {size!r}")
        if size and not front.get("files"):
            raise ConfigError("front.size > 0 needs front.files: the pareto.json files of sub-network searches, "
                              "e.g. 'front.files=[docs/evidence/fashion_mnist_subnet/runs/validation/seed*/"
                              "pareto.json]'")
        if size and not (front.get("file") and front.get("records")):
            raise ConfigError("front.size > 0 needs front.file (the drawn networks) and front.records (their "
                              "retrainings)")

    @staticmethod
    def check_eval(ev: DictConfig, where: str) -> None:
        """The evaluator settings ``ev`` (``where`` names them in messages) are usable."""
        if isinstance(ev.bn_batches, bool) or not isinstance(ev.bn_batches, int) or ev.bn_batches < 0:
            raise ConfigError(f"{where}.bn_batches must be an integer >= 0, got {ev.bn_batches!r}")
        if ev.val_batches is not None and (not isinstance(ev.val_batches, int) or ev.val_batches < 1):
            raise ConfigError(f"{where}.val_batches must be an integer >= 1 or null, got {ev.val_batches!r}")
        if ev.via not in ("supernet", "child"):
            raise ConfigError(f"{where}.via must be 'supernet' or 'child', got {ev.via!r}")

    def variant_training(self, name: str) -> list[str]:
        """The variant's own ``search.py`` overrides (its entries without ``eval.``)."""
        return [o for o in self.cfg.variants[name] if not o.split("=", 1)[0].startswith("eval.")]

    def variant_eval(self, name: str) -> DictConfig:
        """How the variant's supernet is measured: ``eval`` with the variant's ``eval.*`` entries on top (an
        unknown key is a :class:`ConfigError`)."""
        own = [o for o in self.cfg.variants[name] if o.split("=", 1)[0].startswith("eval.")]
        merged = OmegaConf.merge(self.cfg.eval, {})
        OmegaConf.set_struct(merged, True)
        try:
            return OmegaConf.merge(merged, OmegaConf.from_dotlist([o[len("eval."):] for o in own]))  # type: ignore[return-value]
        except Exception as err:  # omegaconf's ConfigKeyError and parse errors
            raise ConfigError(f"variants.{name}: {own} does not fit eval ({type(err).__name__}: "
                              f"{str(err).splitlines()[0]}); known keys: {sorted(self.cfg.eval)}") from None

    def variant_overrides(self, name: str) -> list[str]:
        """``search.py``'s overrides of a variant: the study's (space, data, hardware, common), the supernet's
        (``supernet.overrides``), then the variant's own (without its ``eval.*`` entries)."""
        return [*self.base_overrides(), *self.cfg.supernet.overrides, *self.variant_training(name)]

    def retrain_base_overrides(self) -> list[str]:
        """The front networks' retraining: Study A's space, data and latency measurement (``retrain.hardware``)."""
        cfg = self.cfg
        return [f"space={cfg.space}", f"data={cfg.data}", f"hardware={cfg.retrain.hardware}", *cfg.common]

    def check_variant(self, name: str) -> DictConfig:
        """The composed ``search.py`` config of a variant; a variant that does not train ``solver=supernet`` or
        whose sampling settings do not fit is a :class:`ConfigError` (before any training)."""
        from nas.cli import compose_config
        from nas.search.solvers.supernet_training import check_sampling_settings

        composed = compose_config("search", self.variant_overrides(name))
        solver: dict[str, Any] = OmegaConf.to_container(composed.solver, resolve=True)  # type: ignore[assignment]
        if not str(solver.get("_target_", "")).endswith("SupernetTraining"):
            raise ConfigError(f"variant {name} trains {solver.get('_target_')} (solver=...), not a weight-sharing "
                              "supernet; keep solver=supernet in supernet.overrides and the variant")
        check_sampling_settings(solver["sampling"], solver["num_random"], solver.get("distill", False),
                                solver.get("distill_temperature", 1.0))
        return composed

    # ------------------------------------------------------------------ running
    def run(self) -> list[dict[str, Any]]:
        from hydra.utils import instantiate

        from nas.cli import compose_config
        from nas.space.architecture import LayerChoice
        from nas.space.search_space import SearchSpace

        source = Path(self.cfg.source)
        if not source.is_file():
            raise ConfigError(f"source={source} does not exist; run spnas study-solvers first (or pass its records)")
        base = compose_config("search", self.base_overrides())
        self.space = SearchSpace.from_config(base.space)
        datamodule = instantiate(base.data)
        datamodule.check_available()
        self.in_channels, self.num_classes = datamodule.in_channels, datamodule.num_classes
        source_records = read_jsonl(source, "study network")
        composed = {name: self.check_variant(str(name)) for name in self.cfg.variants}
        front = self.front_networks(source_records)
        if front:
            self.retrain_front(front)
            if self.cfg.front.get("only"):
                return list(read_jsonl(self.records_path, "truth record"))
        front_path = Path(self.cfg.front.records) if front else None
        front_records = read_jsonl(front_path, "study network") if front_path else []
        truth = [{**n, "source": source.name}
                 for n in ground_truth(source_records, str(self.cfg.space), str(self.cfg.data))]
        in_source = {n["key"] for n in truth}
        drawn = {tuple(n["architecture"]) for n in front}
        truth += [{**n, "source": Path(self.cfg.front.records).name}
                  for n in ground_truth(front_records, str(self.cfg.space), str(self.cfg.data))
                  if tuple(n["architecture"]) in drawn and n["key"] not in in_source]
        if len(truth) < 3:
            raise ConfigError(f"{source} holds {len(truth)} distinct networks of space={self.cfg.space} "
                              f"data={self.cfg.data} with a test accuracy; the truth study needs at least 3")
        archs = {net["key"]: self.space.architecture([LayerChoice.from_key(k) for k in net["architecture"]])
                 for net in truth}  # a network outside the space fails here, before any training
        sitting = read_sitting((self.cfg.get("sitting") or {}).get("file"))
        latency = {r["key"]: r["measured_latency_ms"] for r in with_sitting(
            [{"key": n["key"], "architecture": n["architecture"], "measured_latency_ms": n["latency_ms"]}
             for n in truth], sitting)}
        done = {r.get("key"): r for r in read_jsonl(self.records_path, "truth record")}
        print(f"Truth study: {len(truth)} networks of {source.name}, {len(composed)} supernet variant(s) "
              f"({', '.join(map(str, composed))}); {len(done)} records in {self.records_path}", flush=True)
        for name, variant_cfg in composed.items():
            name = str(name)
            todo = [n for n in truth if f"{name}/{n['key']}" not in done]
            if not todo:
                continue
            run_dir = self.train_variant(name)
            ckpt_path = run_dir / "checkpoints" / "last.ckpt"
            ev = self.variant_eval(name)
            evaluator, digest = self.evaluator(ckpt_path, variant_cfg, ev)
            recorded = {r.get("supernet_digest") for r in done.values() if r.get("variant") == name}
            if recorded - {digest}:
                raise ConfigError(f"records of variant {name} in {self.records_path} were measured on supernet "
                                  f"{sorted(recorded - {digest})}, but {ckpt_path} is {digest}; remove that "
                                  "variant's records or rename the variant")
            summary = json.loads((run_dir / "summary.json").read_text())
            for net in todo:
                start, cpu = time.perf_counter(), time.process_time()
                measured = evaluator.validate(archs[net["key"]])
                record = {"format": RECORD_FORMAT, "version": RECORD_VERSION, "key": f"{name}/{net['key']}",
                          "variant": name, "network": net["key"], "same_architecture": net["also"],
                          "kind": net["kind"], "solver": net["solver"], "architecture": net["architecture"],
                          "supernet_error": measured["error"], "supernet_ce": measured["ce"],
                          "retrained_test_error": net["test_error"], "retrained_val_error": net["val_error"],
                          "measured_latency_ms": latency[net["key"]], "params": net["params"], "macs": net["macs"],
                          "eval_s": round(time.perf_counter() - start, 3),
                          "eval_cpu_s": round(time.process_time() - cpu, 3),
                          "supernet_digest": digest, "supernet": run_dir.name,
                          "supernet_overrides": list(self.cfg.variants[name]),
                          "common_overrides": [*self.cfg.supernet.overrides],
                          "supernet_wall_s": summary.get("wall_time_s"),
                          "supernet_cpu_s": cpu_seconds(run_dir.with_suffix(".log")),
                          "supernet_epochs": summary.get("epochs"), "supernet_steps": summary.get("steps"),
                          "eval": {**OmegaConf.to_container(ev, resolve=True),  # type: ignore[dict-item]
                                   "val_samples": evaluator.num_val_samples},
                          "space": self.cfg.space, "data": self.cfg.data, "source": net["source"],
                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
                append_jsonl(self.records_path, record)
                done[record["key"]] = record
                print(f"{record['key']}: supernet error {measured['error']:.4f}, retrained test error "
                      f"{net['test_error']:.4f} ({record['eval_s']:.1f} s)", flush=True)
        return list(done.values())

    def supernet_dir(self, name: str) -> Path:
        """The variant's supernet folder: its own (``work_dir/supernet/<name>``), or the folder of a supernet trained
        with the same overrides (a variant that differs from it only in ``eval.*``)."""
        overrides = self.variant_overrides(name)
        own = self.work / "supernet" / name
        if not own.with_suffix(".json").is_file():
            for marker in sorted((self.work / "supernet").glob("*.json")):
                try:
                    if json.loads(marker.read_text()).get("overrides") == overrides:
                        return marker.with_suffix("")
                except (OSError, ValueError):
                    continue
        return own

    def train_variant(self, name: str) -> Path:
        """The run folder of the variant's supernet (:meth:`supernet_dir`), trained (or its killed training resumed)
        unless finished. The overrides it was trained with are kept beside it: a variant whose overrides changed is
        an error."""
        from nas.io import atomic_write_json

        run_dir = self.supernet_dir(name)
        overrides = self.variant_overrides(name)
        marker = run_dir.with_suffix(".json")
        if marker.is_file():
            before = json.loads(marker.read_text()).get("overrides")
            if before != overrides:
                raise ConfigError(f"variant {name} was trained in {run_dir} with {before}, but the config now gives "
                                  f"{overrides}; rename the variant (or remove {run_dir}, {marker} and its records)")
        else:
            atomic_write_json(marker, {"variant": name, "overrides": overrides})
        if not (run_dir / "summary.json").is_file():
            print(f"supernet {name}: training ({' '.join(self.variant_training(name)) or 'common settings'})",
                  flush=True)
            self._run_in(run_dir, "search", overrides, f"supernet {name}")
        self._summary(run_dir / "summary.json", f"supernet {name}", run_dir)
        return run_dir

    def evaluator(self, ckpt_path: Path, variant_cfg: DictConfig, ev: DictConfig) -> tuple[Any, str]:
        """A :class:`SupernetEvaluator` of the checkpoint on the variant's own data (its validation split is held
        out of the supernet's training) with the settings ``ev`` (:meth:`variant_eval`), and the checkpoint's
        digest."""
        from hydra.utils import instantiate

        from nas.subnet_search.evaluation import SupernetEvaluator, checkpoint_info, file_digest, load_supernet

        ckpt = checkpoint_info(ckpt_path, self.space)
        datamodule = instantiate(variant_cfg.data)
        net = load_supernet(ckpt, self.space, datamodule.in_channels, datamodule.num_classes, str(ckpt_path))
        evaluator = SupernetEvaluator.from_datamodule(net, datamodule, int(ev.bn_batches), int(ev.seed),
                                                      batch_size=ev.get("batch_size"),
                                                      val_batches=ev.get("val_batches"), via=str(ev.via))
        return evaluator, file_digest(ckpt_path)


    # ------------------------------------------------------------------ front networks
    def front_networks(self, source_records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The front networks of ``front`` (``[]`` when ``front.size`` is 0): drawn once from the members of
        ``front.files`` not in the source (:func:`front_members`, :func:`spread_over` their MACs) and kept in
        ``front.file``, so a continued study retrains the same networks; ``{"key", "architecture", "macs",
        "files", "front_error"}`` each."""
        import glob

        from nas.io import atomic_write_json
        from nas.space.architecture import LayerChoice

        front = self.cfg.front
        size = int(front.size)
        if not size:
            return []
        path = Path(front.file)
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("size") != size:
                raise ConfigError(f"{path} holds {saved.get('size')} front networks, not front.size={size}; keep "
                                  "that size or use another front.file (and front.records)")
            return saved["networks"]
        files: list[str] = []
        for pattern in front.files:
            found = sorted(glob.glob(str(pattern)))
            if not found:
                raise ConfigError(f"front.files: {pattern} matches no file; pass the pareto.json of subnet_search.py "
                                  "runs")
            files += [f for f in found if f not in files]
        in_source = {tuple(r["architecture"]) for r in source_records if r.get("architecture")}
        # kept relative to the project folder where they lie in it (the records travel with the repository)
        files = [os.path.relpath(f) if Path(f).absolute().is_relative_to(Path.cwd()) else f for f in files]
        members = [(arch, m) for arch, m in front_members(files).items() if arch not in in_source]
        if not members:
            raise ConfigError(f"front.files ({len(files)} files) have no member outside {self.cfg.source}")
        # a member outside the space fails here, before any retraining
        macs = [self.macs(self.space.architecture([LayerChoice.from_key(k) for k in arch])) for arch, _ in members]
        chosen = sorted(spread_over(macs, size), key=lambda i: (macs[i], i))
        networks = [{"key": f"front/{n:03d}", "architecture": list(members[i][0]), "macs": macs[i],
                     "files": members[i][1]["files"], "front_error": members[i][1]["error"]}
                    for n, i in enumerate(chosen)]
        atomic_write_json(path, {"size": size, "files": files, "candidates": len(members), "networks": networks})
        return networks

    def retrain_front(self, networks: list[dict[str, Any]]) -> None:
        """Retrain every front network not yet in ``front.records`` with ``retrain`` (Study A's recipe), one record
        each. A network another process has claimed (:func:`nas.studies.claims.claim`) is left to it."""
        from nas.space.architecture import LayerChoice

        path = Path(self.cfg.front.records)
        done = {r.get("key") for r in read_jsonl(path, "study network")}
        todo = [n for n in networks if n["key"] not in done]
        print(f"Front networks: {len(networks)} drawn, {len(networks) - len(todo)} retrained in {path}", flush=True)
        for net in todo:
            claim_path = self.work / "train" / (net["key"].replace("/", "_") + ".claim")
            if not claim(claim_path):
                print(f"{net['key']}: claimed by another process, skipped", flush=True)
                continue
            try:
                if net["key"] in {r.get("key") for r in read_jsonl(path, "study network")}:
                    continue  # another process finished it meanwhile
                arch = self.space.architecture([LayerChoice.from_key(k) for k in net["architecture"]])
                arch_path = self.work / "front" / f"{net['key'].split('/')[1]}.json"
                if not arch_path.is_file():
                    arch.save(arch_path)
                trained = self.retrain(net["key"], arch_path)
                record = {"format": STUDY_RECORD_FORMAT, "version": STUDY_RECORD_VERSION, "key": net["key"],
                          "kind": "front", "solver": None, "seed": None, "architecture": net["architecture"],
                          "timm": self.timm_string(arch), "front_files": net["files"],
                          "front_error": net["front_error"], **trained, "macs": net["macs"],
                          "space": self.cfg.space, "data": self.cfg.data, "hardware": self.cfg.retrain.hardware,
                          "recipe": self.cfg.retrain.recipe, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
                append_jsonl(path, record)
                print(f"{net['key']}: test acc {record['test_acc']:.4f} (front error {net['front_error']})",
                      flush=True)
            finally:
                release(claim_path)


# ---------------------------------------------------------------------- report
def variant_stats(records: list[dict[str, Any]], cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Per variant (in record order): agreement of supernet error with retrained test error, its supernet's
    training cost, and the error ranges; then the ranking baselines of :data:`REFERENCES` on the same networks."""
    boot = cfg.bootstrap
    stats: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["variant"] for r in records):
        rs = [r for r in records if r["variant"] == name and r.get("supernet_error") is not None]
        if not rs:
            continue
        x, y = [r["supernet_error"] for r in rs], [r["retrained_test_error"] for r in rs]
        stats[name] = {**agreement(x, y, int(boot.resamples), float(boot.confidence), int(boot.seed)),
                       "overrides": rs[0].get("supernet_overrides", []), "supernet_error": [min(x), max(x)],
                       "supernet_cpu_s": rs[0].get("supernet_cpu_s"), "supernet_wall_s": rs[0].get("supernet_wall_s"),
                       "eval_cpu_s": float(np.mean([r.get("eval_cpu_s") or 0.0 for r in rs]))}
    for label, x, y in reference_rankings(records):
        if len(x) >= 3:
            stats[f"reference: {label}"] = agreement(x, y, int(boot.resamples), float(boot.confidence),
                                                     int(boot.seed))
    return stats


def reference_rankings(records: list[dict[str, Any]]) -> list[tuple[str, list[float], list[float]]]:
    """Per ranking of :data:`REFERENCES`: its label, the signed quantity (lower: ranked as lower error) and the
    retrained test error of the distinct networks of ``records`` that have it."""
    networks = {r["network"]: r for r in records}.values()
    out = []
    for label, field, sign in REFERENCES:
        rs = [r for r in networks if r.get(field) is not None]
        out.append((label, [sign * r[field] for r in rs], [r["retrained_test_error"] for r in rs]))
    return out


def source_table(records: list[dict[str, Any]], cfg: DictConfig) -> str:
    """Markdown: Kendall's τ with its bootstrap interval and n per variant (and per reference ranking) within each
    ground-truth source (Study A's networks, the retrained front networks, ...); empty with fewer than two
    sources."""
    boot = cfg.bootstrap
    sources = list(dict.fromkeys(r.get("source") for r in records))
    if len(sources) < 2:
        return ""

    def cell(xs: list[float], ys: list[float]) -> str:
        if len(xs) < 3:
            return f"n/a (n = {len(xs)})"
        a = agreement(xs, ys, int(boot.resamples), float(boot.confidence), int(boot.seed))
        return f"{_ci(a['kendall_tau'], a['kendall_ci'])} (n = {a['n']})"

    lines = ["| Kendall τ within | " + " | ".join(f"`{src}`" for src in sources) + " |",
             "|---|" + "---|" * len(sources)]
    for name in dict.fromkeys(r["variant"] for r in records):
        cells = []
        for src in sources:
            rs = [r for r in records if r["variant"] == name and r.get("source") == src
                  and r.get("supernet_error") is not None]
            cells.append(cell([r["supernet_error"] for r in rs], [r["retrained_test_error"] for r in rs]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    by_source = {src: reference_rankings([r for r in records if r.get("source") == src]) for src in sources}
    for i, (label, _, _) in enumerate(REFERENCES):
        cells = [cell(*by_source[src][i][1:]) for src in sources]
        lines.append(f"| reference: {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ci(value: float | None, ci: dict[str, Any]) -> str:
    if value is None:
        return "n/a"
    if ci["low"] is None:
        return f"{value:+.2f}"
    return f"{value:+.2f} [{ci['low']:+.2f}, {ci['high']:+.2f}]"


def truth_table(stats: dict[str, dict[str, Any]], confidence: float, resamples: int) -> str:
    """Markdown: per variant n, τ and ρ with their bootstrap intervals and p-values, the supernet error range and
    the supernet's training CPU time; the reference rankings below."""
    pct = f"{100 * confidence:g} %"
    lines = [f"| variant | n | Kendall τ [{pct} CI] | p | Spearman ρ [{pct} CI] | p | supernet error | "
             "training CPU min | CPU s per validation | overrides |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in stats.items():
        p_tau = "n/a" if s["kendall_p"] is None else f"{s['kendall_p']:.2g}"
        p_rho = "n/a" if s["spearman_p"] is None else f"{s['spearman_p']:.2g}"
        if name.startswith("reference: "):
            err, cpu, per, over = "-", "-", "-", "-"
        else:
            lo, hi = s["supernet_error"]
            err = f"{100 * lo:.1f}-{100 * hi:.1f} %"
            cpu = "n/a" if s.get("supernet_cpu_s") is None else f"{s['supernet_cpu_s'] / 60:.1f}"
            per = "n/a" if not s.get("eval_cpu_s") else f"{s['eval_cpu_s']:.1f}"
            over = " ".join(f"`{o}`" for o in s["overrides"]) or "(common only)"
        lines.append(f"| {name} | {s['n']} | {_ci(s['kendall_tau'], s['kendall_ci'])} | {p_tau} | "
                     f"{_ci(s['spearman_rho'], s['spearman_ci'])} | {p_rho} | {err} | {cpu} | {per} | {over} |")
    lines += ["", f"Rank agreement with the retrained test error over the same networks; intervals: percentile "
              f"bootstrap over the networks ({resamples} resamples, seeded). Reference rows rank by a quantity of "
              "the retrained networks themselves (their validation error: about the best a measurement on the "
              "validation split can do) or by size."]
    return "\n".join(lines) + "\n"


def plot_truth(records: list[dict[str, Any]], stats: dict[str, dict[str, Any]], path: str | os.PathLike) -> None:
    """One panel per variant: supernet error against retrained test error, searched and cloud networks."""
    from nas.io import agg_figure, write_figure

    names = [n for n in stats if not n.startswith("reference: ")]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = agg_figure(figsize=(4.0 * cols, 3.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        rs = [r for r in records if r["variant"] == name]
        for kind, marker, colour in (("cloud", "o", "0.5"), ("search", "*", "tab:blue"), ("front", "^", "tab:red")):
            sel = [r for r in rs if r.get("kind") == kind]
            if not sel:
                continue
            ax.scatter([100 * r["supernet_error"] for r in sel], [100 * r["retrained_test_error"] for r in sel],
                       marker=marker, s=60 if marker == "*" else 18, color=colour, label=f"{kind} (n={len(sel)})")
        s = stats[name]
        tau = "n/a" if s["kendall_tau"] is None else f"{s['kendall_tau']:.2f}"
        ci = s["kendall_ci"]
        band = "" if ci["low"] is None else f" [{ci['low']:.2f}, {ci['high']:.2f}]"
        ax.set_title(f"{name}: τ = {tau}{band}", fontsize=9)
        ax.set_xlabel("error with shared supernet weights (%)")
        ax.set_ylabel("retrained test error (%)")
        ax.legend(fontsize=7)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    write_figure(path, fig, dpi=120)


def write_truth_report(records: list[dict[str, Any]], cfg: DictConfig) -> str:
    """Write the table (markdown) and the figure of the truth study from its records; returns the table."""
    from nas.io import atomic_write_text

    records = [r for r in records if r.get("format") == RECORD_FORMAT]
    stats = variant_stats(records, cfg)
    text = truth_table(stats, float(cfg.bootstrap.confidence), int(cfg.bootstrap.resamples))
    by_source = source_table(records, cfg)
    if by_source:
        text += "\nWithin each ground-truth source (the same statistic on the networks of one file):\n\n" + by_source
    atomic_write_text(cfg.table, text)
    if any(not n.startswith("reference: ") for n in stats):
        plot_truth(records, stats, cfg.figure)
    return text
