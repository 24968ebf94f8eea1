"""BatchNorm re-estimation ("BN calibration"): the one implementation the search and the sub-network search use.

Running statistics accumulated while a supernet trains mix every architecture it passed through, so a derived or
sampled sub-network is evaluated after its BatchNorm statistics are re-estimated: reset, then set to the
cumulative average of the batch statistics of a few training batches (``momentum=None``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def reestimate_batchnorm(module: nn.Module, forward: Callable[[torch.Tensor], Any],
                         batches: Iterable[torch.Tensor]) -> int:
    """Reset every BatchNorm of ``module`` and re-estimate its running statistics over ``batches``.

    ``forward`` runs one batch (e.g. the supernet with one architecture's fixed decisions, or ``module`` itself),
    in train mode; each running mean / variance becomes the average of the per-batch statistics (the cumulative
    average of ``momentum=None``). The momenta and ``module``'s training mode are restored afterwards, and the
    global RNG is untouched (dropout in the passes draws from a forked RNG). With no batch nothing changes.
    Returns the number of batches used.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    was_training = module.training
    used = 0
    with torch.random.fork_rng(devices=[]):
        try:
            for x in batches:
                if used == 0:
                    for m in norms:
                        m.reset_running_stats()
                        m.momentum = None  # cumulative average over the calibration batches
                    module.train()
                forward(x)
                used += 1
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            module.train(was_training)
    return used
