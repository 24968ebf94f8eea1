"""What one training step costs, shared by the step benchmarks (:mod:`nas.benchmarks.supernet_step_cost`,
:mod:`nas.benchmarks.solver_step_cost`): the memory a step needs (CPU has no allocator peak to read), its time in
interleaved rounds, and their common command-line settings."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable, Sequence

import torch

from nas.space.search_space import SearchSpace


def saved_tensor_bytes(loss_fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Run ``loss_fn`` and return its loss and the bytes autograd saved for backward (unique storages)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    return loss, sum(seen.values())


def state_bytes(module: torch.nn.Module, optimizers: Iterable[torch.optim.Optimizer]) -> int:
    """Bytes of parameters, their current gradients and the optimisers' state."""
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in module.parameters() if p.grad is not None)
    opt = sum(v.numel() * v.element_size() for o in optimizers for s in o.state.values() for v in s.values()
              if torch.is_tensor(v))
    return params + grads + opt


def add_step_arguments(parser: argparse.ArgumentParser, unit: str) -> None:
    """The settings every step benchmark takes: space, batch, timed steps per ``unit``, rounds, threads."""
    parser.add_argument("--space", default="tiny", help="name of a nas/conf/space/*.yaml")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help=f"timed steps per {unit}")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the steps are spread over")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())


def load_space(name: str) -> SearchSpace:
    """``space=<name>`` as ``search.py`` composes it (a bad name is one :class:`~nas.errors.ConfigError` line)."""
    from nas.cli import compose_config

    return SearchSpace.from_config(compose_config("search", [f"space={name}"]).space)


def elapsed_ms(call: Callable[[], object]) -> float:
    """Wall time of ``call()`` in milliseconds."""
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def time_in_rounds(steps: Sequence[Callable[[], float]], count: int, rounds: int) -> list[list[float]]:
    """About ``count`` timed calls of every step (each returns its own time in ms), spread over ``rounds`` rounds
    that visit every step in turn (``max(1, count // rounds)`` calls per visit): load on a shared machine hits
    every step alike. One list of times per step."""
    per_round = max(1, count // rounds)
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(rounds):
        for timed, step in zip(times, steps):
            timed += [step() for _ in range(per_round)]
    return times
