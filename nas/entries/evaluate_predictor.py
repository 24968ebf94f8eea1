"""How good is a predictor, and how many records does it need? (source 002 §5.4)

    spnas evaluate-predictor db=<subnet_search run>/validations.jsonl predict=error predictor=ridge
    spnas evaluate-predictor db=<run>/validations.jsonl predict=latency device=macs_proxy sizes=[200]
    spnas evaluate-predictor db=<validate_runtime_model run>/validation.json space=cifar predict=latency
        sizes=[200] test_size=100          # (one command line) a latency model from measured whole networks

Per trial (``trials``, seeded), the records are shuffled, the first ``test_size`` form the trial's fixed test set,
and the predictor is trained on the first ``n`` of the rest for every ``n`` in ``sizes`` (nested subsets). Reports
per size the mean and standard deviation over trials of the test MAPE and Kendall τ, next to a constant predictor
(the training mean), and draws ``mape_vs_n.png`` and ``pred_vs_true.png`` (last trial, largest size). For a
``validation.json`` (measured latencies) it also prints the measurement's own split-half Kendall τ, the best
rank agreement any model can show on that data. Writes ``evaluate_predictor.json`` to the run folder. The settings
are Hydra's ``key=value`` on ``nas/conf/evaluate_predictor.yaml`` (``predict=`` is what the predictor predicts;
``objective`` is the search's config group).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from nas.cli import fail, hydra_command
from nas.errors import ConfigError
from nas.io import agg_figure, write_figure
from nas.run_shell import Task
from nas.space.search_space import SearchSpace
from nas.subnet_search.encoding import GenomeCodec
from nas.subnet_search.predictors import (
    ObjectivePredictor,
    check_predictor_config,
    objective_mape_pct,
    rank_agreement,
)
from nas.subnet_search.report import OUTPUT_NAMES
from nas.subnet_search.store import read_records

RECORD_FIELDS = {n: OUTPUT_NAMES[n] for n in ("error", "ce", "macs", "params")}  # latency: per device


def load_records(path: Path, space: SearchSpace, codec: GenomeCodec, objective: str,
                 device: str | None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Genomes and ``objective`` values of a ``validations.jsonl`` or a runtime-model ``validation.json``."""
    info: dict[str, Any] = {"db": str(path)}
    if path.suffix == ".jsonl":
        records = read_records(path, space.name, space.digest, "db")
        if objective == "latency":
            devices = sorted({d for r in records for d in (r.get("latency_ms") or {})})
            if device is None and len(devices) == 1:
                device = devices[0]
            if device not in devices:
                raise ConfigError(f"db {path} has latencies of {devices}; pass device=<one of them>")
            info["device"] = device
            values = [r["latency_ms"].get(device) for r in records]
        elif objective in RECORD_FIELDS:
            values = [r.get(RECORD_FIELDS[objective]) for r in records]
        else:
            raise ConfigError(f"predict={objective!r} is unknown; choose error, ce, latency, macs or params")
        archs = [r["architecture"] for r in records]
    else:
        if not path.is_file():
            raise ConfigError(f"db={path} does not exist; pass a subnet_search run's validations.jsonl or a "
                              "validate_runtime_model.py run's validation.json")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"db {path}: not valid JSON ({err})") from None
        if not isinstance(doc, dict) or "rows" not in doc or "repeatability" not in doc:
            raise ConfigError(f"db {path} is neither a validations.jsonl nor a validation.json of "
                              "validate_runtime_model.py")
        if objective != "latency":
            raise ConfigError(f"db {path} holds measured latencies only; use predict=latency")
        digest = (doc.get("space") or {}).get("digest")
        if digest != space.digest:
            raise ConfigError(f"db {path} was measured in space '{(doc.get('space') or {}).get('name')}' (digest "
                              f"{digest}), but space '{space.name}' (digest {space.digest}) is selected; pass "
                              "space=... as measured")
        archs = [r["architecture"] for r in doc["rows"]]
        values = [r["measured_ms"] for r in doc["rows"]]
        info["split_half_kendall_tau"] = doc["repeatability"]["kendall_tau"]
        info["split_half_mape_pct"] = doc["repeatability"]["mape_pct"]
        info["hardware"] = doc.get("hardware", {}).get("backend")
    genes = [codec.encode_layers(layers, f"{path}: record {i}") for i, layers in enumerate(archs)]
    y = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if np.isnan(y).any():
        raise ConfigError(f"db {path}: {int(np.isnan(y).sum())} record(s) have no {objective} value")
    return np.array(genes, dtype=int), y, info


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    predictor_cfg = OmegaConf.to_container(cfg.predictor, resolve=True)
    check_predictor_config(predictor_cfg)
    sizes = sorted({int(n) for n in cfg.sizes})
    test_size, trials = int(cfg.test_size), int(cfg.trials)
    if not sizes or sizes[0] < 1 or test_size < 2 or trials < 1:
        raise ConfigError(f"sizes={sizes}, test_size={test_size}, trials={trials}: need sizes >= 1, test_size >= 2 "
                          "and trials >= 1")
    space = SearchSpace.from_config(cfg.space)
    codec = GenomeCodec(space)
    objective = str(cfg.predict)
    genes, y, info = load_records(Path(cfg.db), space, codec, objective, cfg.get("device"))
    usable = [n for n in sizes if n + test_size <= len(y)]
    if not usable:
        raise ConfigError(f"db has {len(y)} records; a test set of {test_size} and the smallest training size "
                          f"{sizes[0]} need {sizes[0] + test_size}: validate more sub-networks, or lower sizes / "
                          "test_size")
    if len(usable) < len(sizes):
        print(f"note: {len(y)} records; sizes above {usable[-1]} need more than a test set of {test_size} leaves")
    ObjectivePredictor(objective, codec, predictor_cfg).check_data(genes[: usable[0]], y[: usable[0]])
    rows: dict[int, dict[str, list[float]]] = {n: {"mape": [], "tau": [], "mean_mape": []} for n in usable}
    last: tuple[np.ndarray, np.ndarray] | None = None
    bar = tqdm(total=trials * len(usable), desc="trials x sizes", disable=not cfg.progress)
    for trial in range(trials):
        order = np.random.default_rng([int(cfg.seed), trial]).permutation(len(y))
        test, pool = order[:test_size], order[test_size:]
        for n in usable:
            train = pool[:n]
            model = ObjectivePredictor(objective, codec, predictor_cfg, seed=int(cfg.seed) + trial)
            model.fit(genes[train], y[train], cross_validate=False)
            pred = model.predict(genes[test])
            rows[n]["mape"].append(objective_mape_pct(objective, y[test], pred))
            rows[n]["tau"].append(rank_agreement(y[test], pred))
            rows[n]["mean_mape"].append(objective_mape_pct(objective, y[test], np.full(len(test), y[train].mean())))
            last = (y[test], pred)
            bar.update(1)
    bar.close()
    table = [{"n": n, "mape_pct_mean": float(np.mean(r["mape"])), "mape_pct_std": float(np.std(r["mape"])),
              "kendall_tau_mean": float(np.mean(r["tau"])), "kendall_tau_std": float(np.std(r["tau"])),
              "constant_mean_mape_pct": float(np.mean(r["mean_mape"]))} for n, r in rows.items()]
    out = Path(cfg.paths.output_dir)
    result = {"objective": objective, "predictor": predictor_cfg, "space": space.name, "records": int(len(y)),
              "test_size": test_size, "trials": trials, "seed": int(cfg.seed), **info,
              "mape_of": "top-1 accuracy (1 - error)" if objective == "error" else objective,
              "load_average": list(os.getloadavg()), "table": table}
    plot(out, table, last, result)
    print(f"{predictor_cfg.get('name')} predictor of {objective} ({result['mape_of']}), {len(y)} records, "
          f"test set {test_size}, {trials} trials")
    print(f"{'n':>6} {'MAPE %':>14} {'Kendall tau':>16} {'constant mean MAPE %':>22}")
    for r in table:
        print(f"{r['n']:6d} {r['mape_pct_mean']:8.3f} ±{r['mape_pct_std']:5.3f} {r['kendall_tau_mean']:9.4f} "
              f"±{r['kendall_tau_std']:6.4f} {r['constant_mean_mape_pct']:22.3f}")
    if "split_half_kendall_tau" in info:
        print(f"the measurement's own split-half Kendall tau: {info['split_half_kendall_tau']:.4f} "
              f"(MAPE {info['split_half_mape_pct']:.3f} %)")
    print(f"written to {out}: evaluate_predictor.json, mape_vs_n.png, pred_vs_true.png")
    return result


