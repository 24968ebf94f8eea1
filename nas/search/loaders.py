"""Exact mid-epoch resume: a deterministic, rank-sharded training loader that skips consumed batches.

Lightning 2.x restores the loop counters from a checkpoint but, for a plain ``DataLoader``, starts the
interrupted epoch's data from the beginning (it warns "your dataloader is not resumable"). Three pieces make a
resumed search replay exactly what the uninterrupted one would have done:

* :class:`EpochSampler`: the sample order is a pure function of ``(seed, epoch)`` and is sharded over DDP
  ranks so that the union of the ranks' batches at step ``k`` is the single-process global batch ``k``.
  It can start ``skip_batches`` into the epoch.
* :class:`SeededItems`: each item's random augmentation is drawn from an RNG seeded by
  ``(seed, epoch, index)``, so augmentation does not depend on how many items were fetched before (prefetching,
  worker processes, resuming) and data loading never advances the training process' global RNG.
* :class:`ResumableDataLoader`: implements Lightning's ``state_dict`` / ``load_state_dict`` loader protocol, so
  the position in the epoch travels in the checkpoint's loop state and is restored before iteration starts.

The global torch RNG (subset dropout draws from it) is saved with the checkpoint and restored by
:class:`nas.search.solvers.base.SearchModule` (see :func:`capture_rng_state`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from nas.errors import ConfigError

LOADER_STATE_VERSION = 1
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one item of one epoch."""
    value = (seed * _MIX[0] + epoch * _MIX[1] + index * _MIX[2]) & ((1 << 64) - 1)
    value ^= value >> 31
    return value & ((1 << 63) - 1)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class SeededItems(Dataset):
    """Wraps a dataset whose ``__getitem__`` draws from the global torch RNG (e.g. random crops/shifts).

    Keys are ``epoch * len(base) + index`` (produced by :class:`EpochSampler` with ``encode_epoch=True``); each
    item is computed under ``torch.manual_seed(item_seed(seed, epoch, index))`` inside a forked RNG, so the
    caller's RNG is left untouched.
    """

    def __init__(self, base: Dataset, seed: int) -> None:
        self.base = base
        self.seed = int(seed)
        self.size = len(base)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: int) -> Any:
        epoch, index = divmod(int(key), self.size)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also queues a seed for every CUDA device, recording a
            # stack trace each time (about 150 us per item on a CPU-only run)
            torch.default_generator.manual_seed(item_seed(self.seed, epoch, index))
            return self.base[index]


