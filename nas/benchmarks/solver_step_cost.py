"""Search-step cost of the solvers relative to single-path: time per step and memory per step.

    python scripts/bench_solvers.py --space tiny --batch 32 --steps 10

One search step of each solver as it runs in training (no Lightning overhead):

* ``single_path``: one forward/backward of ``CE + lambda * log(R)`` and one optimiser step (weights and
  thresholds together);
* ``single_path_softmax``, ``multi_path`` (softmax), ``proxyless``: one architecture step (on a second batch)
  plus one weight step, as the bi-level solvers alternate them.

Time is the median over interleaved rounds (so load on a shared machine hits every solver alike). Memory is
the peak over the step's backward passes of the bytes of tensors autograd saved for backward (activations,
unique storages), plus parameters, gradients and optimiser state. Prints absolute figures and ratios to
single-path.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from nas.benchmarks import benchmark_command, command_parser
from nas.benchmarks.step_measurement import (
    add_step_arguments,
    elapsed_ms,
    load_space,
    saved_tensor_bytes,
    state_bytes,
    time_in_rounds,
)
from nas.cli import compose_config
from nas.cost.backends import MacsProxy
from nas.cost.profiler import profile_space
from nas.search.optimization import build_optimizer
from nas.search.pipeline import instantiate_solver
from nas.space.search_space import SearchSpace

Batch = tuple[torch.Tensor, torch.Tensor]


class Meter:
    """Peak saved-for-backward bytes over the passes run inside :meth:`track`."""

    def __init__(self) -> None:
        self.peak = 0

    def track(self, loss_fn: Callable[[], torch.Tensor]) -> None:
        loss, saved = saved_tensor_bytes(loss_fn)
        self.peak = max(self.peak, saved)
        loss.backward()


class Solver:
    """A solver's module, its search step (``step(meter)``) and the optimisers that step uses."""

    def __init__(self, name: str, module: torch.nn.Module, step: Callable[[Meter], None],
                 optimizers: list[torch.optim.Optimizer]) -> None:
        self.name, self.module, self.step, self.optimizers = name, module.train(), step, optimizers
        self.meter = Meter()


def build(space: SearchSpace, lut: Any, batch: Batch, arch_batch: Batch, lam: float) -> list[Solver]:
    """Single-path and the bi-level solvers, each with the settings of its ``nas/conf/solver/<name>.yaml``."""
    x, y = batch
    xa, ya = arch_batch
    solvers = []

    def solver(name: str) -> Any:
        cfg = compose_config("search", [f"solver={name}", f"solver.lambda_={lam}"])
        return instantiate_solver(cfg.solver, space, x.shape[1], 10, lut)

    sp = solver("single_path")
    sp_opt = build_optimizer(sp.optimizer_factory, [{"params": sp.supernet.weight_parameters()},
                                                    {"params": sp.supernet.threshold_parameters()}], "optimizer")

    def single_path_step(meter: Meter) -> None:
        sp_opt.zero_grad(set_to_none=True)

        def loss() -> torch.Tensor:
            decisions = sp.supernet.decisions()
            return sp.cross_entropy(sp.supernet(x, decisions), y) + sp.runtime_loss(sp.runtime_model(decisions), lam)

        meter.track(loss)
        sp_opt.step()

    solvers.append(Solver("single_path", sp, single_path_step, [sp_opt]))

    for name in ("single_path_softmax", "multi_path", "proxyless"):
        module = solver(name)
        w_opt = build_optimizer(module.optimizer_factory, [{"params": module.weight_parameters()}], "optimizer")
        a_opt = build_optimizer(module.arch_optimizer_factory, [{"params": module.arch_parameters()}], "arch_optimizer")

        def bilevel_step(meter: Meter, module: Any = module, w_opt: Any = w_opt, a_opt: Any = a_opt) -> None:
            a_opt.zero_grad(set_to_none=True)
            meter.track(lambda: module.arch_loss(xa, ya)[0])
            a_opt.step()
            module.after_arch_step()
            w_opt.zero_grad(set_to_none=True)
            meter.track(lambda: module.weight_loss(x, y)[0])
            w_opt.step()

        solvers.append(Solver(name, module, bilevel_step, [w_opt, a_opt]))
    return solvers


def parser() -> argparse.ArgumentParser:
    ap = command_parser(__doc__, full=False)
    add_step_arguments(ap, "solver")
    ap.add_argument("--lambda", dest="lam", type=float, default=0.2)
    return ap


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Measure and print the table; returns, per solver, step ms, peak activation bytes and state bytes."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    space = load_space(args.space)
    lut = profile_space(space, MacsProxy(), 3, 10, progress=False)  # the LUT's values do not change step cost
    shape = (args.batch, 3, space.resolution, space.resolution)
    batch = (torch.randn(shape), torch.randint(0, 10, (args.batch,)))
    arch_batch = (torch.randn(shape), torch.randint(0, 10, (args.batch,)))
    solvers = build(space, lut, batch, arch_batch, args.lam)

    for s in solvers:  # warm-up (allocator, first-call overheads) and memory measurement
        s.step(s.meter)
        s.step(s.meter)
    times = time_in_rounds([lambda s=s: elapsed_ms(lambda: s.step(Meter())) for s in solvers], args.steps,
                           args.rounds)
    results = {s.name: {"step_ms": statistics.median(timed), "activation_bytes": s.meter.peak,
                        "state_bytes": state_bytes(s.module, s.optimizers)} for s, timed in zip(solvers, times)}
    print(f"space {args.space}, batch {args.batch}, {args.threads} thread(s), {len(times[0])} timed steps per "
          f"solver ({args.rounds} interleaved rounds)")
    base = results["single_path"]
    base_mem = base["activation_bytes"] + base["state_bytes"]
    print(f"{'solver':<20} {'step ms':>9} {'x single':>9} {'activations MiB':>16} {'state MiB':>10} "
          f"{'total MiB':>10} {'x single':>9}")
    for name, r in results.items():
        total = r["activation_bytes"] + r["state_bytes"]
        print(f"{name:<20} {r['step_ms']:9.1f} {r['step_ms'] / base['step_ms']:9.2f} "
              f"{r['activation_bytes'] / 2**20:16.2f} {r['state_bytes'] / 2**20:10.2f} {total / 2**20:10.2f} "
              f"{total / base_mem:9.2f}")
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """``python scripts/bench_solvers.py [--space ...] [--lambda ...]``."""
    return benchmark_command(parser(), run, argv)
