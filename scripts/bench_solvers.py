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
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from hydra import compose, initialize_config_dir

from nas.benchmarking import saved_tensor_bytes, state_bytes
from nas.cli import CONFIG_DIR
from nas.cost.backends import MacsProxy
from nas.cost.profiler import profile_space
from nas.search.optimization import build_optimizer
from nas.search.pipeline import instantiate_solver
from nas.space.search_space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]


class Meter:
    """Peak saved-for-backward bytes over the passes run inside :meth:`track`."""

    def __init__(self) -> None:
        self.peak = 0

    def track(self, loss_fn: Callable[[], torch.Tensor]) -> None:
        loss, saved = saved_tensor_bytes(loss_fn)
        self.peak = max(self.peak, saved)
        loss.backward()


class Solver:
    def __init__(self, name: str, module: torch.nn.Module, step: Callable[[Meter], None],
                 optimizers: list[torch.optim.Optimizer]) -> None:
        self.name, self.module, self.step, self.optimizers = name, module.train(), step, optimizers
        self.times: list[float] = []
        self.meter = Meter()


def build(space: SearchSpace, lut, batch: tuple[torch.Tensor, torch.Tensor], arch_batch, lam: float) -> list[Solver]:  # noqa: ANN001
    x, y = batch
    xa, ya = arch_batch
    solvers = []

    def solver(name: str):  # noqa: ANN202 - each solver with the settings of its nas/conf/solver/<name>.yaml
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("search", overrides=[f"solver={name}", f"solver.lambda_={lam}"])
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

        def bilevel_step(meter: Meter, module=module, w_opt=w_opt, a_opt=a_opt) -> None:  # noqa: ANN001
            a_opt.zero_grad(set_to_none=True)
            meter.track(lambda: module.arch_loss(xa, ya)[0])
            a_opt.step()
            module.after_arch_step()
            w_opt.zero_grad(set_to_none=True)
            meter.track(lambda: module.weight_loss(x, y)[0])
            w_opt.step()

        solvers.append(Solver(name, module, bilevel_step, [w_opt, a_opt]))
    return solvers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="tiny", help="name of a nas/conf/space/*.yaml")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per solver")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the steps are spread over")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--lambda", dest="lam", type=float, default=0.2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    root = ROOT
    space = SearchSpace.from_config(yaml.safe_load((root / "conf" / "space" / f"{args.space}.yaml").read_text()))
    lut = profile_space(space, MacsProxy(), 3, 10, progress=False)  # the LUT's values do not change step cost
    shape = (args.batch, 3, space.resolution, space.resolution)
    batch = (torch.randn(shape), torch.randint(0, 10, (args.batch,)))
    arch_batch = (torch.randn(shape), torch.randint(0, 10, (args.batch,)))
    solvers = build(space, lut, batch, arch_batch, args.lam)

    for s in solvers:  # warm-up (allocator, first-call overheads) and memory measurement
        s.step(s.meter)
        s.step(s.meter)
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for s in solvers:
            for _ in range(per_round):
                start = time.perf_counter()
                s.step(Meter())
                s.times.append((time.perf_counter() - start) * 1e3)

    base = solvers[0]
    base_ms = statistics.median(base.times)
    base_mem = base.meter.peak + state_bytes(base.module, base.optimizers)
    print(f"space {args.space}, batch {args.batch}, {args.threads} thread(s), {len(base.times)} timed steps per "
          f"solver ({args.rounds} interleaved rounds)")
    print(f"{'solver':<20} {'step ms':>9} {'x single':>9} {'activations MiB':>16} {'state MiB':>10} "
          f"{'total MiB':>10} {'x single':>9}")
    for s in solvers:
        ms = statistics.median(s.times)
        state = state_bytes(s.module, s.optimizers)
        total = s.meter.peak + state
        print(f"{s.name:<20} {ms:9.1f} {ms / base_ms:9.2f} {s.meter.peak / 2**20:16.2f} {state / 2**20:10.2f} "
              f"{total / 2**20:10.2f} {total / base_mem:9.2f}")


if __name__ == "__main__":
    main()
