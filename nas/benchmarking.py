"""Memory accounting shared by the benchmarks in ``scripts/`` (CPU has no allocator peak to read)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


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
