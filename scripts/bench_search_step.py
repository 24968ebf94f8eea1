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
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from nas.benchmarking import saved_tensor_bytes, state_bytes
from nas.space.networks import build_child
from nas.space.search_space import SearchSpace
from nas.supernets.single_path_supernet import SinglePathSupernet


def saved_activation_bytes(step: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for backward during one forward pass (then runs backward)."""
    loss, saved = saved_tensor_bytes(step)
    loss.backward()
    return saved


class Variant:
    def __init__(self, name: str, model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.name = name
        self.model = model.train()
        self.forward = forward
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.times: list[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
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

    def peak_cuda_bytes(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """Allocator peak during one step, above what is allocated before it (CUDA only)."""
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self.step(x, y)
        return torch.cuda.max_memory_allocated() - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="tiny", help="name of a nas/conf/space/*.yaml")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the steps are spread over")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda needs a CUDA GPU (torch.cuda.is_available() is False); use --device cpu")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    root = Path(__file__).resolve().parents[1]
    space = SearchSpace.from_config(yaml.safe_load((root / "conf" / "space" / f"{args.space}.yaml").read_text()))
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
    memory, peak = {}, {}
    for v in variants:
        v.step(x, y)  # warm-up; creates optimiser state
        v.optimizer.zero_grad(set_to_none=True)
        activations = saved_activation_bytes(lambda v=v: F.cross_entropy(v.forward(x), y))
        memory[v.name] = (activations, state_bytes(v.model, [v.optimizer]))
        if device.type == "cuda":
            peak[v.name] = v.peak_cuda_bytes(x, y)
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for v in variants:
            v.times += [v.step(x, y) for _ in range(per_round)]

    big_ms, small_ms = statistics.median(variants[1].times), statistics.median(variants[2].times)
    big_mem, small_mem = sum(memory[variants[1].name]), sum(memory[variants[2].name])
    print(f"space={space.name} ({len(space.searchable_layers)} searchable layers, {space.resolution}px), "
          f"batch={args.batch}, device={args.device}, threads={args.threads}, {len(variants[1].times)} timed steps "
          "per variant (median)")
    print(f"{'variant':<22}{'step ms':>9}{'x largest':>10}{'x smallest':>11}{'activ. MiB':>11}{'state MiB':>10}"
          f"{'mem x largest':>14}{'mem x smallest':>15}" + (f"{'peak MiB':>10}" if peak else ""))
    for v in variants:
        ms = statistics.median(v.times)
        act, state = memory[v.name]
        print(f"{v.name:<22}{ms:>9.1f}{ms / big_ms:>10.2f}{ms / small_ms:>11.2f}{act / 2**20:>11.1f}"
              f"{state / 2**20:>10.1f}{(act + state) / big_mem:>14.2f}{(act + state) / small_mem:>15.2f}"
              + (f"{peak[v.name] / 2**20:>10.1f}" if peak else ""))


if __name__ == "__main__":
    main()
