"""Sub-network search on several processes: the ranks of torch.distributed share each batch of validations.

Launched by ``torchrun`` (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR/PORT``) or
by SLURM's ``srun`` (``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ...; the first node of the step is the rendezvous,
port ``MASTER_PORT`` or 15000 + the job id's last 4 digits, as in Lightning), every rank runs the same command.
Rank 0 alone owns the algorithm, the validation store and every output; the others only validate:

* each batch of sub-networks the search needs validated (what one generation adds) is broadcast by rank 0 and
  split over the ranks by expected cost (MACs: sorted, dealt in snake order, so shares differ by at most one
  sub-network and balance in cost); every rank validates its share with its own evaluator (same checkpoint, same
  seeded calibration batches: the same numbers one process computes), and rank 0 gathers them and writes the
  records in the batch's order, one complete line at a time;
* at the end rank 0 broadcasts a stop with its result, so every rank returns the same value.

The messages are Python objects on a gloo group (``broadcast_object_list`` / ``gather_object``), also when the
default group is NCCL (``eval.device=cuda``): they are small and need no GPU. A rank that dies breaks the group:
the others see the closed connection and stop (:class:`RankLost`), and ``resume=`` continues from the records
rank 0 wrote. Each rank uses its share of the cores (``cpus // max(local ranks, spnas processes on them)``,
:mod:`nas.threads`), re-checked before each of its validations.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from nas.errors import ConfigError, Interrupted, NASError
from nas.space.architecture import Architecture
from nas.threads import apply_thread_budget, rebalance

log = logging.getLogger(__name__)

#: how long a rank waits in one collective (rank 0 profiling a LUT, a share of slow validations); a rank that
#: dies is noticed at once through its closed connection, not through this timeout
TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a multi-process launch."""

    world_size: int
    rank: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun | slurm


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None or value == "":
        if default is None:
            raise ConfigError(f"environment variable {name} is not set; launch with torchrun or srun")
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def slurm_tasks_on_node(tasks_per_node: str, node: int) -> int:
    """Tasks of node ``node`` from SLURM's compressed ``SLURM_STEP_TASKS_PER_NODE`` (``"2(x3),1"``)."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if match is None:
            raise ConfigError(f"SLURM_STEP_TASKS_PER_NODE={tasks_per_node!r} is not SLURM's format (e.g. '2(x3),1')")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts[node] if 0 <= node < len(counts) else counts[-1]


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch | None:
    """The launch described by the environment (torchrun first, then srun); ``None`` for a single process."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        world = _int(env, "WORLD_SIZE")
        if world <= 1:
            return None
        return Launch(world, _int(env, "RANK"), _int(env, "LOCAL_RANK", 0), _int(env, "LOCAL_WORLD_SIZE", world),
                      env.get("MASTER_ADDR", "127.0.0.1"), _int(env, "MASTER_PORT", 29500), "torchrun")
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:  # a task of srun (not the batch script itself)
        world = _int(env, "SLURM_STEP_NUM_TASKS")
        if world <= 1:
            return None
        from lightning_fabric.plugins.environments import SLURMEnvironment

        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        job = env.get("SLURM_JOB_ID", "")
        port = _int(env, "MASTER_PORT", 15000 + int(job[-4:]) if job[-4:].isdigit() else 12910)
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or str(world)
        return Launch(world, _int(env, "SLURM_PROCID"), _int(env, "SLURM_LOCALID", 0),
                      slurm_tasks_on_node(per_node, _int(env, "SLURM_NODEID", 0)),
                      env.get("MASTER_ADDR") or SLURMEnvironment.resolve_root_node_address(nodes), port, "slurm")
    return None


def cuda_index(local_rank: int) -> int:
    """This rank's GPU: ``cuda:<local rank>``, or the one GPU srun's ``--gpus-per-task 1`` leaves visible."""
    return local_rank % max(1, torch.cuda.device_count())


def init_ranks(launch: Launch, device: str = "cpu", threads_setting: Any = None) -> Any:
    """Join the process group of ``launch`` (gloo, or NCCL for ``device="cuda"``), set this rank's threads (its
    share of the cores over the node's ranks, :mod:`nas.threads`; ``threads_setting``: the ``threads`` config)
    and GPU; return the gloo group that carries the search's messages."""
    threads = apply_thread_budget({"threads": threads_setting}, processes=launch.local_world_size).threads
    backend = "gloo"
    if device == "cuda":
        torch.cuda.set_device(cuda_index(launch.local_rank))
        backend = "nccl"
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
                                world_size=launch.world_size, rank=launch.rank, timeout=TIMEOUT)
    log.info("rank %d of %d (%s, local rank %d of %d): %s, %d intra-op thread(s)", launch.rank, launch.world_size,
             launch.launcher, launch.local_rank, launch.local_world_size, backend, threads)
    return dist.new_group(backend="gloo", timeout=TIMEOUT) if backend != "gloo" else None