def plot(out: Path, table: list[dict[str, Any]], last: tuple[np.ndarray, np.ndarray] | None,
         result: dict[str, Any]) -> None:
    n = [r["n"] for r in table]
    fig = agg_figure(figsize=(5.5, 4))
    ax = fig.subplots()
    ax.errorbar(n, [r["mape_pct_mean"] for r in table], yerr=[r["mape_pct_std"] for r in table], marker="o",
                capsize=3, label=f"{result['predictor'].get('name')} ({result['trials']} trials)")
    ax.plot(n, [r["constant_mean_mape_pct"] for r in table], ls="--", c="0.5", label="constant (training mean)")
    ax.set_xlabel("training records")
    ax.set_ylabel(f"test MAPE (%) of {result['mape_of']}")
    ax.set_title(f"{result['objective']} predictor, test set {result['test_size']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    write_figure(out / "mape_vs_n.png", fig, dpi=120, bbox_inches="tight")
    if last is None:
        return
    truth, pred = last
    fig = agg_figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.scatter(truth, pred, s=8, alpha=0.6)
    lo, hi = float(min(truth.min(), pred.min())), float(max(truth.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], c="tab:green", lw=1, label="ideal")
    ax.set_xlabel(f"true {result['objective']}")
    ax.set_ylabel(f"predicted {result['objective']}")
    ax.set_title(f"n={table[-1]['n']}, Kendall tau {rank_agreement(truth, pred):.3f}")
    ax.legend(fontsize=8)
    write_figure(out / "pred_vs_true.png", fig, dpi=120, bbox_inches="tight")


#: ``main`` (the Hydra app); the run shell writes ``evaluate_predictor.json``
main, _run_checked = hydra_command(Task(evaluate, summary="evaluate_predictor.json"), "evaluate_predictor")


def run_command() -> None:
    """``spnas evaluate-predictor key=value ...``: ``objective=`` (this command's old name of ``predict=``, and the
    name of the search's config group) is one line naming ``predict=``; then the command line is checked and run."""
    old = [a for a in sys.argv[1:] if a.split("=", 1)[0].lstrip("+~") == "objective"]
    if old:
        fail(f"{old[0]}: evaluate-predictor's setting is predict=<error | ce | latency | macs | params> "
             "(objective is the search's config group)")
    _run_checked()
