"""Inference costs of one network: peak memory (CPU and CUDA), latency and power.

* ``memory_mb`` (CPU): bytes of parameters and buffers plus the peak of the bytes the CPU allocator holds
  during one ``torch.no_grad`` forward pass, read from the torch profiler's allocation events
  (``profile_memory=True``: every allocation and free, with its size and time). The CPU has no allocator
  peak counter, so this is the CPU counterpart of ``torch.cuda.max_memory_allocated``: exact and deterministic,
  and, unlike the process' resident set size, free of the interpreter's, the data loader's and other
  networks' pages. Batch size 1 unless told otherwise.
* ``cuda_memory_mb``: ``torch.cuda.max_memory_allocated`` around one forward on the GPU (weights included).
* ``latency_ms``: the ``hardware=`` backend's measurement of the whole network (the same rules as the LUTs).
* ``power_w``: mean board power from NVML while the network runs inference in a loop on the GPU (thesis
  Sec 3.3.1 profiles inference power the same way). Without a CUDA GPU this is a
  :class:`~nas.errors.ConfigError`: there is no power reading to fake.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any

import torch
from torch import nn

from nas.errors import ConfigError

METRICS = ("memory_mb", "latency_ms", "cuda_memory_mb", "power_w")  # canonical names (nas.cost.vocabulary)
GPU_METRICS = ("cuda_memory_mb", "power_w")
MB = 1024.0 * 1024.0


def require_gpu(metric: str) -> None:
    """Raise a clear error if ``metric`` needs a CUDA GPU (and NVML for power) that this machine lacks."""
    if metric not in GPU_METRICS:
        return
    if not torch.cuda.is_available():
        what = "power (NVML)" if metric == "power_w" else "CUDA memory (torch.cuda.max_memory_allocated)"
        raise ConfigError(f"a {metric} constraint needs a CUDA GPU to measure {what}, and torch sees none here; "
                          "run on a machine with an NVIDIA GPU, or constrain memory_mb / latency_ms instead")
    if metric == "power_w":
        try:
            import pynvml  # noqa: F401  (nvidia-ml-py)
        except ImportError:
            raise ConfigError("a power_w constraint reads the GPU's power through NVML: pip install "
                              "nvidia-ml-py (the 'gpu' extra)") from None


def state_megabytes(net: nn.Module) -> float:
    return sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()]) / MB


def peak_memory_cpu_mb(net: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Parameters + buffers + the peak of live CPU allocations during one inference (profiler events).

    The exact peak comes from the profiler's time-ordered allocation records, which torch exposes only through
    the undocumented ``kineto_results`` of its profiler (checked on the pinned torch). If a torch release drops
    it, :func:`_peak_from_function_events` reads the documented ``cpu_memory_usage`` of ``profile.events()``
    instead, with a warning: a lower bound that misses temporaries allocated and freed inside one op.
    """
    from torch.profiler import ProfilerActivity, profile

    net = net.eval()
    x = torch.zeros(*input_shape)
    with torch.no_grad():
        net(x)  # first call: lazy initialisation stays out of the measurement
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            net(x)
    records = _allocation_records(prof)
    if records is None:
        warnings.warn(f"torch {torch.__version__} exposes no profiler allocation records (kineto_results); "
                      "memory_mb falls back to the per-op cpu_memory_usage of profile.events(), a lower bound "
                      "that misses temporaries freed inside one op", RuntimeWarning, stacklevel=2)
        peak = _peak_from_function_events([e for e in prof.events() if e.cpu_parent is None])
    else:
        live = peak = 0
        for _, nbytes in records:
            live += nbytes
            peak = max(peak, live)
    return state_megabytes(net) + peak / MB


def _allocation_records(prof: Any) -> list[tuple[int, int]] | None:
    """``(start_ns, bytes)`` of every allocation (+) and free (-) in time order, from the profiler's kineto
    results (not a documented API); ``None`` where this torch does not have them."""
    results = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    try:
        events = results.events()
        return sorted(((int(e.start_ns()), int(e.nbytes())) for e in events if e.name() == "[memory]"),
                      key=lambda record: record[0])  # by time only: same-time records keep their order
    except AttributeError:  # no kineto_results, or events of another shape
        return None


def _peak_from_function_events(events: Any) -> int:
    """Peak live bytes over ``events`` (documented :class:`torch.autograd.profiler_util.FunctionEvent`s) from
    each op's net ``cpu_memory_usage``, descending into child ops."""
    live = peak = 0
    for event in sorted(events, key=lambda e: e.time_range.start):
        inner = _peak_from_function_events(event.cpu_children) if event.cpu_children else 0
        peak = max(peak, live + max(inner, int(event.cpu_memory_usage), 0))
        live += int(event.cpu_memory_usage)
    return peak


def peak_memory_cuda_mb(net: nn.Module, input_shape: tuple[int, ...], device: int = 0) -> float:
    """``torch.cuda.max_memory_allocated`` over one inference on ``cuda:device`` (weights included)."""
    require_gpu("cuda_memory_mb")
    dev = torch.device("cuda", device)
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    model = net.eval().to(dev)
    with torch.no_grad():
        model(torch.zeros(*input_shape, device=dev))
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - before
    net.to("cpu")
    return peak / MB


def power_nvml_w(net: nn.Module, input_shape: tuple[int, ...], device: int = 0, seconds: float = 2.0,
                 interval_s: float = 0.02) -> float:
    """Mean NVML board power (W) while ``net`` runs inference back to back on ``cuda:device``."""
    require_gpu("power_w")
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(device)
        dev = torch.device("cuda", device)
        model = net.eval().to(dev)
        x = torch.zeros(*input_shape, device=dev)
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)  # mW -> W
                time.sleep(interval_s)

        with torch.no_grad():
            for _ in range(10):
                model(x)
            torch.cuda.synchronize(dev)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                model(x)
                torch.cuda.synchronize(dev)
            stop.set()
            sampler.join()
        net.to("cpu")
    finally:
        pynvml.nvmlShutdown()
    if not samples:
        raise ConfigError("NVML returned no power samples; check that the driver exposes power readings")
    return sum(samples) / len(samples)


def measure(net: nn.Module, input_shape: tuple[int, ...], metrics: list[str], backend: Any = None) -> dict[str, float]:
    """The requested ``metrics`` of ``net`` for inputs of ``input_shape`` (batch first)."""
    out: dict[str, float] = {}
    for metric in metrics:
        if metric == "memory_mb":
            out[metric] = peak_memory_cpu_mb(net, input_shape)
        elif metric == "cuda_memory_mb":
            out[metric] = peak_memory_cuda_mb(net, input_shape)
        elif metric == "power_w":
            out[metric] = power_nvml_w(net, input_shape)
        elif metric == "latency_ms":
            if backend is None:
                raise ConfigError("a latency_ms constraint needs the hardware= backend to measure it")
            out[metric] = float(backend.measure(net.eval(), tuple(input_shape[1:])).ms)
        else:
            raise ConfigError(f"unknown cost {metric!r}; choose one of {list(METRICS)}")
    return out
