"""What ``python subnet_search.py`` does, as a function of its Hydra config (tests call it directly).

Order of work: every input is checked before anything costly runs or anything is written (objectives,
algorithm, budget, reference point, checkpoint and warm-start digests, constraints against the cheapest
sub-network); then the LUTs of the target devices, the data and the supernet are loaded; then one budgeted
search per device runs over a shared validation store, so each sub-network is validated once for all devices.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from nas.cli import CONFIG_DIR, SignalStop, compose_config, resume_command, stop_on_signals
from nas.cost.backends import build_backend
from nas.cost.profiler import obtain_lut
from nas.errors import ConfigError, Interrupted, NASError
from nas.space.search_space import SearchSpace
from nas.subnet_search.encoding import GenomeCodec
from nas.subnet_search.engine import AlgorithmConfig, BudgetedSearch, GenerationRecord, check_budget, validate_many
from nas.subnet_search.evaluation import SupernetEvaluator, checkpoint_info, file_digest, load_supernet
from nas.subnet_search.hypervolume import Normalisation
from nas.subnet_search.popdb import load_mask
from nas.subnet_search.predictors import ObjectivePredictor, check_predictor_config
from nas.subnet_search.ranks import Launch, RankLost, RankPool, agree, cuda_index, init_ranks, launch_from_env
from nas.subnet_search.report import format_table, load_warm_start, plot_fronts, plot_hv, write_hv_csv, write_pareto
from nas.subnet_search.search_objectives import ObjectiveSpace, Target, check_objective_names
from nas.subnet_search.store import ValidationStore
from nas.subnet_search.tactics import PredictorSearch, TacticConfig

log = logging.getLogger(__name__)

def device_configs(cfg: DictConfig) -> list[dict[str, Any]]:
    """The hardware configs of the target devices: ``devices=[name, ...]`` (files of ``nas/conf/hardware/``, or
    full mappings) or the single ``hardware`` group."""
    devices = cfg.get("devices")
    if not devices:
        return [OmegaConf.to_container(cfg.hardware, resolve=True)]
    out = []
    overrides = hardware_overrides()
    for entry in devices:
        if isinstance(entry, str):
            path = CONFIG_DIR / "hardware" / f"{entry}.yaml"
            if not path.is_file():
                options = sorted(p.stem for p in (CONFIG_DIR / "hardware").glob("*.yaml"))
                raise ConfigError(f"devices: no hardware config {entry!r}; choose from {options} or give a mapping")
            # composed by Hydra like the hardware group itself, so hardware.* overrides reach every device
            composed = compose_config("subnet_search", [f"hardware={entry}", *overrides], keep_global=True)
            out.append(OmegaConf.to_container(composed.hardware, resolve=True))
        else:
            out.append(dict(_plain(entry)))
    return out


def hardware_overrides() -> list[str]:
    """The running Hydra app's command-line overrides of ``hardware.*`` settings (none outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").startswith("hardware.")]


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def prepare(cfg: DictConfig, priced: bool = True) -> dict[str, Any]:
    """Check every input and load what the search needs; nothing is written (except the LUT cache). Without
    ``priced`` (a rank that only validates) no LUT is obtained: ``objectives`` and ``norms`` are ``None``."""
    names = [str(n) for n in cfg.objectives]
    check_objective_names(names)
    algorithm = AlgorithmConfig.from_config(_plain(cfg.algorithm))
    algorithm.check_objectives(len(names))
    tactic = TacticConfig.from_config(_plain(cfg.tactic))
    if tactic.uses_predictors:
        if algorithm.name == "random":
            raise ConfigError(f"tactic={tactic.name} runs an evolutionary algorithm on the predictors; use "
                              "algorithm=nsga2 (or agemoea, ga), or tactic=validation for random search")
        check_budget(cfg.budget, 1)
        tactic.check_budget(cfg.budget)
        check_predictor_config(_plain(cfg.predictor))
    else:
        check_budget(cfg.budget, algorithm.population)
    reference = _plain(cfg.hv.get("reference"))
    if reference is not None:
        Normalisation.build(names, [(0.0, 1.0)] * len(names), reference)  # checks length and sign early
    space = SearchSpace.from_config(cfg.space)
    mask = load_mask(cfg.search_mask, space) if cfg.get("search_mask") else None
    codec = GenomeCodec(space, mask)
    if cfg.supernet is None:
        raise ConfigError("supernet=<run>/checkpoints/last.ckpt is required (a search.py run with solver=supernet)")
    ckpt = checkpoint_info(cfg.supernet, space)
    warm = load_warm_start(cfg.warm_start, space, codec, cfg.get("warm_start_device")) if cfg.warm_start else None
    datamodule = instantiate(cfg.data)
    in_ch, n_cls = datamodule.in_channels, datamodule.num_classes
    parts = {"space": space, "codec": codec, "algorithm": algorithm, "tactic": tactic, "objectives": None,
             "norms": None, "warm": warm, "datamodule": datamodule, "supernet_digest": file_digest(cfg.supernet)}
    if priced:
        parts["objectives"], parts["norms"] = price(cfg, space, codec, names, reference, mask, in_ch, n_cls)
    parts["supernet"] = load_supernet(ckpt, space, in_ch, n_cls, source=str(cfg.supernet))
    return parts


