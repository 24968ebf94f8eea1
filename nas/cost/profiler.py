"""Profile every distinct candidate op of a space into a LUT, with caching by space + hardware."""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from nas.cost.backends import LatencyBackend, summarize
from nas.cost.lut import LUT_VERSION, LatencyEntry, LatencyLUT
from nas.cost.measurement_core import (
    describe_placement,
    fit_network_calibration,
    network_counts,
    round_counts,
    stage_sums,
    time_interleaved,
)
from nas.cost.signatures import (
    OpSpec,
    calibration_network_groups,
    calibration_networks,
    cost_groups,
    required_ops,
)
from nas.errors import ConfigError, LUTError
from nas.space.search_space import SearchSpace

log = logging.getLogger(__name__)


def profile_ops(ops: dict[str, OpSpec], backend: LatencyBackend, progress: bool = True,
                rounds: int = 5, samples_out: dict[str, list[list[float]]] | None = None,
                seed: int = 0) -> dict[str, LatencyEntry]:
    """Measure each op: ``backend.statistic`` (default median) of the timed runs of all its sessions.

    Each op is loaded in ``backend.sessions`` separate sessions (:meth:`LatencyBackend.prepare_sessions`), each
    warmed up with ``backend.warmup`` untimed runs and then timed ``backend.repeats`` times, interleaved over
    ``rounds`` passes through every session of every op in a fresh random order (seeded with ``seed``;
    :func:`~nas.cost.measurement_core.time_interleaved`, the schedule the device runner uses too). ``samples_out``,
    when given, receives every op's timed runs, one list per session.
    """
    runners: dict[str, list] = {}
    with backend.threads_context():
        for op in tqdm(ops.values(), desc=f"Preparing {len(ops)} ops for {backend.name}", unit="op",
                       disable=not progress, leave=False):
            runners[op.key] = backend.prepare_sessions(op.build(), op.input_shape)
            for run in runners[op.key]:
                backend.time_calls(run, backend.warmup)
        with tqdm(total=len(round_counts(backend.repeats, rounds)), unit="round", disable=not progress, leave=False,
                  desc=f"Profiling {len(ops)} ops x {backend.sessions} session(s) on {backend.name} "
                       f"({backend.threads} thread(s))") as bar:
            samples = time_interleaved(runners, backend.time_calls, backend.repeats, rounds, seed=seed,
                                       on_round=lambda _: bar.update(1))
    if samples_out is not None:
        samples_out.update(samples)
    statistic = getattr(backend, "statistic", "median")
    return {key: summarize([t for session in times for t in session], statistic) for key, times in samples.items()}