class EpochSampler(DistributedSampler):
    """Seeded per-epoch order, sharded over ranks, able to start part-way into an epoch.

    The epoch's permutation of ``range(n)`` depends only on ``(seed, epoch)``; its first
    ``floor(n / world)*world`` entries (all of them padded cyclically when ``drop_last`` is false) are dealt
    round-robin to the ranks, so with per-rank batch ``b`` the ranks' ``k``-th batches together are entries
    ``[k*b*world, (k+1)*b*world)``: the same global batch as one process with batch ``b*world``.
    Being a ``DistributedSampler``, Lightning uses it as-is under DDP instead of wrapping it.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, num_replicas: int | None = None, rank: int | None = None,
                 encode_epoch: bool = False) -> None:
        world, this_rank = _world()
        num_replicas = world if num_replicas is None else num_replicas
        rank = this_rank if rank is None else rank
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.batch_size = int(batch_size)
        self.encode_epoch = encode_epoch
        self.skip_batches = 0
        n = len(dataset)  # type: ignore[arg-type]
        self.dataset_size = n
        per_rank = n // num_replicas if drop_last else math.ceil(n / num_replicas)
        self.per_rank = per_rank // self.batch_size * self.batch_size if drop_last else per_rank

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def indices(self, epoch: int) -> list[int]:
        """This rank's sample indices of ``epoch`` (before skipping)."""
        n = self.dataset_size
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            order = list(range(n))
        total = self.per_rank * self.num_replicas
        if total > len(order):
            order = (order * math.ceil(total / len(order)))[:total]
        return order[:total][self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        epoch, skip = self.epoch, self.skip_batches
        self.skip_batches = 0  # a skip applies to the one epoch being resumed
        mine = self.indices(epoch)[skip * self.batch_size:]
        offset = epoch * self.dataset_size if self.encode_epoch else 0
        return iter([offset + i for i in mine])

    def __len__(self) -> int:
        return self.per_rank


class ResumableDataLoader(DataLoader):
    """A training ``DataLoader`` over an :class:`EpochSampler` with Lightning's loader-state protocol.

    ``progress`` returns ``(epoch, batches processed in that epoch)`` of the running fit (the datamodule passes
    its trainer's counters); that is what :meth:`state_dict` stores, not how far the loader has prefetched.
    """

    def __init__(self, dataset: Dataset, sampler: EpochSampler, progress: Callable[[], tuple[int, int]],
                 **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=sampler.batch_size, sampler=sampler, drop_last=sampler.drop_last,
                         **kwargs)
        self.epoch_sampler = sampler
        self.progress = progress

    def state_dict(self) -> dict[str, Any]:
        epoch, done = self.progress()
        sampler = self.epoch_sampler
        return {"version": LOADER_STATE_VERSION, "epoch": int(epoch), "batches_done": int(done),
                "global_batch": sampler.batch_size * sampler.num_replicas, "seed": sampler.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != LOADER_STATE_VERSION:
            raise ConfigError(f"checkpoint loader state version {state.get('version')} is not supported (expected "
                              f"{LOADER_STATE_VERSION}); resume from a checkpoint written by this version")
        sampler = self.epoch_sampler
        global_batch = sampler.batch_size * sampler.num_replicas
        if state["global_batch"] != global_batch and state["batches_done"]:
            raise ConfigError(f"the checkpoint was written mid-epoch with a global batch of {state['global_batch']} "
                              f"samples, this run has {global_batch} (data.batch_size x devices); resume with the "
                              "same data.batch_size and number of devices, or from an end-of-epoch checkpoint")
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= sampler.batches_per_epoch:
            epoch, done = epoch + 1, 0
        sampler.set_epoch(epoch)
        sampler.skip_batches = done


def resumable_loader(dataset: Dataset, batch_size: int, seed: int, progress: Callable[[], tuple[int, int]],
                     shuffle: bool = True, drop_last: bool = True, **kwargs: Any) -> ResumableDataLoader:
    """The training loader: seeded order and per-item augmentation, rank sharding, exact resume."""
    sampler = EpochSampler(dataset, batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last, encode_epoch=True)
    return ResumableDataLoader(SeededItems(dataset, seed), sampler, progress, **kwargs)


def trainer_progress(trainer: Any) -> tuple[int, int]:
    """``(epoch, batches processed in it)`` of a Lightning trainer's fit loop (``(0, 0)`` without one)."""
    if trainer is None:
        return 0, 0
    loop = trainer.fit_loop
    return int(loop.epoch_progress.current.processed), int(loop.epoch_loop.batch_progress.current.processed)


def restore_loader_position(trainer: Any) -> None:
    """On a resumed fit, put every :class:`ResumableDataLoader` at the checkpoint's position, then restart iteration.

    Call it from ``on_train_start``. Lightning restores a stateful loader only when it builds the loader after
    the loop state is restored, but ``configure_optimizers`` reading ``trainer.estimated_stepping_batches``
    builds it earlier (and, with workers, starts iterating it); the pending state would then never be applied.
    """
    if trainer is None or getattr(trainer, "ckpt_path", None) is None:
        return
    loop = trainer.fit_loop
    combined = getattr(loop, "_combined_loader", None)
    if combined is None:
        return
    loaders = [dl for dl in combined.flattened if isinstance(dl, ResumableDataLoader)]
    if not loaders:
        return
    for dl in loaders:
        dl.epoch_sampler.set_epoch(int(loop.epoch_progress.current.processed))
    loop._load_combined_loader_states()  # no-op unless restarting mid-epoch with a pending loader state
    if getattr(loop, "_data_fetcher", None) is not None:
        iter(loop._data_fetcher)  # a fresh iterator over the repositioned sampler


def capture_rng_state() -> dict[str, torch.Tensor]:
    """The global torch RNG states (CPU and, if used, CUDA) as tensors (loadable with ``weights_only``)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