def price(cfg: DictConfig, space: SearchSpace, codec: GenomeCodec, names: list[str], reference: Any, mask: Any,
          in_ch: int, n_cls: int) -> tuple[ObjectiveSpace, dict[str, Normalisation]]:
    """The objectives of the target devices (their LUTs obtained or profiled) and each device's normalisation."""
    targets = []
    for hw in device_configs(cfg):
        backend = build_backend(hw["backend"])
        lut = obtain_lut(space, backend, in_ch, n_cls, cache_dir=cfg.paths.cache_dir, lut_path=hw.get("lut_path"),
                         strict=bool(hw.get("strict", False)), progress=bool(cfg.progress))
        targets.append(Target.from_lut(str(hw.get("name", backend.name)), space, lut, in_ch, n_cls))
    objectives = ObjectiveSpace.build(codec, names, targets, in_ch, n_cls, _plain(cfg.constraints))
    # hypervolumes are normalised with the bounds of the whole space, so a masked search is comparable
    unmasked = objectives if mask is None else ObjectiveSpace.build(GenomeCodec(space), names, targets, in_ch, n_cls)
    norms = {t.name: Normalisation.build(names, unmasked.bounds(t.name), reference) for t in targets}
    return objectives, norms


def output_dir(cfg: DictConfig) -> Path:
    """The run folder: ``resume=<old run>`` continues that folder's ``validations.jsonl``."""
    if cfg.get("resume"):
        out = Path(cfg.resume)
        if not (out / "validations.jsonl").is_file():
            raise ConfigError(f"resume={out}: no validations.jsonl there; pass the folder of the killed run")
        return out
    return Path(cfg.paths.output_dir)


def run_subnet_search(cfg: DictConfig, validator: Any = None) -> dict[str, Any]:
    """Run the search of ``cfg``; ``validator`` replaces the supernet evaluator (tests).

    Under torchrun or srun (:func:`~nas.subnet_search.ranks.launch_from_env`) every rank runs this: each checks
    the inputs and builds its evaluator, rank 0 searches and writes, the others validate their shares
    (:class:`~nas.subnet_search.ranks.RankPool`); every rank returns rank 0's result."""
    start = time.perf_counter()
    torch.manual_seed(int(cfg.seed))
    device = eval_device(cfg)
    launch = launch_from_env()
    group = init_ranks(launch, device, cfg.get("threads")) if launch is not None else None
    rank = launch.rank if launch is not None else 0
    failure: NASError | None = None
    try:
        out = output_dir(cfg)
        parts = prepare(cfg, priced=rank == 0)
        if validator is None:
            validator = SupernetEvaluator.from_datamodule(
                parts["supernet"], parts["datamodule"], int(cfg.eval.bn_batches), int(cfg.eval.seed),
                batch_size=cfg.eval.get("batch_size"), val_batches=cfg.eval.get("val_batches"),
                via=str(cfg.eval.get("via", "supernet")), device=device_of(device, launch))
    except NASError as err:
        if launch is None:
            raise
        failure = err
    if launch is not None:
        agree(failure, group)
        pool = RankPool(validator, group)
        if rank != 0:
            return serve(pool, rank)
        try:
            result = search_and_report(cfg, out, parts, pool, start, launch.world_size)
        except BaseException as err:
            pool.close(error=f"{type(err).__name__}: {err}".splitlines()[0])
            raise
        pool.close(result)
        return result
    return search_and_report(cfg, out, parts, validator, start, 1)


