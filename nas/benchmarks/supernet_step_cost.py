"""Search-cost benchmark: one training step of the single-path supernet vs fixed child networks.

    python scripts/bench_search_step.py --space cifar --batch 32 --steps 10

Times forward + backward + optimiser step (median over interleaved rounds, so load on a shared machine hits
every variant alike) and the memory a step needs: bytes of tensors autograd saves for the backward pass
(activations), plus parameters, gradients and optimiser state. With ``--device cuda`` the step is timed with
CUDA events and the allocator's peak (``torch.cuda.max_memory_allocated``) is reported as well. Prints absolute
figures and ratios to the largest child (k_max, e_max, se_max everywhere: the network the supernet's weights
correspond to) and to the smallest child (every skippable layer skipped, smallest op elsewhere).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas.benchmarks import benchmark_command, command_parser
from nas.benchmarks.step_measurement import (
    add_step_arguments,
    load_space,
    saved_tensor_bytes,
    state_bytes,
    time_in_rounds,
)
from nas.errors import ConfigError
from nas.space.networks import build_child
from nas.supernets.single_path_supernet import SinglePathSupernet


class Variant:
    """A network trained by plain SGD steps: the supernet (with its current decisions) or a fixed child."""

    def __init__(self, name: str, model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.name = name
        self.model = model.train()
        self.forward = forward
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One forward + backward + optimiser step; its time in ms (CUDA events on a GPU)."""
        if x.is_cuda:
            start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start_event.record()
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.forward(x), y).backward()
        self.optimizer.step()
        if x.is_cuda:
            end_event.record()
            end_event.synchronize()
            return float(start_event.elapsed_time(end_event))
        return (time.perf_counter() - start) * 1e3

    def saved_activation_bytes(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """Bytes of the tensors autograd keeps for backward during one forward pass (then runs backward)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, saved = saved_tensor_bytes(lambda: F.cross_entropy(self.forward(x), y))
        loss.backward()
        return saved

    def peak_cuda_bytes(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """Allocator peak during one step, above what is allocated before it (CUDA only)."""
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self.step(x, y)
        return torch.cuda.max_memory_allocated() - base


def parser() -> argparse.ArgumentParser:
    ap = command_parser(__doc__, full=False)
    add_step_arguments(ap, "variant")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return ap


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Measure and print the table; returns, per variant, step ms, activation, state and (CUDA) peak bytes."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda needs a CUDA GPU (torch.cuda.is_available() is False); use --device cpu")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    space = load_space(args.space)
    supernet = SinglePathSupernet(space, 3, args.classes).to(device)
    big = build_child(space, space.largest(), 3, args.classes).to(device)
    small = build_child(space, space.smallest(), 3, args.classes).to(device)
    variants = [
        Variant("single-path supernet", supernet, lambda x: supernet(x, supernet.decisions())),
        Variant("largest child", big, big),
        Variant("smallest child", small, small),
    ]
    x = torch.randn(args.batch, 3, space.resolution, space.resolution, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    results: dict[str, dict[str, float]] = {}
    for v in variants:
        v.step(x, y)  # warm-up; creates optimiser state
        results[v.name] = {"activation_bytes": v.saved_activation_bytes(x, y),
                           "state_bytes": state_bytes(v.model, [v.optimizer])}
        if device.type == "cuda":
            results[v.name]["peak_cuda_bytes"] = v.peak_cuda_bytes(x, y)
    times = time_in_rounds([lambda v=v: v.step(x, y) for v in variants], args.steps, args.rounds)
    for v, timed in zip(variants, times):
        results[v.name]["step_ms"] = statistics.median(timed)
    print(f"space={space.name} ({len(space.searchable_layers)} searchable layers, {space.resolution}px), "
          f"batch={args.batch}, device={args.device}, threads={args.threads}, {len(times[1])} timed steps "
          "per variant (median)")
    print_table(results, cuda=device.type == "cuda")
    return results


def print_table(results: dict[str, dict[str, float]], cuda: bool) -> None:
    """Absolute figures and ratios to the largest and the smallest child."""
    def memory(name: str) -> float:
        return results[name]["activation_bytes"] + results[name]["state_bytes"]

    big, small = results["largest child"], results["smallest child"]
    print(f"{'variant':<22}{'step ms':>9}{'x largest':>10}{'x smallest':>11}{'activ. MiB':>11}{'state MiB':>10}"
          f"{'mem x largest':>14}{'mem x smallest':>15}" + (f"{'peak MiB':>10}" if cuda else ""))
    for name, r in results.items():
        ms = r["step_ms"]
        print(f"{name:<22}{ms:>9.1f}{ms / big['step_ms']:>10.2f}{ms / small['step_ms']:>11.2f}"
              f"{r['activation_bytes'] / 2**20:>11.1f}{r['state_bytes'] / 2**20:>10.1f}"
              f"{memory(name) / memory('largest child'):>14.2f}{memory(name) / memory('smallest child'):>15.2f}"
              + (f"{r['peak_cuda_bytes'] / 2**20:>10.1f}" if cuda else ""))


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """``python scripts/bench_search_step.py [--space ...] [--device cuda]``."""
    return benchmark_command(parser(), run, argv)
