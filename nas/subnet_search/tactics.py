"""Search tactics (source 002 §4.4-4.5): how validations and predictors are combined (``tactic=`` group).

* ``validation``: every evaluation the optimiser asks for is a validation (:class:`BudgetedSearch` as it is).
* ``full`` (§4.4): validate ``sample`` sub-networks (the warm-start front, then uniform ones), train the
  predictors on them, run the evolutionary algorithm for ``generations`` on the predictors, validate the best
  ``population`` sub-networks of its final population.
* ``concurrent`` (§4.5, Algorithm 1, ConcurrentNAS): validate a population of ``c = population`` sub-networks,
  retrain the weak predictors on every validation so far, run the evolutionary algorithm ``J = generations``
  generations on the predictors, validate the best ``c`` sub-networks it found that are not yet validated, and
  repeat for ``I = iterations`` populations.

Only the validated objective (``error`` or ``ce``) is predicted: latency, MACs and parameters come from the cost
model, which is exact for the search's objective and free (§4.5 allows constraining a subset of objectives to
measurements). On the predictors, a sub-network that was already validated takes its validated value, so the
evolutionary search proposes sub-networks that the predictor expects to improve on what is known.
Every validation goes through :class:`BudgetedSearch` (store, budget, never twice, infeasible never validated).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymoo.core.problem import Problem

from nas.errors import ConfigError
from nas.subnet_search.engine import BudgetedSearch, build_algorithm, initial_population
from nas.subnet_search.predictors import ObjectivePredictor
from nas.subnet_search.search_objectives import CONSTRAINTS, VALIDATED, ObjectiveSpace

log = logging.getLogger(__name__)

TACTICS = ("validation", "full", "concurrent")


@dataclass
class TacticConfig:
    """Settings of a tactic (``nas/conf/tactic/*.yaml``); unused fields are ``None``."""

    name: str
    population: int | None = None     # concurrent: c per iteration; full: validated from the final population
    iterations: int | None = None     # concurrent: I
    sample: int | None = None         # full: validations that train the predictors
    generations: int | None = None    # J: generations of the evolutionary algorithm on the predictors
    ea_population: int | None = None  # population of that evolutionary algorithm

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TacticConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(cfg) - known
        if unknown:
            raise ConfigError(f"tactic: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
        out = cls(**dict(cfg))
        if out.name not in TACTICS:
            raise ConfigError(f"tactic={out.name!r} is unknown; choose one of {list(TACTICS)}")
        needed = {"full": ("sample", "population", "generations", "ea_population"),
                  "concurrent": ("population", "iterations", "generations", "ea_population")}.get(out.name, ())
        for key in needed:
            value = getattr(out, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"tactic={out.name} needs tactic.{key} as an integer >= 1, got {value!r}")
        if out.name != "validation" and out.ea_population < 2:
            raise ConfigError(f"tactic.ea_population must be >= 2 (selection needs two parents), got "
                              f"{out.ea_population}")
        return out

    @property
    def uses_predictors(self) -> bool:
        return self.name != "validation"

    @property
    def first_population(self) -> int | None:
        """Sub-networks validated before the first predictor is trained (``None``: the algorithm's population)."""
        return {"full": self.sample, "concurrent": self.population}.get(self.name)

    def validations(self) -> int | None:
        """Validations the tactic plans (``None``: as many as the budget allows)."""
        if self.name == "concurrent":
            return self.iterations * self.population
        if self.name == "full":
            return self.sample + self.population
        return None

    def check_budget(self, budget: int) -> None:
        planned = self.validations()
        if planned is None or planned <= budget:
            return
        if self.name == "concurrent":
            raise ConfigError(f"tactic=concurrent: iterations x population = {self.iterations} x {self.population} "
                              f"= {planned} validations exceed budget={budget}; lower tactic.iterations or "
                              "tactic.population, or raise budget")
        raise ConfigError(f"tactic=full: sample + population = {self.sample} + {self.population} = {planned} "
                          f"validations exceed budget={budget}; lower them or raise budget")


class PredictedProblem(Problem):
    """The search problem on predictors: the validated objective from the predictor (or, for a validated
    sub-network, its validated value), costs and constraints from the exact cost tables; vectorised."""

    def __init__(self, space: ObjectiveSpace, target: str, predictor: ObjectivePredictor,
                 known: Mapping[tuple[int, ...], float]) -> None:
        super().__init__(n_var=space.codec.n_var, n_obj=space.n_obj, n_ieq_constr=space.n_constr,
                         xl=space.codec.xl.astype(float), xu=space.codec.xu.astype(float), vtype=int)
        self.space, self.target, self.predictor, self.known = space, target, predictor, known

    def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        genes = np.rint(x).astype(int)
        validated = self.predictor.predict(genes)
        if self.known:
            for row, g in enumerate(genes.tolist()):
                value = self.known.get(tuple(g))
                if value is not None:
                    validated[row] = value
        cols = [validated if n in VALIDATED else self.space.cost_table(n, self.target)(genes)
                for n in self.space.names]
        out["F"] = np.column_stack(cols)
        if self.space.n_constr:
            out["G"] = np.column_stack([self.space.cost_table(CONSTRAINTS[k], self.target)(genes) - limit
                                        for k, limit in self.space.constraints.items()])


class PredictorSearch(BudgetedSearch):
    """``tactic=full`` and ``tactic=concurrent`` on top of the budgeted validation loop.

    ``history`` gains one record per validated batch (the x axis of ``hv.csv`` stays the validations), and
    ``rounds`` one entry per predictor training: records, cross-validated MAPE and Kendall τ.
    """

    def __init__(self, *args: Any, tactic: TacticConfig, predictor_config: Mapping[str, Any],
                 **kwargs: Any) -> None:
        super().__init__(*args, first_population=tactic.first_population, **kwargs)
        tactic.check_budget(self.budget)
        self.tactic = tactic
        self.predictor_config = dict(predictor_config)
        self.objective = self.space.validated
        self.predictor: ObjectivePredictor | None = None
        self.rounds: list[dict[str, Any]] = []
        self._rng = np.random.default_rng([self.seed, 2])

    # ------------------------------------------------------------------ pieces
    def _consume(self, candidates: np.ndarray, want: int) -> int:
        """Validate ``candidates`` in order until ``want`` new sub-networks are consumed (infeasible and known
        ones are skipped), topping up with uniform random sub-networks; returns how many were consumed."""
        start = self.result.consumed
        goal = min(self.budget, start + want)
        pending = [np.asarray(c, dtype=int) for c in candidates]
        tries = 0
        while self.result.consumed < goal and tries < 100 * max(want, 1):
            tries += 1
            genes = pending.pop(0) if pending else self.codec.random(self._rng, 1)[0]
            if self.codec.key(genes) in self._seen:
                continue
            if self._price(genes) is None:
                break
        self._settle()
        return self.result.consumed - start

    def _train(self, round_: int) -> ObjectivePredictor:
        genes = np.array(self.result.genes)
        column = self.space.names.index(self.objective)
        y = np.array([F[column] for F in self.result.F])
        predictor = ObjectivePredictor(self.objective, self.codec, self.predictor_config, self.seed + round_)
        predictor.fit(genes, y)
        cv = predictor.meta.get("cv", {})
        self.rounds.append({"round": round_, "records": len(y), "cv_mape_pct": cv.get("mape_pct"),
                            "cv_kendall_tau": cv.get("kendall_tau")})
        log.info("device %s, round %d: %s predictor of %s on %d validations, cross-validated MAPE %s %%, "
                 "Kendall tau %.3f", self.target, round_, predictor.name, self.objective, len(y),
                 f"{cv['mape_pct']:.2f}" if cv.get("mape_pct") is not None else "n/a",
                 cv.get("kendall_tau", float("nan")))
        self.predictor = predictor
        return predictor

    def _propose(self, predictor: ObjectivePredictor, count: int, round_: int) -> np.ndarray:
        """Run the evolutionary algorithm on the predictors; return up to ``count`` unvalidated genomes of its
        final population, best first (non-dominated rank, then crowding distance)."""
        from pymoo.optimize import minimize
        from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

        column = self.space.names.index(self.objective)
        known = {tuple(int(v) for v in g): float(F[column]) for g, F in zip(self.result.genes, self.result.F)}
        problem = PredictedProblem(self.space, self.target, predictor, known)
        # first population: the validated sub-networks, best non-dominated fronts first, then uniform ones
        F = np.array(self.result.F)
        order = [i for front in NonDominatedSorting().do(F) for i in front][: self.tactic.ea_population]
        warm = np.array([self.result.genes[i] for i in order], dtype=int)
        start = initial_population(self.codec, self.tactic.ea_population, self.seed + 1000 * round_, warm)
        settings = dataclasses.replace(self.algorithm, population=self.tactic.ea_population)
        algorithm = build_algorithm(settings, start, self.space.n_obj)
        res = minimize(problem, algorithm, ("n_gen", self.tactic.generations), seed=self.seed + round_,
                       verbose=False)
        pop = res.pop
        X = np.rint(pop.get("X")).astype(int)
        F = pop.get("F")
        feasible = np.ones(len(X), dtype=bool) if not self.space.n_constr else np.all(pop.get("G") <= 0, axis=1)
        fresh = [i for i in range(len(X)) if feasible[i] and tuple(X[i].tolist()) not in known]
        if not fresh:
            return np.zeros((0, self.codec.n_var), dtype=int)
        chosen: list[int] = []
        for front in NonDominatedSorting().do(F[fresh]):
            idx = sorted((fresh[i] for i in front), key=lambda i: tuple(F[i]))
            room = count - len(chosen)
            if len(idx) > room:  # the last front that fits only in part: spread the picks along it
                idx = [idx[k] for k in np.unique(np.linspace(0, len(idx) - 1, room).round().astype(int))]
            chosen.extend(idx)
            if len(chosen) >= count:
                break
        self.rounds[-1]["proposed"] = len(chosen)  # the rest of the next population is uniform random
        return X[chosen]

    # ------------------------------------------------------------------ loops
    def _run_full(self) -> None:
        self._consume(self.initial, self.tactic.sample)
        self._record_generation(1)
        if self.result.consumed < self.budget:
            predictor = self._train(1)
            proposals = self._propose(predictor, self.tactic.population, 1)
            self._consume(proposals, self.tactic.population)
            self._record_generation(2)

    def _run_concurrent(self) -> None:
        batch = self.initial
        for i in range(1, self.tactic.iterations + 1):
            self._consume(batch, self.tactic.population)
            self._record_generation(i)
            if i == self.tactic.iterations or self.result.consumed >= self.budget:
                break
            predictor = self._train(i)
            batch = self._propose(predictor, self.tactic.population, i)

    def _run(self) -> None:
        if self.algorithm.name == "random":
            raise ConfigError(f"tactic={self.tactic.name} runs an evolutionary algorithm on the predictors; use "
                              "algorithm=nsga2 (or agemoea, ga)")
        if self.tactic.name == "full":
            self._run_full()
        else:
            self._run_concurrent()