def eval_device(cfg: DictConfig) -> str:
    """``eval.device``: ``cpu`` or ``cuda`` (checked before any work)."""
    device = str(cfg.eval.get("device", "cpu"))
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"eval.device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("eval.device=cuda but torch sees no GPU here; use eval.device=cpu")
    return device


def device_of(device: str, launch: Launch | None) -> str:
    """The torch device of this process: its GPU (:func:`~nas.subnet_search.ranks.cuda_index`) for ``cuda``."""
    return f"cuda:{cuda_index(launch.local_rank if launch is not None else 0)}" if device == "cuda" else "cpu"


def serve(pool: RankPool, rank: int) -> dict[str, Any]:
    """A rank other than 0: validate its shares until rank 0 stops; rank 0's result."""
    try:
        with stop_on_signals():
            return pool.serve()
    except SignalStop as stop:
        import signal

        raise Interrupted(stop.signum, f"rank {rank} stopped by {signal.Signals(stop.signum).name}; rank 0 keeps "
                          "the validated sub-networks") from None


def search_and_report(cfg: DictConfig, out: Path, parts: dict[str, Any], validator: Any, start: float,
                      ranks: int) -> dict[str, Any]:
    """The searches of every device over the shared store, then ``pareto.json``, ``hv.csv``, the figures and the
    summary (one process, or rank 0 of several with ``validator`` a pool over the ranks)."""
    space, codec, algorithm = parts["space"], parts["codec"], parts["algorithm"]
    objectives, norms = parts["objectives"], parts["norms"]
    fingerprints = {t.name: t.fingerprint for t in objectives.targets}
    store = ValidationStore(out / "validations.jsonl", parts["supernet_digest"], space.digest, fingerprints)
    log.info("space '%s': %d searchable layers, %d sub-networks; %d validations on record in %s",
             space.name, codec.n_var, codec.size, len(store), out)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"))

    def on_generation(device: str, rec: GenerationRecord) -> None:
        writer.add_scalar(f"hv/{device}", rec.hypervolume, rec.validations)
        writer.add_scalar(f"front_size/{device}", rec.front_size, rec.validations)
        writer.add_scalar(f"validations/{device}", rec.validations, rec.generation)

    tactic = parts["tactic"]
    results = []
    rounds: dict[str, list[dict[str, Any]]] = {}
    timed = TimedValidator(validator)
    previous_front = None
    try:
        with stop_on_signals():
            for target in objectives.targets:
                initial = parts["warm"]
                if initial is None and cfg.get("chain_warm_start") and previous_front is not None:
                    initial = previous_front
                common = dict(initial=initial, progress=bool(cfg.progress), on_generation=on_generation)
                args = (objectives, target.name, timed, store, algorithm, int(cfg.budget), int(cfg.seed),
                        norms[target.name])
                if tactic.uses_predictors:
                    search = PredictorSearch(*args, tactic=tactic, predictor_config=_plain(cfg.predictor), **common)
                else:
                    search = BudgetedSearch(*args, **common)
                result = search.run()
                results.append(result)
                rounds[target.name] = getattr(search, "rounds", [])
                previous_front = [result.genes[i] for i in result.front()]
    except SignalStop as stop:
        import signal

        raise Interrupted(stop.signum, f"stopped by {signal.Signals(stop.signum).name} after {timed.count} validations "
                          f"this run; {safe(store, out)}") from None
    except RankLost as lost:
        raise RankLost(f"{lost}; {safe(store, out)}") from None
    finally:
        writer.flush()

    header = {"space": space.name, "space_digest": space.digest,
              "supernet": {"path": str(cfg.supernet), "digest": parts["supernet_digest"]},
              **objectives.describe(), "algorithm": dataclasses.asdict(algorithm),
              "tactic": dataclasses.asdict(tactic),
              "predictor": _plain(cfg.predictor).get("name") if tactic.uses_predictors else None,
              "search_mask": str(cfg.search_mask) if cfg.get("search_mask") else None, "budget": int(cfg.budget),
              "seed": int(cfg.seed), "eval": _plain(cfg.eval),
              "warm_start": str(cfg.warm_start) if cfg.warm_start else None}
    doc = write_pareto(out, header, results, codec, objectives.names, norms, fingerprints)
    write_hv_csv(out / "hv.csv", results, norms)
    plot_fronts(out / "pareto_front.png", results, objectives.names,
                title=f"{algorithm.name}, budget {cfg.budget}, seed {cfg.seed}")
    plot_hv(out / "hv_vs_validations.png",
            {r.target: [(h.validations, h.hypervolume) for h in r.history] for r in results},
            title=f"{algorithm.name}, seed {cfg.seed}")
    predictor_files = save_predictors(out, results, objectives, codec, _plain(cfg.predictor), int(cfg.seed)) \
        if tactic.uses_predictors else {}
    wall = time.perf_counter() - start
    summary = {"output_dir": str(out), "space": space.name, "algorithm": algorithm.name, "tactic": tactic.name,
               "predictor_rounds": rounds, "predictors": predictor_files, "budget": int(cfg.budget),
               "seed": int(cfg.seed), "devices": {r.target: {"validations": r.consumed, "fresh_validations": r.fresh,
                                                             "hypervolume": doc["devices"][r.target]["hypervolume"],
                                                             "front_size": len(doc["devices"][r.target]["members"]),
                                                             "stopped_early": r.stopped_early} for r in results},
               "supernet_evaluations": timed.count, "records_on_file": len(store),
               "records_resumed": store.loaded,
               "validation_seconds": round(timed.seconds, 3),
               "validations_per_second": round(timed.count / timed.seconds, 3) if timed.seconds > 0 else None,
               "ranks": ranks, "wall_time_s": round(wall, 2)}
    writer.add_scalar("validations_per_second", summary["validations_per_second"] or 0.0, 0)
    writer.close()
    print(format_table(doc))
    print(f"\n{timed.count} supernet evaluations this run ({store.loaded} resumed from validations.jsonl), "
          f"{summary['validations_per_second']} validations/s; outputs in {out}")
    return {"summary": summary, "pareto": doc, "results": results}