def calibrate_networks(network_ms: dict[str, float], network_keys: dict[str, list[str]],
                       entries: dict[str, LatencyEntry], network_groups: dict[str, list[int]] | None = None,
                       groups: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the LUT's network calibration (stage scales or ``scale``, ``per_op_ms``, ``per_se_op_ms``,
    ``overhead_ms``) on whole networks measured with the ops; ``network_groups`` gives each key's cost group
    (stage; :func:`~nas.cost.signatures.calibration_network_groups`), ``groups`` their number. Returns the
    coefficients and a record of the fit's data (for the LUT's ``meta``)."""
    # rounded as recorded in the LUT's meta, so that the fit can be reproduced from the file exactly
    sums = [round(sum(entries[k].ms for k in network_keys[name]), 6) for name in network_keys]
    kept, se_ops = [], []
    for name in network_keys:
        layers, with_se = network_counts(network_keys[name])
        kept.append(layers)
        se_ops.append(with_se)
    measured = [round(network_ms[name], 6) for name in network_keys]
    by_stage = None
    if network_groups is not None and groups >= 2:
        by_stage = [[round(v, 6) for v in stage_sums([entries[k].ms for k in network_keys[name]],
                                                     network_groups[name], groups)] for name in network_keys]
    calibration = fit_network_calibration(sums, measured, kept, se_ops, by_stage)
    return calibration, {"op_sum_ms": sums, "kept_ops": kept, "se_ops": se_ops, "measured_ms": measured,
                         "stage_op_sum_ms": by_stage}


def profile_space(space: SearchSpace, backend: LatencyBackend, in_channels: int, num_classes: int,
                  progress: bool = True, base: LatencyLUT | None = None, rounds: int = 10) -> LatencyLUT:
    """A LUT covering every op of ``space``; ops already in ``base`` are not measured again.

    With ``backend.calibration_networks = n > 0``, n whole networks spanning the space
    (:func:`~nas.cost.signatures.calibration_networks`) are measured in the same interleaved rounds as the ops (so
    load drift hits both alike) and set the LUT's network calibration.
    """
    ops = required_ops(space, in_channels, num_classes)
    known = dict(base.entries) if base is not None else {}
    todo = {k: op for k, op in ops.items() if k not in known}
    n_cal = getattr(backend, "calibration_networks", 0)
    networks, network_keys = calibration_networks(space, in_channels, num_classes, n_cal) if n_cal and todo else (
        {}, {})
    network_groups = calibration_network_groups(space, n_cal) if networks else {}
    start = time.perf_counter()
    backend.reset_placement()
    measured = profile_ops({**todo, **networks}, backend, progress, rounds=rounds)
    seconds = time.perf_counter() - start
    known.update({k: v for k, v in measured.items() if k in todo})
    meta = {"in_channels": in_channels, "num_classes": num_classes, "profiled_ops": len(todo),
            "profile_seconds": round(seconds, 2)}
    placement = backend.placement_summary()
    if placement is not None:
        meta["node_placement"] = placement
        if placement["fallback_nodes"]:
            warnings.warn(f"{placement['models_with_fallback']} of the {placement['models']} profiled models run "
                          f"partly off {placement['first_provider']}: {describe_placement(placement)} (the LUT's "
                          "meta.node_placement has the counts)", stacklevel=2)
    calibration = base.calibration if base is not None else {}
    if networks:
        calibration, record = calibrate_networks({k: measured[k].ms for k in networks}, network_keys, known,
                                                 network_groups, cost_groups(space)[3])
        meta["calibration"] = {"networks": len(networks), **record}
    return LatencyLUT(entries=known, hardware=backend.hardware_record(),
                      space={"name": space.name, "digest": space.digest}, meta=meta, **calibration)


def cache_path(cache_dir: str | os.PathLike, space: SearchSpace, backend: LatencyBackend, in_channels: int,
               num_classes: int) -> Path:
    # a precision other than fp32 is named in the file name too (fp32 keeps the names of LUTs cached before it)
    precision = getattr(backend, "precision", "fp32")
    label = backend.name if precision == "fp32" else f"{backend.name}-{precision}"
    return Path(cache_dir) / (f"{space.name}-{space.digest}-i{in_channels}-c{num_classes}-{label}"
                              f"-t{backend.threads}-b{backend.batch_size}-{backend.fingerprint_id()}.json")


def obtain_lut(space: SearchSpace, backend: LatencyBackend, in_channels: int, num_classes: int, *,
               cache_dir: str | os.PathLike | None = None, lut_path: str | os.PathLike | None = None,
               strict: bool = False, progress: bool = True) -> LatencyLUT:
    """The LUT for a search: a user-given file (validated) or the local cache, profiling what is missing.

    * ``lut_path`` given: load it, check it was made for this space and covers every op, and compare its
      hardware fingerprint with ``backend`` (warning, or error with ``strict``). Nothing is profiled.
    * otherwise: read ``cache_dir``'s file for this space + hardware, profile missing ops, save atomically.
    """
    needed = {k: op.origin for k, op in required_ops(space, in_channels, num_classes).items()}
    if lut_path:
        lut = LatencyLUT.load(lut_path)
        lut.check_space(space.name, space.digest)
        lut.check_covers(needed)
        lut.check_hardware(backend.fingerprint_id(), strict=strict)
        return lut

    path = cache_path(cache_dir, space, backend, in_channels, num_classes) if cache_dir else None
    base = None
    if path is not None and path.is_file():
        try:
            base = LatencyLUT.load(path)
            base.check_space(space.name, space.digest)
        except LUTError as err:
            warnings.warn(f"ignoring unusable cached LUT ({err}); profiling again", stacklevel=2)
            base = None
        if base is not None and base.version < LUT_VERSION:
            log.info("Cached LUT %s predates the current network calibration (version %d); profiling again", path,
                     base.version)
            base = None
        if base is not None and all(k in base.entries for k in needed):
            log.info("Using cached LUT %s", path)
            return base
    lut = profile_space(space, backend, in_channels, num_classes, progress=progress, base=base)
    if path is not None:
        lut.save(path)
        log.info("Saved LUT (%d entries, %.1f s profiling) to %s", len(lut.entries),
                 lut.meta["profile_seconds"], path)
    return lut


_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "JSM_NAMESPACE_RANK")


def is_global_rank_zero() -> bool:
    """Whether this process is global rank 0, from the launchers' environment (before DDP is initialised)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return all(int(os.environ.get(name, "0") or 0) == 0 for name in _RANK_VARIABLES)


def obtain_lut_once(space: SearchSpace, backend: LatencyBackend, in_channels: int, num_classes: int, *,
                    cache_dir: str | os.PathLike | None = None, lut_path: str | os.PathLike | None = None,
                    strict: bool = False, progress: bool = True, wait_s: float = 3600.0,
                    poll_s: float = 2.0) -> LatencyLUT:
    """:func:`~nas.cost.profiler.obtain_lut` on global rank 0; the other ranks load what rank 0 cached."""
    if lut_path or is_global_rank_zero():
        return obtain_lut(space, backend, in_channels, num_classes, cache_dir=cache_dir, lut_path=lut_path,
                          strict=strict, progress=progress)
    if not cache_dir:
        raise ConfigError("a multi-process search shares rank 0's LUT through paths.cache_dir; set it to a folder "
                          "all ranks can read, or pass hardware.lut_path=<LUT measured beforehand>")
    path = Path(cache_path(cache_dir, space, backend, in_channels, num_classes))
    needed = set(required_ops(space, in_channels, num_classes))
    deadline = time.monotonic() + wait_s
    while True:
        if path.is_file():
            try:
                lut = LatencyLUT.load(path)
                if needed <= set(lut.entries):
                    log.info("Using rank 0's LUT %s", path)
                    return lut
            except LUTError:
                pass  # rank 0 is replacing it; files are written atomically, so retry
        if time.monotonic() > deadline:
            raise LUTError(f"waited {wait_s:.0f} s for rank 0 to write the LUT {path}; check that paths.cache_dir is "
                           "on a filesystem shared by all nodes, or pass hardware.lut_path=...")
        time.sleep(poll_s)
