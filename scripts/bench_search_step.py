"""Search-cost benchmark: one training step of the single-path supernet vs fixed child networks.

    python scripts/bench_search_step.py --space cifar --batch 32 --steps 10

Times forward + backward + optimiser step (median over interleaved rounds, so load on a shared machine hits
every variant alike) and the memory a step needs: bytes of tensors autograd saves for the backward pass
(activations), plus parameters, gradients and optimiser state. Prints absolute figures and ratios to the
largest child (k_max, e_max, se_max everywhere), the network the supernet's weights correspond to.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.child import ChildNet  # noqa: E402
from nas.space import SearchSpace  # noqa: E402
from nas.supernet import SinglePathSupernet  # noqa: E402


def saved_activation_bytes(step: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for backward during one forward pass (unique storages)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    return sum(seen.values())


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    opt = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
              if torch.is_tensor(v))
    return 2 * params + opt  # parameters + gradients + optimiser state


class Variant:
    def __init__(self, name: str, model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.name = name
        self.model = model.train()
        self.forward = forward
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.times: list[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.forward(x), y).backward()
        self.optimizer.step()
        return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", default="tiny", help="name of a conf/space/*.yaml")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the steps are spread over")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    root = Path(__file__).resolve().parents[1]
    space = SearchSpace.from_config(yaml.safe_load((root / "conf" / "space" / f"{args.space}.yaml").read_text()))
    supernet = SinglePathSupernet(space, 3, args.classes)
    variants = [
        Variant("single-path supernet", supernet, lambda x: supernet(x, supernet.decisions())),
        Variant("largest child", (big := ChildNet(space, space.largest(), 3, args.classes)), big),
        Variant("smallest child", (small := ChildNet(space, space.smallest(), 3, args.classes)), small),
    ]
    x = torch.randn(args.batch, 3, space.resolution, space.resolution)
    y = torch.randint(0, args.classes, (args.batch,))
    memory = {}
    for v in variants:
        v.step(x, y)  # warm-up; creates optimiser state
        v.optimizer.zero_grad(set_to_none=True)
        activations = saved_activation_bytes(lambda v=v: F.cross_entropy(v.forward(x), y))
        memory[v.name] = (activations, state_bytes(v.model, v.optimizer))
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for v in variants:
            v.times += [v.step(x, y) for _ in range(per_round)]

    ref = variants[1]
    ref_ms = statistics.median(ref.times)
    ref_mem = sum(memory[ref.name])
    print(f"space={space.name} ({len(space.searchable_layers)} searchable layers, {space.resolution}px), "
          f"batch={args.batch}, threads={args.threads}, {len(ref.times)} timed steps per variant")
    print(f"{'variant':<22}{'step ms':>10}{'x largest':>11}{'activ. MiB':>12}{'state MiB':>11}{'mem x largest':>15}")
    for v in variants:
        ms = statistics.median(v.times)
        act, state = memory[v.name]
        print(f"{v.name:<22}{ms:>10.1f}{ms / ref_ms:>11.2f}{act / 2**20:>12.1f}{state / 2**20:>11.1f}"
              f"{(act + state) / ref_mem:>15.2f}")


if __name__ == "__main__":
    main()