def safe(store: ValidationStore, out: Path) -> str:
    """What a stopped search kept, and the command that resumes it."""
    return (f"the {len(store)} validated sub-networks are safe in {out / 'validations.jsonl'}\n"
            f"resume with: {resume_command('resume', str(out))}")


def save_predictors(out: Path, results: list[Any], objectives: ObjectiveSpace, codec: GenomeCodec,
                    config: dict[str, Any], seed: int) -> dict[str, str]:
    """Fit the validated objective's predictor on every sub-network the searches validated (all devices) and
    write ``predictors/<objective>.joblib``; reload it with :meth:`ObjectivePredictor.load`."""
    objective = objectives.validated
    column = objectives.names.index(objective)
    data: dict[str, tuple[Any, float]] = {}
    for result in results:
        for key, genes, F in zip(result.keys, result.genes, result.F):
            data.setdefault(key, (genes, float(F[column])))
    if not data:
        return {}
    genes = [g for g, _ in data.values()]
    y = [v for _, v in data.values()]
    predictor = ObjectivePredictor(objective, codec, config, seed).fit(genes, y)
    path = predictor.save(out / "predictors" / f"{objective}.joblib")
    cv = predictor.meta.get("cv", {})
    log.info("predictor of %s (%s, %d records, cross-validated MAPE %s %%, tau %.3f) written to %s", objective,
             predictor.name, len(y), cv.get("mape_pct"), cv.get("kendall_tau", float("nan")), path)
    return {objective: str(path.relative_to(out))}


class TimedValidator:
    """Counts and times the validations (the costly unit) for validations per second."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.count = 0
        self.seconds = 0.0

    def validate(self, arch: Any) -> dict[str, float]:
        t = time.perf_counter()
        values = self.inner.validate(arch)
        self.seconds += time.perf_counter() - t
        self.count += 1
        return values

    def validate_batch(self, archs: Sequence[Any], weights: Sequence[float]) -> Iterator[dict[str, float]]:
        """The inner validator's batch (or one at a time), timed while waiting for each value."""
        t = time.perf_counter()
        for values in validate_many(self.inner, archs, weights):
            self.seconds += time.perf_counter() - t
            self.count += 1
            yield values
            t = time.perf_counter()