def agree(failure: NASError | None, group: Any = None) -> None:
    """Every rank says whether it could prepare (inputs checked, evaluator built); if one could not, every rank
    raises: its own error, or the first failing rank's message. Nothing costly has run yet."""
    reports: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, None if failure is None else str(failure), group=group)
    if failure is not None:
        raise failure
    for rank, message in enumerate(reports):
        if message is not None:
            raise ConfigError(f"rank {rank}: {message}")


def shares(weights: Sequence[float], world: int) -> list[list[int]]:
    """Indices of a batch per rank: by decreasing weight (ties by index), dealt in snake order 0..n-1, n-1..0."""
    order = sorted(range(len(weights)), key=lambda i: (-float(weights[i]), i))
    out: list[list[int]] = [[] for _ in range(world)]
    for k, i in enumerate(order):
        lap, pos = divmod(k, world)
        out[pos if lap % 2 == 0 else world - 1 - pos].append(i)
    return out


class RankLost(Interrupted):
    """Another rank stopped answering (killed, crashed): the records rank 0 wrote are kept; exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)

    @property
    def exit_code(self) -> int:
        return 1


class RankPool:
    """A validator whose batches are split over the ranks of the process group; rank 0 calls
    :meth:`validate_batch`, every other rank :meth:`serve` until rank 0 calls :meth:`close`."""

    def __init__(self, validator: Any, group: Any = None) -> None:
        self.validator = validator
        self.group = group
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.broken = False
        self.closed = False

    # ------------------------------------------------------------------ messages
    def _broadcast(self, message: Any) -> Any:
        box = [message]
        self._collective(dist.broadcast_object_list, box, src=0, group=self.group)
        return box[0]

    def _gather(self, values: Any) -> list[Any] | None:
        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        self._collective(dist.gather_object, values, out, dst=0, group=self.group)
        return out

    def _collective(self, op: Any, *args: Any, **kwargs: Any) -> None:
        try:
            op(*args, **kwargs)
        except (RuntimeError, dist.DistBackendError) as err:
            self.broken = True
            reason = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", str(err).strip()).split(". ")[0].splitlines()[0]
            raise RankLost(f"rank {self.rank}: another rank stopped answering ({reason[:160]})") from None

    def _share(self, archs: Sequence[Architecture], weights: Sequence[float]) -> dict[int, Any]:
        """This rank's validations of a batch: ``{index: values}``, or ``{-1: error text}`` when one failed."""
        done: dict[int, Any] = {}
        for i in shares(weights, self.world)[self.rank]:
            rebalance()  # this rank's threads, as other spnas processes come and go (nas.threads; rate-limited)
            try:
                done[i] = self.validator.validate(archs[i])
            except NASError as err:
                return {-1: f"rank {self.rank}: {err}"}
        return done

    # ------------------------------------------------------------------ rank 0
    def validate(self, arch: Architecture) -> dict[str, float]:
        """One validation on this rank alone."""
        return self.validator.validate(arch)

    def validate_batch(self, archs: Sequence[Architecture], weights: Sequence[float]) -> Iterator[dict[str, float]]:
        """The values of ``archs`` in order, validated by all ranks (rank 0 only)."""
        self._broadcast(("batch", list(archs), [float(w) for w in weights]))
        mine: dict[int, Any] = {}
        try:
            mine = self._share(archs, weights)
        finally:  # also when stopped (SIGTERM): answer the gather so that no rank is left waiting in it
            parts = self._gather(mine)
        merged: dict[int, Any] = {}
        for part in parts or []:
            if -1 in part:
                raise ConfigError(part[-1])
            merged.update(part)
        for i in range(len(archs)):
            yield merged[i]

    def close(self, result: Any = None, error: str | None = None) -> None:
        """Tell every other rank to stop, with rank 0's ``result`` (or the ``error`` that ended it); once."""
        if self.closed or self.broken or self.rank != 0:
            return
        self.closed = True
        self._broadcast(("stop", result, error))

    # ------------------------------------------------------------------ the other ranks
    def serve(self) -> Any:
        """Validate this rank's share of every batch until rank 0 stops; return rank 0's result."""
        while True:
            message = self._broadcast(None)
            if message[0] == "stop":
                _, result, error = message
                if result is None:
                    raise ConfigError(f"rank 0 stopped the search: {error or 'see its log'}")
                return result
            _, archs, weights = message
            self._gather(self._share(archs, weights))
