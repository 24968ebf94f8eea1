"""Study A: solvers against a cloud of random networks, on one space, data set, LUT and runtime target.

The thesis' claim (Sec 6.2, Fig 6.1) is that a Single-Path NAS search under ``CE + λ·log(R)`` finds networks
that are more accurate at equal latency than the baselines and than random networks. The study measures it:

1. R_T: ``smallest + target_fraction · (largest − smallest)`` of the space's calibrated LUT prediction.
2. λ for R_T: a bisection on log λ with whole searches (:meth:`SolverStudy.calibrate_lambda`), once.
3. For each seed and solver, one search (``search.py``, a separate process) and the derived network retrained
   from scratch with one recipe (``train.py recipe=...``: test accuracy, ONNX export, latency measured with the
   LUT's protocol).
4. A cloud of random networks, one per equal-width bin of predicted latency from the smallest to the largest
   network, retrained the same way.

Every finished network appends one record to the JSONL file (:func:`nas.io.append_jsonl`); re-running skips
recorded networks, resumes a killed search or retraining from its last checkpoint, and reuses finished λ probes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nas.cli import run_entry
from nas.errors import ConfigError, NASError
from nas.io import append_jsonl, read_jsonl

log = logging.getLogger(__name__)

RECORD_FORMAT = "spnas-study-network"
RECORD_VERSION = 1


class StudyStepFailed(NASError):
    """A search or retraining of the study exited with an error (its log is named)."""


@dataclass
class Job:
    """One network of the study: a solver's search (then retraining) or a cloud network (retraining only)."""

    key: str
    kind: str  # "search" | "cloud"
    solver: str | None = None
    seed: int | None = None
    arch: Any = None  # the cloud network's Architecture
    bin_ms: tuple[float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def cloud_architectures(space: Any, predict: Any, size: int, seed: int, pool: int = 4000) -> list[tuple[Any, tuple]]:
    """``size`` distinct random architectures spread over the whole latency range.

    The range of predicted latency (from the fastest to the slowest network of the pool) is cut into ``size``
    equal-width bins;
    each bin gets one architecture drawn uniformly from a seeded pool of random samples that fall into it (the
    smallest and largest networks themselves join the pool, so the end bins are never empty). Bins no sample
    falls into are filled from the nearest non-empty bin's left-overs, so the cloud always has ``size``
    networks when the pool holds that many distinct ones.
    """
    rng = random.Random(seed)
    by_key: dict[tuple[str, ...], tuple[Any, float]] = {}
    for arch in [space.smallest(), space.largest(), *(space.sample(rng) for _ in range(pool))]:
        by_key.setdefault(tuple(arch.keys), (arch, predict(arch)))
    # the range of the pool (the calibrated model may price a network below the space's "smallest")
    lo, hi = min(ms for _, ms in by_key.values()), max(ms for _, ms in by_key.values())
    width = (hi - lo) / size
    bins: list[list[tuple[Any, float]]] = [[] for _ in range(size)]
    for arch, ms in by_key.values():
        bins[min(size - 1, max(0, int((ms - lo) / width)))].append((arch, ms))
    chosen: list[tuple[Any, tuple]] = []
    for i, members in enumerate(bins):
        if members:
            pick = members.pop(rng.randrange(len(members)))
            chosen.append((pick[0], (lo + i * width, lo + (i + 1) * width)))
    # empty bins: take left-overs nearest to the empty bin's centre
    leftovers = sorted((ms, arch.keys, arch) for members in bins for arch, ms in members)
    for i in range(size):
        if len(chosen) >= size or not leftovers:
            break
        if any(b == (lo + i * width, lo + (i + 1) * width) for _, b in chosen):
            continue
        centre = lo + (i + 0.5) * width
        j = min(range(len(leftovers)), key=lambda k: abs(leftovers[k][0] - centre))
        _, _, arch = leftovers.pop(j)
        chosen.append((arch, (lo + i * width, lo + (i + 1) * width)))
    return chosen


@dataclass
class SearchSetting:
    """What every search of one comparison shares: the space, the data, the hardware backend, its LUT (the
    search's cache, profiled when missing) and the runtime model; its latency range gives the runtime target."""

    space: Any
    datamodule: Any
    backend: Any
    lut: Any
    model: Any

    @classmethod
    def compose(cls, overrides: list[str]) -> SearchSetting:
        """``search.py``'s config composed with ``overrides`` (``space=``, ``data=``, ``hardware=`` ...), its data
        checked, its LUT obtained as the search obtains it (``hardware.lut_path`` or the cache)."""
        from hydra.utils import instantiate

        from nas.cli import compose_config
        from nas.cost.backends import build_backend
        from nas.cost.profiler import obtain_lut
        from nas.cost.runtime_model import RuntimeModel
        from nas.space.search_space import SearchSpace

        base = compose_config("search", overrides)
        space = SearchSpace.from_config(base.space)
        datamodule = instantiate(base.data)
        datamodule.check_available()
        backend = build_backend(base.hardware.backend)
        lut = obtain_lut(space, backend, datamodule.in_channels, datamodule.num_classes,
                         cache_dir=base.paths.cache_dir, lut_path=base.hardware.get("lut_path"), progress=True)
        return cls(space, datamodule, backend, lut,
                   RuntimeModel(space, lut, datamodule.in_channels, datamodule.num_classes))

    @property
    def in_channels(self) -> int:
        return int(self.datamodule.in_channels)

    @property
    def num_classes(self) -> int:
        return int(self.datamodule.num_classes)

    def range_ms(self) -> tuple[float, float]:
        """Predicted latency of the space's smallest and largest network."""
        return self.model.predict(self.space.smallest()), self.model.predict(self.space.largest())

    def target_ms(self, fraction: float, digits: int = 5) -> float:
        """R_T: ``smallest + fraction · (largest − smallest)``, rounded to ``digits`` decimals."""
        lo, hi = self.range_ms()
        return round(lo + fraction * (hi - lo), digits)


class SolverStudy:
    """Runs (or continues) Study A from its config (``nas/conf/study_solvers.yaml``)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.records_path = Path(cfg.records)
        self.work = Path(cfg.work_dir).absolute()
        self.check_config()

    # ------------------------------------------------------------------ settings
    def check_config(self) -> None:
        cfg = self.cfg
        known = {"single_path", "single_path_ste", "single_path_softmax", "multi_path", "proxyless", "random"}
        unknown = [s for s in cfg.solvers if s not in known]
        if unknown:
            raise ConfigError(f"solvers: unknown solver(s) {unknown}; choose from {sorted(known)}")
        if not cfg.seeds or not all(isinstance(s, int) for s in cfg.seeds):
            raise ConfigError(f"seeds must be a non-empty list of integers, got {list(cfg.seeds)}; e.g. seeds=[0,1,2]")
        if not 0.0 < float(cfg.target_fraction) < 1.0:
            raise ConfigError(f"target_fraction must lie in (0, 1), got {cfg.target_fraction}; e.g. "
                              "target_fraction=0.5")
        if not cfg.lambda_search.solvers and cfg.lambda_search.apply_to:
            raise ConfigError("lambda_search.apply_to needs a solver in lambda_search.solvers to calibrate")
        low, high = (float(v) for v in cfg.lambda_search.range)
        if not 0 < low < high:
            raise ConfigError(f"lambda_search.range must be [low, high] with 0 < low < high, got "
                              f"{list(cfg.lambda_search.range)}; e.g. lambda_search.range=[0.001,1.0]")
        if not isinstance(cfg.cloud.size, int) or cfg.cloud.size < 0:
            raise ConfigError(f"cloud.size must be an integer >= 0, got {cfg.cloud.size}")

    def base_overrides(self) -> list[str]:
        cfg = self.cfg
        return [f"space={cfg.space}", f"data={cfg.data}", f"hardware={cfg.hardware}", *cfg.common]

    def retrain_base_overrides(self) -> list[str]:
        """Space, data, hardware (whose backend measures the retrained network's latency) and common settings of
        every retraining: the study's own."""
        return self.base_overrides()

    def solver_overrides(self, solver: str) -> list[str]:
        """A search's settings: the study's (``search.overrides``), then the solver's own (``search.per_solver``)."""
        return [*self.cfg.search.overrides, *self.cfg.search.per_solver.get(solver, []), f"solver={solver}"]

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Space, data check, LUT (the search's cache), runtime model, R_T and the cloud."""
        setting = SearchSetting.compose(self.base_overrides())
        self.setting = setting
        self.space, self.datamodule = setting.space, setting.datamodule
        self.lut, self.model = setting.lut, setting.model
        self.in_channels, self.num_classes = setting.in_channels, setting.num_classes
        self.range_ms = setting.range_ms()
        self.target_ms = setting.target_ms(float(self.cfg.target_fraction))
        self.cloud = self.load_or_draw_cloud()

    def load_or_draw_cloud(self) -> list[tuple[Any, tuple]]:
        """The cloud drawn once and kept in ``work_dir/cloud.json``, so a continued study retrains the same
        networks whatever changed since (the LUT's calibration, the drawing code)."""
        from nas.io import atomic_write_json
        from nas.space.architecture import LayerChoice

        path = Path(self.cfg.cloud.file) if self.cfg.cloud.get("file") else self.work / "cloud.json"
        size, seed = int(self.cfg.cloud.size), int(self.cfg.cloud.seed)
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("size") == size and saved.get("seed") == seed:
                return [(self.space.architecture([LayerChoice.from_key(k) for k in net["architecture"]]),
                         tuple(net["bin_ms"])) for net in saved["networks"]]
            raise ConfigError(f"{path} holds a cloud of {saved.get('size')} networks drawn with seed "
                              f"{saved.get('seed')}, not cloud.size={size} cloud.seed={seed}; keep those settings "
                              "or use another work_dir (and records file)")
        cloud = cloud_architectures(self.space, self.model.predict, size, seed)
        atomic_write_json(path, {"size": size, "seed": seed, "networks": [
            {"architecture": arch.keys, "bin_ms": list(bin_ms)} for arch, bin_ms in cloud]})
        return cloud

    def plan(self) -> list[Job]:
        """Seed-major rounds, each followed by its share of the cloud, so an interrupted study is balanced."""
        seeds, solvers = list(self.cfg.seeds), list(self.cfg.solvers)
        share = -(-len(self.cloud) // len(seeds)) if self.cloud else 0
        jobs: list[Job] = []
        for round_, seed in enumerate(seeds):
            jobs += [Job(f"search/{solver}/seed{seed}", "search", solver=solver, seed=seed) for solver in solvers]
            for i in range(round_ * share, min(len(self.cloud), (round_ + 1) * share)):
                arch, bin_ms = self.cloud[i]
                jobs.append(Job(f"cloud/{i:03d}", "cloud", arch=arch, bin_ms=bin_ms))
        return jobs

    # ------------------------------------------------------------------ running
    def run(self) -> list[dict[str, Any]]:
        from tqdm import tqdm

        self.setup()
        done = {r.get("key"): r for r in read_jsonl(self.records_path, "study network")}
        jobs = self.plan()
        todo = [job for job in jobs if job.key not in done]
        lo, hi = self.range_ms
        print(f"Study: space {self.cfg.space}, data {self.cfg.data}, hardware {self.cfg.hardware}; latency range "
              f"{lo:.4f}-{hi:.4f} ms, R_T {self.target_ms} ms; {len(jobs)} networks, {len(jobs) - len(todo)} "
              f"recorded in {self.records_path}", flush=True)
        with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="study networks") as bar:
            for job in todo:
                bar.set_postfix_str(job.key)
                record = self.run_job(job)
                append_jsonl(self.records_path, record)
                done[job.key] = record
                bar.update()
                tqdm.write(f"{job.key}: test acc {record['test_acc']:.4f}, measured {record['measured_latency_ms']:.4f}"
                           f" ms (predicted {record['predicted_latency_ms']:.4f})")
        records = list(done.values())
        sitting = self.cfg.get("sitting") or {}
        if sitting.get("file") and (sitting.get("run") or not sitting_covers(sitting["file"], records)):
            measure_in_one_sitting(records, self.setting, sitting["file"], rounds=sitting.get("rounds"))
        return records

    def run_job(self, job: Job) -> dict[str, Any]:
        from nas.space.architecture import Architecture

        found: dict[str, Any] = {}
        if job.kind == "search":
            found = self.search(job)
            arch_path = Path(found.pop("run_dir")) / "arch.json"
            arch = Architecture.load(arch_path, self.space)
        else:
            arch = job.arch
            arch_path = self.work / "cloud" / f"{job.key.split('/')[1]}.json"
            if not arch_path.is_file():
                arch.save(arch_path)
            found = {"latency_bin_ms": list(job.bin_ms) if job.bin_ms else None}
        trained = self.retrain(job.key, arch_path)
        return {"format": RECORD_FORMAT, "version": RECORD_VERSION, "key": job.key, "kind": job.kind,
                "solver": job.solver, "seed": job.seed, "target_ms": self.target_ms,
                "architecture": arch.keys, "timm": self.timm_string(arch),
                "predicted_latency_ms": self.model.predict(arch), **found, **trained,
                "macs": self.macs(arch), "space": self.cfg.space, "data": self.cfg.data,
                "hardware": self.cfg.hardware, "lut_fingerprint": self.lut.hardware.get("fingerprint_id"),
                "recipe": self.cfg.retrain.recipe, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def timm_string(self, arch: Any) -> str:
        from nas.space.timm_interop import timm_string

        return timm_string(arch, self.space)

    def macs(self, arch: Any) -> int:
        from nas.cost.backends import count_macs
        from nas.space.networks import build_child

        net = build_child(self.space, arch, self.in_channels, self.num_classes)
        return int(count_macs(net, (1, self.in_channels, self.space.resolution, self.space.resolution)))

    def lambda_for(self, solver: str) -> float | None:
        """λ for R_T (``None`` for solvers without λ): see :meth:`calibrate_lambda`; solvers in
        ``lambda_search.apply_to`` but not swept take the first swept solver's λ."""
        sweep = self.cfg.lambda_search
        if solver not in sweep.apply_to:
            return None
        swept = solver if solver in sweep.solvers else sweep.solvers[0]
        return self.calibrate_lambda(swept)

    def lambda_probes(self, solver: str) -> list[dict[str, float]]:
        """Finished λ probes of ``solver``: every ``work_dir/lambda/<solver>/*/summary.json``."""
        probes = []
        for path in sorted((self.work / "lambda" / solver).glob("*/summary.json")):
            summary = json.loads(path.read_text())
            probes.append({"lambda": float(summary["config"]["solver"]["lambda_"]),
                           "predicted_latency_ms": float(summary["predicted_latency_ms"]),
                           "val_acc": summary.get("val_acc"), "wall_time_s": summary.get("wall_time_s"),
                           "run_dir": str(path.parent)})
        return sorted(probes, key=lambda p: p["lambda"])

    def calibrate_lambda(self, solver: str) -> float:
        """λ whose search lands at R_T: bisection on log λ over ``lambda_search.range`` (``λ ≥ 0`` of Eq 5.7).

        The derived network's predicted latency falls as λ grows (the ``λ·log R`` term of the loss weighs more), so
        each probe, a search with the study's own settings and seed 0, halves the log-interval that brackets R_T:
        ``lo`` is the largest λ whose network is slower than R_T, ``hi`` the smallest λ whose network meets it.
        After ``lambda_search.probes`` probes the λ whose network is the slowest that meets R_T is chosen (the
        fastest network's λ if none meets it). Finished probes are reused, so a killed calibration continues.
        """
        import math

        sweep = self.cfg.lambda_search
        lo, hi = (float(v) for v in sweep.range)
        folder = self.work / "lambda" / solver
        record = Path(sweep.file) if sweep.get("file") else folder / "lambda.json"
        if record.is_file():  # calibrated before (kept with the study's records, so other machines reuse it)
            saved = json.loads(record.read_text())
            if saved.get("solver") == solver:
                return float(saved["chosen"]["lambda"])
        while True:
            probes = self.lambda_probes(solver)
            above = [p["lambda"] for p in probes if p["predicted_latency_ms"] > self.target_ms]
            below = [p["lambda"] for p in probes if p["predicted_latency_ms"] <= self.target_ms]
            low = max([lo, *(v for v in above if v < min(below, default=hi))])
            high = min([hi, *below])
            if len(probes) >= int(sweep.probes):
                break
            lam = float(f"{math.sqrt(low * high):.4g}")
            run_dir = folder / f"lambda_{lam:g}"
            overrides = [*self.base_overrides(), *self.solver_overrides(solver), "seed=0",
                         f"hardware.target_ms={self.target_ms}", f"solver.lambda_={lam}"]
            self._run_in(run_dir, "search", overrides, f"λ probe {lam:g} of {solver}")
        meeting = [p for p in probes if p["predicted_latency_ms"] <= self.target_ms]
        chosen = (max(meeting, key=lambda p: p["predicted_latency_ms"]) if meeting
                  else min(probes, key=lambda p: p["predicted_latency_ms"]))
        from nas.io import atomic_write_json

        atomic_write_json(record, {"solver": solver, "target_ms": self.target_ms,
                                                   "chosen": chosen, "probes": probes})
        return chosen["lambda"]

    def search(self, job: Job) -> dict[str, Any]:
        assert job.solver is not None and job.seed is not None
        run_dir = self.work / "search" / job.solver / f"seed{job.seed}"
        lam = self.lambda_for(job.solver)
        summary_path = run_dir / "summary.json"
        if not summary_path.is_file():
            overrides = [*self.base_overrides(), *self.solver_overrides(job.solver), f"seed={job.seed}",
                         f"hardware.target_ms={self.target_ms}"]
            if lam is not None:
                overrides.append(f"solver.lambda_={lam}")
            self._run_in(run_dir, "search", overrides, job.key)
        summary = json.loads(self._summary(summary_path, job.key, run_dir).read_text())
        return {"run_dir": str(run_dir), "lambda": lam, "search_val_acc": summary.get("val_acc"),
                "search_wall_s": summary.get("wall_time_s"),
                "search_predicted_latency_ms": summary.get("predicted_latency_ms"),
                "search_cpu_s": cpu_seconds(run_dir.with_suffix(".log"))}

    def retrain(self, key: str, arch_path: Path) -> dict[str, Any]:
        """Train the network of ``arch_path`` from scratch with the study's recipe (``train.py``), resuming a
        killed retraining from its last checkpoint; its summary as record fields."""
        run_dir = self.work / "train" / key.replace("/", "_")
        summary_path = run_dir / "train_summary.json"
        if not summary_path.is_file():
            overrides = [*self.retrain_base_overrides(), f"recipe={self.cfg.retrain.recipe}",
                         *self.cfg.retrain.overrides,
                         f"seed={int(self.cfg.retrain.seed)}", f"arch={arch_path}"]
            self._run_in(run_dir, "train", overrides, f"retraining of {key}")
        s = json.loads(self._summary(summary_path, f"retraining of {key}", run_dir).read_text())
        return {"val_acc": s.get("val_acc"), "test_acc": s.get("test_acc"), "params": s.get("parameters"),
                "retrain_epochs": s.get("epochs"), "retrain_wall_s": s.get("wall_time_s"),
                "retrain_resumed": s.get("resumed_from") is not None,  # wall and CPU time: the last process's
                "measured_latency_ms": s.get("measured_latency_ms"),
                "measured_latency_iqr_ms": s.get("measured_latency_iqr_ms"),
                "train_predicted_latency_ms": s.get("predicted_latency_ms"),
                "retrain_cpu_s": cpu_seconds(run_dir.with_suffix(".log"))}

    @staticmethod
    def _summary(path: Path, what: str, run_dir: Path) -> Path:
        """``path`` if the step wrote it; a step that ended cleanly without its summary (stopped by SIGTERM,
        which Lightning turns into a clean exit) is :class:`StudyStepFailed`, and a re-run resumes it."""
        if not path.is_file():
            raise StudyStepFailed(f"{what} ended without writing {path.name} (interrupted?); run the study again "
                                  f"to resume it from {run_dir / 'checkpoints'}")
        return path

    def _run_in(self, run_dir: Path, entry: str, overrides: list[str], what: str) -> None:
        """Run an entry point with ``overrides`` in the run folder ``run_dir`` (log ``<run_dir>.log``), resuming
        from its last checkpoint where a killed process left one."""
        overrides = [*overrides, f"hydra.run.dir={run_dir}"]
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            overrides.append(f"ckpt_path={last}")
        self._run(entry, overrides, run_dir.with_suffix(".log"), what)

    def _run(self, entry: str, overrides: list[str], log_path: Path, what: str) -> None:
        """Run an entry point in a new process, its output into ``log_path``; its CPU time (user + system, in
        seconds) goes to ``log_path`` with the suffix ``.cpu_s`` (:func:`cpu_seconds` reads it back)."""
        status, usage = run_entry(entry, overrides, log_path)
        if status != 0:
            raise StudyStepFailed(f"{what} failed (exit {status}); see {log_path}")
        log_path.with_name(log_path.name + ".cpu_s").write_text(f"{usage.ru_utime + usage.ru_stime:.2f}\n")


def cpu_seconds(log_path: Path) -> float | None:
    """CPU time of the step whose log is ``log_path`` (``None`` if it was not recorded)."""
    path = log_path.with_name(log_path.name + ".cpu_s")
    return float(path.read_text()) if path.is_file() else None


def forwarded_settings(args: list[str]) -> list[str]:
    """The command line's settings inside the space / data / hardware groups (``data.root=...``,
    ``hardware.backend.threads=2``) and its ``threads=``: the study hands them to every search and retraining (with
    ``common``)."""
    return [a for a in args if "=" in a and ("." in a.split("=", 1)[0]
            and a.split("=", 1)[0].lstrip("+~").split(".")[0] in ("space", "data", "hardware")
            or a.split("=", 1)[0] == "threads")]


def study_config(cfg: DictConfig, args: list[str] | None = None) -> DictConfig:
    """The study's settings from its composed config (:func:`nas.cli.compose_config` ``with_choices``): the chosen
    ``space`` / ``data`` / ``hardware`` options by name and the command line's settings inside them (``args``; both
    are what the searches and retrainings are given), every path absolute (the study's subprocesses run from the
    project folder)."""
    choices = cfg.get("choices") or {}
    plain = OmegaConf.to_container(cfg, resolve=False)
    for group in ("space", "data", "hardware"):
        if group in choices:
            plain[group] = choices[group]  # type: ignore[index]
    plain.pop("choices", None)  # type: ignore[union-attr]
    plain["common"] = [*plain.get("common", []), *forwarded_settings(args or [])]  # type: ignore[index,union-attr]
    plain = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
    for key in ("records", "figure", "table", "work_dir", "source"):
        if key in plain:  # type: ignore[operator]
            plain[key] = str(Path(plain[key]).absolute())  # type: ignore[index]
    for group in ("lambda_search", "cloud", "sitting", "front"):
        node = plain.get(group) or {}  # type: ignore[union-attr]
        for key in ("file", "records"):
            if node.get(key):
                node[key] = str(Path(node[key]).absolute())
        if node.get("files"):
            node["files"] = [str(Path(f).absolute()) for f in node["files"]]
    return OmegaConf.create(plain)


# ---------------------------------------------------------------------- one sitting
SITTING_FORMAT = "spnas-study-latency-sitting"
SITTING_VERSION = 1


def read_sitting(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """The one-sitting measurements of ``path`` (``None`` without the file)."""
    if not path or not Path(path).is_file():
        return None
    from nas.io import read_json_document

    return read_json_document(path, "sitting.file", SITTING_FORMAT, SITTING_VERSION, "study latency sitting",
                              "measure it again: spnas study-solvers sitting.run=true")


def sitting_covers(path: str | os.PathLike, records: list[dict[str, Any]]) -> bool:
    """Whether the sitting of ``path`` holds every recorded network (with the same architecture)."""
    doc = read_sitting(path)
    if doc is None:
        return False
    nets = doc["networks"]
    return all(r["key"] in nets and nets[r["key"]]["architecture"] == r["architecture"] for r in records)


def measure_in_one_sitting(records: list[dict[str, Any]], setting: SearchSetting, path: str | os.PathLike,
                           rounds: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Measure every recorded network again, all in one interleaved sitting on the study's backend, and write them
    to ``path``.

    Each retraining measured its network when it finished, so two networks' numbers may come from different
    loads of a shared machine (hours apart, another process on the sibling core). Here every network is loaded
    once per session and timed in the same randomly ordered rounds (:func:`nas.cost.profiler.profile_ops`, the
    LUT's own procedure), so a drift of the machine shifts all of them alike and the comparison of a searched
    network with the cloud does not depend on when each was trained. Latency does not depend on the weights, so
    the networks are built from their architectures."""
    from datetime import datetime, timezone

    from nas.cost.profiler import profile_ops
    from nas.cost.signatures import OpSpec
    from nas.io import atomic_write_json
    from nas.space.networks import build_child
    from nas.space.references import load_architecture

    space, backend = setting.space, setting.backend
    shape = (setting.in_channels, space.resolution, space.resolution)
    ops: dict[str, OpSpec] = {}
    for r in records:
        arch = load_architecture(r["timm"], space, setting.in_channels, setting.num_classes)
        if arch.keys != r["architecture"]:
            raise ConfigError(f"{r['key']}: its timm string does not rebuild its architecture in space {space.name}")
        net = build_child(space, arch, setting.in_channels, setting.num_classes)
        ops[r["key"]] = OpSpec(r["key"], shape, lambda net=net: net.eval(), "network")
    started, load_before, start = datetime.now(timezone.utc), os.getloadavg(), time.perf_counter()
    measured = profile_ops(ops, backend, progress=progress, rounds=int(rounds or backend.repeats))
    doc = {"format": SITTING_FORMAT, "version": SITTING_VERSION, "hardware": backend.hardware_record(),
           "started_utc": started.isoformat(timespec="seconds"), "wall_s": round(time.perf_counter() - start, 1),
           "load_average": {"before": [round(v, 2) for v in load_before],
                            "after": [round(v, 2) for v in os.getloadavg()]},
           "networks": {r["key"]: {"architecture": r["architecture"], "ms": measured[r["key"]].ms,
                                   "iqr_ms": measured[r["key"]].iqr_ms, "runs": measured[r["key"]].runs}
                        for r in records}}
    atomic_write_json(path, doc)
    print(f"measured {len(ops)} networks in one sitting on {backend.name} in {doc['wall_s']} s (load average "
          f"{load_before[0]:.2f} -> {doc['load_average']['after'][0]:.2f}): {path}")
    return doc


def with_sitting(records: list[dict[str, Any]], sitting: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The records with ``measured_latency_ms`` from the sitting where it has the network (the retraining's own
    measurement kept as ``measured_at_retraining_ms``)."""
    if sitting is None:
        return records
    nets = sitting["networks"]
    return [{**r, "measured_at_retraining_ms": r["measured_latency_ms"], "measured_latency_ms": nets[r["key"]]["ms"]}
            if r["key"] in nets and nets[r["key"]]["architecture"] == r["architecture"] else r for r in records]


# ---------------------------------------------------------------------- report
def mean_std(values: list[Any]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the values that exist (not ``None``, not
    NaN); ``(nan, nan, 0)`` when none does."""
    import math
    import statistics

    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan"), 0
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def dominating_cloud(record: dict[str, Any], cloud: list[dict[str, Any]]) -> tuple[int, float | None]:
    """How many cloud networks with equal or lower measured latency have a higher test accuracy than
    ``record``, and ``record``'s margin over the cloud's upper envelope at its latency (its test accuracy minus
    the best test accuracy of the cloud networks at equal or lower measured latency; ``None`` if there is none)."""
    faster = [c for c in cloud if c["measured_latency_ms"] <= record["measured_latency_ms"]]
    better = sum(c["test_acc"] > record["test_acc"] for c in faster)
    envelope = max((c["test_acc"] for c in faster), default=None)
    return better, None if envelope is None else record["test_acc"] - envelope


def report_table(records: list[dict[str, Any]]) -> str:
    """Markdown: per solver (and the cloud) test accuracy, latency and search time, mean ± std over seeds; then
    every searched network against the cloud."""
    searched = [r for r in records if r["kind"] == "search"]
    cloud = [r for r in records if r["kind"] == "cloud"]
    lines = ["| networks | n | test acc (mean ± std) | val acc | measured ms | predicted ms | search wall s | λ |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(values: list[Any], digits: int = 4) -> str:
        mean, std, n = mean_std(values)
        return "n/a" if n == 0 else f"{mean:.{digits}f} ± {std:.{digits}f}"

    groups = [(s, [r for r in searched if r["solver"] == s]) for s in dict.fromkeys(r["solver"] for r in searched)]
    if cloud:
        groups.append(("random cloud", cloud))
    for name, rs in groups:
        lambdas = sorted({r.get("lambda") for r in rs if r.get("lambda") is not None})
        lines.append(f"| {name} | {len(rs)} | {cell([r['test_acc'] for r in rs])} | "
                     f"{cell([r['val_acc'] for r in rs])} | {cell([r['measured_latency_ms'] for r in rs])} | "
                     f"{cell([r['predicted_latency_ms'] for r in rs])} | "
                     f"{cell([r.get('search_wall_s') for r in rs], 1)} | "
                     f"{', '.join(f'{v:.3g}' for v in lambdas) or '-'} |")
    if len(cloud) >= 3:
        from scipy.stats import spearmanr

        def trend(key: str) -> str:
            pairs = [(r[key], r["test_acc"]) for r in cloud if r.get(key) is not None]
            if len(pairs) < 3:
                return "n/a"
            rho = spearmanr(*zip(*pairs))
            return f"ρ = {rho.statistic:+.2f} (p = {rho.pvalue:.2g})"

        lines += ["", f"Random cloud, n = {len(cloud)}: Spearman rank correlation of test accuracy with measured "
                  f"latency {trend('measured_latency_ms')}, with parameters {trend('params')}, with MACs "
                  f"{trend('macs')} (does the recipe rank larger networks higher?)."]
    if searched and cloud:
        lines += ["", "Each searched network against the cloud: cloud networks with equal or lower measured latency "
                  "and higher test accuracy (goal: 0), and the margin over the cloud's upper envelope at its latency "
                  "(test accuracy minus the best cloud network at equal or lower latency).", "",
                  "| network | test acc | measured ms | cloud nets faster and better | margin over envelope |",
                  "|---|---|---|---|---|"]
        for r in sorted(searched, key=lambda r: (r["solver"], r["seed"])):
            better, margin = dominating_cloud(r, cloud)
            lines.append(f"| {r['key']} | {r['test_acc']:.4f} | {r['measured_latency_ms']:.4f} | {better} | "
                         f"{'n/a (none faster)' if margin is None else f'{100 * margin:+.2f} pp'} |")
    return "\n".join(lines) + "\n"


def plot_records(records: list[dict[str, Any]], anchors: dict[str, float], target_ms: float | None,
                 path: str | os.PathLike) -> None:
    """Test accuracy against measured latency: the cloud, each solver's networks, the published anchors."""
    from nas.io import agg_figure, write_figure

    fig = agg_figure(figsize=(7.0, 4.6))
    ax = fig.add_subplot()
    cloud = [r for r in records if r["kind"] == "cloud"]
    ax.scatter([r["measured_latency_ms"] for r in cloud], [100 * r["test_acc"] for r in cloud], s=18,
               color="0.6", label=f"random cloud (n={len(cloud)})")
    markers = {"single_path": "*", "single_path_ste": "^", "proxyless": "s", "random": "D"}
    searched = [r for r in records if r["kind"] == "search"]
    for solver in dict.fromkeys(r["solver"] for r in searched):
        rs = [r for r in searched if r["solver"] == solver]
        ax.scatter([r["measured_latency_ms"] for r in rs], [100 * r["test_acc"] for r in rs],
                   marker=markers.get(solver, "o"), s=70 if markers.get(solver) == "*" else 40,
                   label=f"{solver} (n={len(rs)})", zorder=3)
    if target_ms:
        ax.axvline(target_ms, color="k", linestyle=":", linewidth=1, label=f"R_T = {target_ms:.4g} ms")
    accs = [100 * r["test_acc"] for r in records if r.get("test_acc") is not None]
    for name, value in anchors.items():
        if accs and min(accs) - 1 <= 100 * value <= max(accs) + 1:
            ax.axhline(100 * value, linestyle="--", linewidth=0.8, color="tab:red")
            ax.annotate(f"{name} {100 * value:.1f} %", (0.01, 100 * value), xycoords=("axes fraction", "data"),
                        fontsize=7, color="tab:red", va="bottom")
    hidden = [f"{n} {100 * v:.1f} %" for n, v in anchors.items() if not accs or 100 * v > max(accs) + 1]
    title = "Fashion-MNIST, space tiny, one retraining recipe"
    if hidden:
        import textwrap

        title += "\n" + textwrap.fill("above the plot: " + "; ".join(hidden), 100)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("measured latency (ms, ONNX Runtime CPU, batch 1)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    write_figure(path, fig, dpi=130)


def write_report(records: list[dict[str, Any]], cfg: DictConfig) -> str:
    """Write the table (markdown) and the figure of the study; returns the table."""
    from nas.io import atomic_write_text

    sitting = read_sitting((cfg.get("sitting") or {}).get("file"))
    records = [r for r in with_sitting(records, sitting)
               if r.get("test_acc") is not None and r.get("measured_latency_ms") is not None]
    target = next((r["target_ms"] for r in records if r.get("target_ms")), None)
    text = report_table(records)
    if sitting is not None:
        text = (f"Measured latency: every network in one interleaved sitting ({sitting['started_utc']}, "
                f"{sitting['hardware'].get('backend')}, load average {sitting['load_average']['before'][0]:.2f} -> "
                f"{sitting['load_average']['after'][0]:.2f}); the retraining's own measurement is in the records.\n\n"
                + text)
    atomic_write_text(cfg.table, text)
    if records:
        plot_records(records, dict(cfg.anchors), target, cfg.figure)
    return text
