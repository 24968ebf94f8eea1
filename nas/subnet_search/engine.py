"""Search under a validation budget: NSGA-II, AGE-MOEA and GA from pymoo, and random search (source 002 §4.2).

The optimiser proposes genomes through pymoo's ask-and-tell interface; this loop prices them (latency, MACs,
parameters from the cost model: free), checks the hard constraints (an infeasible sub-network is never
validated), and validates the feasible ones with the evaluator (the costly unit) unless the shared
:class:`~nas.subnet_search.store.ValidationStore` already holds them. The *budget* counts the distinct
sub-networks a search consumes: it stops exactly at ``budget``, truncating the last generation, and never
validates a sub-network twice. Because consumption is defined per search and cached records are reused, a search
for a second device (or a resumed search) computes exactly what a standalone run with the same seed computes,
with fewer supernet evaluations. Each generation is planned first (priced, checked, looked up) and its new
sub-networks are then validated as one batch, which :class:`~nas.subnet_search.ranks.RankPool` splits over the
ranks of a multi-process search, and recorded in the order of the plan: records and result are those of
validating one sub-network at a time.

NSGA-II follows §4.2: crossover probability 0.9 and mutation rate 1/population (per gene), duplicates
eliminated. Genes are categorical (candidate indices), so the default operators are uniform crossover and a
random-reset mutation; ``crossover=sbx`` / ``mutation=pm`` select pymoo's integer SBX / polynomial mutation
with rounding instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pymoo.core.evaluator import Evaluator
from pymoo.core.mutation import Mutation
from pymoo.core.problem import Problem
from pymoo.problems.static import StaticProblem
from tqdm.auto import tqdm

from nas.errors import ConfigError
from nas.space.architecture import Architecture
from nas.subnet_search.hypervolume import Normalisation, non_dominated
from nas.subnet_search.search_objectives import ObjectiveSpace
from nas.subnet_search.store import ValidationStore, check_finite
from nas.threads import rebalance

log = logging.getLogger(__name__)

ALGORITHMS = ("nsga2", "agemoea", "ga", "random")


class Validator(Protocol):
    """Measures the validated objectives of one sub-network (the supernet evaluator, or a table in tests).

    A validator may also offer ``validate_batch(archs, weights)``, an iterator of the values of ``archs`` in
    order (:class:`~nas.subnet_search.ranks.RankPool` splits a batch over the ranks, ``weights`` being the
    expected cost of each, here its MACs); :func:`validate_many` uses it where it exists.
    """

    def validate(self, arch: Architecture) -> dict[str, float]: ...


def validate_many(validator: Validator, archs: Sequence[Architecture],
                  weights: Sequence[float]) -> Iterator[dict[str, float]]:
    """The values of ``archs``, in order: through ``validator.validate_batch`` where it has one, else one
    ``validate`` at a time (lazily, so each record is written before the next validation starts)."""
    batch = getattr(validator, "validate_batch", None)
    if batch is not None:
        return iter(batch(archs, weights))
    return (validator.validate(arch) for arch in archs)


@dataclass
class AlgorithmConfig:
    """Settings of the optimiser (``nas/conf/algorithm/*.yaml``)."""

    name: str = "nsga2"
    population: int = 50
    crossover: str = "uniform"
    crossover_prob: float = 0.9
    crossover_eta: float = 15.0
    mutation: str = "reset"
    mutation_prob: float | None = None   # per-gene probability; None = 1 / population (§4.2)
    mutation_eta: float = 20.0
    max_stall_generations: int = 50
    max_generations: int | None = None   # stop after this many generations even if budget is left

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> AlgorithmConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(cfg) - known
        if unknown:
            raise ConfigError(f"algorithm: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
        out = cls(**dict(cfg))
        out.check()
        return out

    def check(self) -> None:
        if self.name not in ALGORITHMS:
            raise ConfigError(f"algorithm={self.name!r} is unknown; choose one of {list(ALGORITHMS)}")
        if isinstance(self.population, bool) or not isinstance(self.population, int) or self.population < 2:
            raise ConfigError(f"algorithm.population must be an integer >= 2 (selection needs two parents), "
                              f"got {self.population!r}")
        if not 0 <= self.crossover_prob <= 1:
            raise ConfigError(f"algorithm.crossover_prob must lie in [0, 1], got {self.crossover_prob}")
        if self.mutation_prob is not None and not 0 <= self.mutation_prob <= 1:
            raise ConfigError(f"algorithm.mutation_prob must lie in [0, 1] (or null = 1/population), got "
                              f"{self.mutation_prob}")
        if self.crossover not in ("uniform", "sbx"):
            raise ConfigError(f"algorithm.crossover must be 'uniform' or 'sbx', got {self.crossover!r}")
        if self.mutation not in ("reset", "pm"):
            raise ConfigError(f"algorithm.mutation must be 'reset' or 'pm', got {self.mutation!r}")
        if self.max_generations is not None and self.max_generations < 1:
            raise ConfigError(f"algorithm.max_generations must be >= 1 or null, got {self.max_generations}")
        if self.max_stall_generations < 1:
            raise ConfigError(f"algorithm.max_stall_generations must be >= 1, got {self.max_stall_generations}")

    def check_objectives(self, n_obj: int) -> None:
        """Algorithm-specific requirements, checked before any work: GA is single-objective, AGE-MOEA needs
        numba."""
        if self.name == "ga" and n_obj != 1:
            raise ConfigError(f"algorithm=ga is single-objective but {n_obj} objectives are set; use "
                              "objectives=[error] (with constraints.latency_ms=...) or algorithm=nsga2")
        if self.name == "agemoea":
            try:
                import numba  # noqa: F401  (pymoo's AGE-MOEA compiles its survival with numba)
            except ImportError:
                raise ConfigError("algorithm=agemoea needs numba (pymoo compiles AGE-MOEA with it): "
                                  "pip install -e '.[agemoea]', or use algorithm=nsga2") from None

    @property
    def gene_mutation_prob(self) -> float:
        return float(self.mutation_prob) if self.mutation_prob is not None else 1.0 / self.population


class CategoricalResetMutation(Mutation):
    """Each gene is reset, with probability ``prob_var``, to a *different* uniformly drawn candidate.

    Hand-written: pymoo's ``ChoiceRandomMutation`` needs a mixed-variable problem, and polynomial mutation
    treats candidate indices as ordered numbers, which they are not (skip, k3_e3_se0, k3_e3_se0.25, ...).
    """

    def _do(self, problem: Problem, X: np.ndarray, *args: Any, random_state: np.random.Generator | None = None,
            **kwargs: Any) -> np.ndarray:
        X = np.asarray(X).astype(int).copy()
        prob_var = np.asarray(self.get_prob_var(problem, size=len(X)), dtype=float).reshape(-1, 1)
        span = (problem.xu - problem.xl).astype(int)  # number of *other* candidates per gene
        mask = (random_state.random(X.shape) < prob_var) & (span > 0)
        shift = 1 + np.floor(random_state.random(X.shape) * np.maximum(span, 1)).astype(int)
        reset = problem.xl + (X - problem.xl + shift) % (span + 1)
        X[mask] = reset[mask]
        return X


class SubnetProblem(Problem):
    """Integer genomes of a space for pymoo; objectives are supplied by the budgeted loop (ask-and-tell)."""

    def __init__(self, space: ObjectiveSpace) -> None:
        super().__init__(n_var=space.codec.n_var, n_obj=space.n_obj, n_ieq_constr=space.n_constr,
                         xl=space.codec.xl.astype(float), xu=space.codec.xu.astype(float), vtype=int)

    def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("SubnetProblem is evaluated by the budgeted ask-and-tell loop, not by pymoo")


def build_algorithm(cfg: AlgorithmConfig, initial: np.ndarray, n_obj: int) -> Any:
    """The pymoo algorithm of ``cfg`` seeded with the ``initial`` population (genomes)."""
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.crossover.ux import UX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair

    if cfg.crossover == "uniform":
        crossover = UX(prob=cfg.crossover_prob)
    else:
        crossover = SBX(prob=cfg.crossover_prob, eta=cfg.crossover_eta, vtype=float, repair=RoundingRepair())
    if cfg.mutation == "reset":
        mutation = CategoricalResetMutation(prob=1.0, prob_var=cfg.gene_mutation_prob)
    else:
        mutation = PM(prob=1.0, prob_var=cfg.gene_mutation_prob, eta=cfg.mutation_eta, vtype=float,
                      repair=RoundingRepair())
    common = {"pop_size": cfg.population, "sampling": initial.astype(float), "crossover": crossover,
              "mutation": mutation, "eliminate_duplicates": True}
    if cfg.name == "nsga2":
        from pymoo.algorithms.moo.nsga2 import NSGA2

        return NSGA2(**common)
    cfg.check_objectives(n_obj)
    if cfg.name == "agemoea":
        from pymoo.algorithms.moo.age import AGEMOEA

        return AGEMOEA(**common)
    if cfg.name == "ga":
        from pymoo.algorithms.soo.nonconvex.ga import GA

        return GA(**common)
    raise ConfigError(f"algorithm {cfg.name!r} has no pymoo implementation")


@dataclass
class GenerationRecord:
    generation: int
    validations: int        # distinct sub-networks consumed by this search so far
    fresh: int              # of those, validated by this run (not taken from the store)
    hypervolume: float
    front_size: int


@dataclass
class SearchResult:
    """What one device's search consumed, in order, and its hypervolume per generation."""

    target: str
    genes: list[np.ndarray] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    F: list[np.ndarray] = field(default_factory=list)
    history: list[GenerationRecord] = field(default_factory=list)
    fresh: int = 0
    stopped_early: str | None = None

    @property
    def consumed(self) -> int:
        return len(self.keys)

    def front(self) -> np.ndarray:
        """Indices (into ``keys``) of the non-dominated consumed sub-networks, sorted by the second objective
        (by the first when there is one)."""
        if not self.F:
            return np.zeros(0, dtype=int)
        F = np.array(self.F)
        idx = non_dominated(F)
        col = 1 if F.shape[1] > 1 else 0
        return idx[np.lexsort((F[idx, 0], F[idx, col]))]


class BudgetedSearch:
    """One device's search: optimiser proposals -> costs, constraints, cached or fresh validation."""

    def __init__(self, space: ObjectiveSpace, target: str, validator: Validator, store: ValidationStore,
                 algorithm: AlgorithmConfig, budget: int, seed: int, normalisation: Normalisation,
                 initial: np.ndarray | None = None, progress: bool = False,
                 on_generation: Callable[[str, GenerationRecord], None] | None = None,
                 first_population: int | None = None) -> None:
        first = algorithm.population if first_population is None else first_population  # validated first
        check_budget(budget, first)
        self.space = space
        self.codec = space.codec
        self.target = target
        self.validator = validator
        self.store = store
        self.algorithm = algorithm
        self.budget = int(budget)
        self.seed = int(seed)
        self.normalisation = normalisation
        self.on_generation = on_generation
        self.result = SearchResult(target)
        self._seen: dict[str, int] = {}
        self._pending: list[tuple[int, np.ndarray, str]] = []  # planned, not yet validated: (position, genes, key)
        self._progress = progress
        self._bar: Any = None
        self.initial = initial_population(self.codec, first, seed, initial)
        upper = np.array(normalisation.upper)
        self._penalty = upper + (upper - np.array(normalisation.lower))  # F of infeasible (never ranked by F)

    # ------------------------------------------------------------------ one genome
    def _price(self, genes: np.ndarray) -> tuple[int | None, np.ndarray] | None:
        """Plan one genome: ``(position, G)``, ``position`` in the result of a consumed feasible sub-network (its
        ``F`` is known once :meth:`_settle` validated the pending ones) or ``None`` for an infeasible one; ``None``
        when it needs a validation the budget cannot pay."""
        genes = np.asarray(genes).astype(int)
        costs = self.space.costs_of(genes, self.target)
        G = self.space.violations(costs)
        if np.any(G > 0):
            return None, G
        key = self.codec.key(genes)
        if key in self._seen:
            return self._seen[key], G
        if self.result.consumed >= self.budget:
            return None
        position = self.result.consumed
        self._seen[key] = position
        self.result.genes.append(genes.copy())
        self.result.keys.append(key)
        record = self.store.get(key)
        if record is None:
            self.result.F.append(None)  # type: ignore[arg-type]  # filled by _settle
            self._pending.append((position, genes.copy(), key))
        else:
            self.result.F.append(self._vector(record, costs, key))
            self._advance()
        return position, G

    def _vector(self, record: Mapping[str, Any], costs: Mapping[str, Any], key: str) -> np.ndarray:
        F = self.space.vector({n: float(record[n]) for n in ("error", "ce")}, costs)
        check_finite(F.tolist(), key)
        return F

    def _advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def _settle(self) -> None:
        """Validate the planned sub-networks that no record holds, as one batch (split over the ranks of a
        :class:`~nas.subnet_search.ranks.RankPool`), and record each in order as its values arrive."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        archs = [self.codec.decode(genes) for _, genes, _ in pending]
        weights = self.space.costs["macs"](np.array([genes for _, genes, _ in pending])).tolist()
        rebalance()  # this process' threads, as other spnas processes come and go (nas.threads; rate-limited)
        values = validate_many(self.validator, archs, weights)
        try:
            for (position, genes, key), arch, measured in zip(pending, archs, values):
                record = self._record(genes, key, arch, measured)
                self.result.fresh += 1
                self.result.F[position] = self._vector(record, self.space.costs_of(genes, self.target), key)
                self._advance()
                rebalance()  # before the next validation of a long batch
        finally:
            self.store.sync()  # one fsync per batch; each record is already in the file (safe from a kill)

    def _record(self, genes: np.ndarray, key: str, arch: Architecture, values: Mapping[str, float]) -> dict[str, Any]:
        try:
            check_finite(dict(values), key)
        except ConfigError:
            raise ConfigError(f"sub-network [{key}] (genes {genes.tolist()}) has a non-finite objective "
                              f"{ {k: float(v) for k, v in values.items()} }; NaN/inf is never written. The "
                              "supernet diverged or the data is broken: check the checkpoint and data=...") from None
        g = genes[None]
        record = {"key": key, "genes": genes.tolist(), "architecture": [c.to_dict() for c in arch.layers],
                  "error": float(values["error"]), "ce": float(values["ce"]),
                  "latency_ms": {t.name: float(self.space.latency[t.name](g)[0]) for t in self.space.targets},
                  "lut_fingerprints": {t.name: t.fingerprint for t in self.space.targets},
                  "macs_m": float(self.space.costs["macs"](g)[0]),
                  "params_m": float(self.space.costs["params"](g)[0])}
        return self.store.add(record, durable=False)

    def _evaluate(self, X: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """Price rows of ``X`` in order, stopping at the first one the budget cannot pay; validate the new ones."""
        planned = []
        for genes in X:
            priced = self._price(genes)
            if priced is None:
                break
            planned.append(priced)
        self._settle()
        n = len(planned)
        Fs = [self._penalty.copy() if pos is None else self.result.F[pos] for pos, _ in planned]
        return (n, np.array(Fs).reshape(n, self.space.n_obj),
                np.array([G for _, G in planned]).reshape(n, self.space.n_constr))

    def _record_generation(self, generation: int) -> None:
        F = np.array(self.result.F).reshape(-1, self.space.n_obj)
        front = non_dominated(F) if len(F) else np.zeros(0, dtype=int)
        rec = GenerationRecord(generation, self.result.consumed, self.result.fresh,
                               self.normalisation.hypervolume(F[front]) if len(front) else 0.0, int(len(front)))
        self.result.history.append(rec)
        if self.on_generation is not None:
            self.on_generation(self.target, rec)

    # ------------------------------------------------------------------ loops
    def run(self) -> SearchResult:
        self._bar = tqdm(total=self.budget, desc=f"{self.algorithm.name} [{self.target}]", unit="val",
                         disable=not self._progress, leave=False)
        try:
            self._run()
        finally:
            self._bar.close()
        return self.result

    def _run(self) -> None:
        if self.algorithm.name == "random":
            self._run_random()
        else:
            self._run_pymoo()

    def _stalled(self, stall: int, generation: int) -> bool:
        if self.algorithm.max_generations is not None and generation >= self.algorithm.max_generations:
            return True
        if stall < self.algorithm.max_stall_generations:
            return False
        self.result.stopped_early = (f"no new feasible sub-network in {stall} generations; stopped at "
                                     f"{self.result.consumed} of {self.budget} validations (generation "
                                     f"{generation}): the constraints leave too few networks, or the "
                                     "population has converged")
        log.warning("device %s: %s", self.target, self.result.stopped_early)
        return True

    def _run_pymoo(self) -> None:
        from pymoo.termination import get_termination

        problem = SubnetProblem(self.space)
        algorithm = build_algorithm(self.algorithm, self.initial, self.space.n_obj)
        algorithm.setup(problem, termination=get_termination("n_gen", 10**9), seed=self.seed, verbose=False)
        generation, stall = 0, 0
        while self.result.consumed < self.budget:
            pop = algorithm.ask()
            before = self.result.consumed
            X = pop.get("X") if pop is not None and len(pop) else np.zeros((0, self.codec.n_var))
            n, F, G = self._evaluate(np.rint(X).astype(int))
            if n == 0 and generation > 0:
                stall += 1
                if self._stalled(stall, generation) or self.result.consumed >= self.budget:
                    break
                continue
            pop = pop[:n]
            static = StaticProblem(problem, F=F, G=G) if self.space.n_constr else StaticProblem(problem, F=F)
            Evaluator().eval(static, pop)
            algorithm.tell(infills=pop)
            generation += 1
            self._record_generation(generation)
            stall = stall + 1 if self.result.consumed == before else 0
            if self._stalled(stall, generation):
                break

    def _run_random(self) -> None:
        """Uniform random sub-networks (the baseline), in generations of ``population`` for comparable curves."""
        rng = np.random.default_rng([self.seed, 1])
        pending = list(self.initial)
        generation, stall = 0, 0
        while self.result.consumed < self.budget:
            before = self.result.consumed
            target = min(self.budget, before + self.algorithm.population)
            tries = 0
            while self.result.consumed < target and tries < 100 * self.algorithm.population:
                genes = pending.pop(0) if pending else self.codec.random(rng, 1)[0]
                tries += 1
                if self._price(genes) is None:
                    break
            self._settle()
            generation += 1
            self._record_generation(generation)
            stall = stall + 1 if self.result.consumed == before else 0
            if self._stalled(stall, generation):
                break


def check_budget(budget: Any, population: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise ConfigError(f"budget must be an integer number of validations, got {budget!r}")
    if budget < population:
        raise ConfigError(f"budget={budget} is smaller than one population ({population}); the first generation "
                          f"alone needs {population} validations: raise budget or lower algorithm.population")


def initial_population(codec: Any, population: int, seed: int, warm: np.ndarray | None = None) -> np.ndarray:
    """The first population: the warm-start genomes (at most ``population``, spread over the given order), then
    distinct uniform random genomes drawn with ``seed``."""
    rows: list[np.ndarray] = []
    seen: set[tuple[int, ...]] = set()
    if warm is not None and len(warm):
        warm = np.asarray(warm, dtype=int)
        if len(warm) > population:
            warm = warm[np.unique(np.linspace(0, len(warm) - 1, population).round().astype(int))]
        for row in warm:
            if tuple(row) not in seen:
                seen.add(tuple(row))
                rows.append(row)
    rng = np.random.default_rng([seed, 0])
    limit = min(population, codec.size)
    while len(rows) < limit:
        row = codec.random(rng, 1)[0]
        if tuple(row) not in seen:
            seen.add(tuple(row))
            rows.append(row)
    return np.array(rows, dtype=int)
