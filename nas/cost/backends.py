"""Latency measurement backends: ONNX Runtime CPU (default), PyTorch eager CPU and PyTorch CUDA.

A backend measures one module on one input shape: warm-up runs, then ``repeats`` timed runs, reporting the
median (robust to the noise of shared machines) and the inter-quartile range. Threads and batch size are part
of the backend and of its fingerprint, because the fastest op changes with them.

CPU backends can evict the per-core cache before every timed call (``cache_flush_mb``): an op measured on its
own, call after call, finds its weights in L2, whereas inside a network the other layers' weights have passed
through the cache in between. Flushing puts the op back in the state it meets inside a network; see
docs/latency.md for the measured effect on the runtime model's accuracy.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.cost.lut import LatencyEntry

# the standalone measurement core holds the measurement rules the framework and the device runner share
from nas.cost.measurement_core import (
    PRECISIONS,
    STATISTICS,
    cpu_fingerprint,
    create_session,
    describe_providers,
    fingerprint_id,
    is_default_providers,
    merge_placements,
    missing_providers,
    node_placement,
    normalize_providers,
    session_options,
    summary,
)
from nas.errors import ConfigError

#: the deprecation notices of torch's TorchScript-based ONNX exporter (torch 2.14), hidden inside export_onnx only
LEGACY_EXPORTER_NOTICES = ("You are using the legacy TorchScript-based ONNX export",
                           "The feature will be removed. Please remove usage of this function")


def export_onnx(module: nn.Module, input_shape: tuple[int, ...], path: str | os.PathLike | None = None,
                opset: int = 17) -> bytes:
    """Export ``module`` (eval mode, fixed input shape) to ONNX; return the bytes and optionally write them.

    Uses the TorchScript-based exporter (``dynamo=False``), not the ``torch.export``-based one torch recommends
    since 2.9, because the latter needs ``onnxscript`` (not a dependency), takes seconds per export where a LUT
    needs hundreds, and writes another graph for the same op, so every cached LUT would be re-profiled. The
    exported graph is pinned by a test (tests/test_backends.py). torch announces the exporter's deprecation on
    every call; only those two messages are hidden, and only inside this call (``catch_warnings`` restores the
    caller's filters), so every other warning, DeprecationWarnings included, still reaches the caller.
    """
    module = module.eval()
    example = torch.randn(*input_shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        for message in LEGACY_EXPORTER_NOTICES:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        torch.onnx.export(module, (example,), buffer, input_names=["input"], output_names=["output"],
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    data = buffer.getvalue()
    if path is not None:
        from nas.io import atomic_write_bytes

        atomic_write_bytes(path, data)
    return data


def summarize(times_ms: list[float], statistic: str = "median") -> LatencyEntry:
    """One entry from timed runs: the ``statistic`` (median, p25, p10 or min) and the inter-quartile range.

    On a shared machine interference only ever adds time, so a low percentile estimates the undisturbed runtime
    more stably than the median; which one is used is part of the backend's fingerprint.
    """
    return LatencyEntry(**summary(times_ms, statistic))


class LatencyBackend:
    """Base class. Subclasses set ``name`` and implement :meth:`_timer` and :meth:`versions`."""

    name = "base"

    def __init__(self, threads: int = 1, batch_size: int = 1, warmup: int = 10, repeats: int = 30,
                 cache_flush_mb: float = 0.0, calibration_networks: int = 0, statistic: str = "median",
                 sessions: int = 1) -> None:
        if statistic not in STATISTICS:
            raise ConfigError(f"hardware.backend.statistic must be one of {list(STATISTICS)}, got {statistic!r}")
        for label, value, low in (("threads", threads, 1), ("batch_size", batch_size, 1),
                                  ("warmup", warmup, 0), ("repeats", repeats, 1), ("sessions", sessions, 1),
                                  ("calibration_networks", calibration_networks, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"hardware.backend.{label} must be an integer >= {low}, got {value!r}")
        if isinstance(cache_flush_mb, bool) or not isinstance(cache_flush_mb, (int, float)) or not (
                0 <= cache_flush_mb <= 1024):
            raise ConfigError(f"hardware.backend.cache_flush_mb must be a number in [0, 1024] (0 = no flush), "
                              f"got {cache_flush_mb!r}")
        self.threads = threads
        self.batch_size = batch_size
        self.warmup = warmup
        self.repeats = repeats
        self.cache_flush_mb = float(cache_flush_mb)
        self.statistic = statistic
        #: separate loads (sessions, module copies) of each measured model, ``repeats`` timed runs each
        self.sessions = sessions
        #: random networks measured with the ops to calibrate the LUT's per-inference constant (nas.cost.lut)
        self.calibration_networks = calibration_networks
        self._scratch: np.ndarray | None = None

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    def reset_placement(self) -> None:
        """Start counting node placements afresh (:meth:`placement_summary`); a no-op where nothing is placed."""

    def placement_summary(self) -> dict[str, Any] | None:
        """Where the nodes of the models prepared since :meth:`reset_placement` ran, counted; ``None`` where the
        backend does not partition graphs (only ONNX Runtime with execution providers does)."""
        return None

    def fingerprint(self) -> dict[str, Any]:
        """What the measurements depend on: device, software versions, threads and batch size."""
        return cpu_fingerprint(self.name, self.threads, self.batch_size, self.cache_flush_mb, self.statistic,
                               self.versions())

    def fingerprint_id(self) -> str:
        return fingerprint_id(self.fingerprint())

    def hardware_record(self) -> dict[str, Any]:
        return {"backend": self.name, "threads": self.threads, "batch_size": self.batch_size,
                "warmup": self.warmup, "repeats": self.repeats, "sessions": self.sessions,
                "cache_flush_mb": self.cache_flush_mb,
                "statistic": self.statistic,
                "fingerprint": self.fingerprint(), "fingerprint_id": self.fingerprint_id()}

    def prepare(self, module: nn.Module, input_shape: tuple[int, int, int]) -> Callable[[], object]:
        """A zero-argument callable that runs ``module`` once on a batch of ``batch_size`` inputs."""
        return self._timer(module, (self.batch_size, *input_shape))

    def prepare_sessions(self, module: nn.Module, input_shape: tuple[int, int, int]) -> list[Callable[[], object]]:
        """``sessions`` independent :meth:`prepare` callables of ``module``, each on its own copy of the weights, so
        that no one placement in memory decides the measurement."""
        return [self.prepare(module if i == 0 else copy.deepcopy(module), input_shape) for i in range(self.sessions)]

    def flush_cache(self) -> None:
        """Evict the CPU caches by streaming through a ``cache_flush_mb`` buffer (no-op when 0)."""
        if self.cache_flush_mb <= 0:
            return
        if self._scratch is None:
            self._scratch = np.zeros(max(1, int(self.cache_flush_mb * 2**20) // 8))
        np.add(self._scratch, 1.0, out=self._scratch)

    def time_calls(self, run: Callable[[], object], count: int) -> list[float]:
        """Wall time (ms) of ``count`` separate calls of ``run`` (each after an untimed cache flush)."""
        times = []
        for _ in range(count):
            self.flush_cache()
            start = time.perf_counter_ns()
            run()
            times.append((time.perf_counter_ns() - start) / 1e6)
        return times

    def measure(self, module: nn.Module, input_shape: tuple[int, int, int]) -> LatencyEntry:
        """Median latency (ms) of ``module``: ``warmup`` untimed runs, then ``repeats`` timed runs."""
        with self.threads_context():
            run = self.prepare(module, input_shape)
            self.time_calls(run, self.warmup)
            return summarize(self.time_calls(run, self.repeats), self.statistic)

    def threads_context(self) -> contextlib.AbstractContextManager:
        """Context in which measurements run (sets thread counts where the backend needs it)."""
        return contextlib.nullcontext()

    def _timer(self, module: nn.Module, shape: tuple[int, ...]):  # noqa: ANN202
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threads={self.threads}, batch_size={self.batch_size})"


def onnx_providers(providers: Any, setting: str = "hardware.backend.providers",
                   available_only: bool = True) -> list[dict[str, Any]]:
    """The normalised execution providers (:func:`~nas.cost.measurement_core.normalize_providers`), checked against
    the installed onnxruntime build: a malformed list or (with ``available_only``) a provider the build lacks is a
    one-line :class:`~nas.errors.ConfigError` naming the providers it has. ``available_only=False`` is for
    providers of another device (``export-ops``: its runner checks them there)."""
    import onnxruntime as ort

    if providers is not None and not isinstance(providers, (str, bytes)):
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(providers, (DictConfig, ListConfig)):
            providers = OmegaConf.to_container(providers, resolve=True)
    try:
        normalized = normalize_providers(providers)
    except ValueError as err:
        raise ConfigError(f"{setting} {err}") from None
    available = ort.get_available_providers()
    missing = missing_providers(normalized, available)
    if missing and available_only:
        raise ConfigError(f"{setting}: execution provider(s) {', '.join(missing)} not in this onnxruntime "
                          f"{ort.__version__} build; it has: {', '.join(available)}")
    return normalized


def check_precision(precision: Any, setting: str = "hardware.backend.precision") -> str:
    """``precision`` (``fp32`` or ``int8``), or a one-line :class:`~nas.errors.ConfigError`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{setting} must be {' or '.join(PRECISIONS)}, got {precision!r}")
    return str(precision)


class OnnxRuntimeCPU(LatencyBackend):
    """ONNX Runtime, all graph optimisations, sequential execution; on the CPU execution provider unless
    ``providers`` (names or ``{name, options}``, in order of preference) name others.

    ``precision="int8"`` measures every model statically quantised (:mod:`nas.cost.quantization`: QDQ, per-channel
    int8 weights, int8 activations, calibrated on a seeded synthetic set); the precision and the quantisation recipe
    then enter the fingerprint. ``fp32`` (the default) leaves the fingerprint as it was before precisions existed.

    The providers and their options are part of the fingerprint (when they differ from the CPU default). With any
    provider other than the CPU's, every prepared model is also checked for the nodes ONNX Runtime leaves to a
    provider other than the first (:func:`~nas.cost.measurement_core.node_placement`); the profiler records the
    count in the LUT's ``meta`` and warns about it.
    """

    name = "onnxruntime-cpu"

    def __init__(self, threads: int = 1, batch_size: int = 1, warmup: int = 10, repeats: int = 30,
                 cache_flush_mb: float = 0.0, calibration_networks: int = 0, statistic: str = "median",
                 sessions: int = 1, providers: Any = None, precision: str = "fp32") -> None:
        super().__init__(threads, batch_size, warmup, repeats, cache_flush_mb, calibration_networks, statistic,
                         sessions)
        self.precision = check_precision(precision)
        self.providers = onnx_providers(providers)
        #: node placements are counted only where a provider other than the CPU's can take nodes
        self.check_placement = not is_default_providers(self.providers)
        self._placements: list[dict[str, Any]] = []

    def versions(self) -> dict[str, str]:
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}

    @property
    def quantization(self) -> dict[str, Any] | None:
        """The quantisation recipe of the measured models (:data:`nas.cost.quantization.INT8_RECIPE`); ``None`` at
        fp32."""
        if self.precision == "fp32":
            return None
        from nas.cost.quantization import INT8_RECIPE

        return dict(INT8_RECIPE)

    def fingerprint(self) -> dict[str, Any]:
        # fp32 keeps the fingerprint (and cache key) of LUTs cached before precisions (cpu_fingerprint)
        return cpu_fingerprint(self.name, self.threads, self.batch_size, self.cache_flush_mb, self.statistic,
                               self.versions(), self.providers, self.precision, self.quantization)

    def hardware_record(self) -> dict[str, Any]:
        record = {**super().hardware_record(), "providers": self.providers}
        if self.precision != "fp32":
            record["precision"] = self.precision
        return record

    def model_bytes(self, module: nn.Module, shape: tuple[int, ...], opset: int = 17) -> bytes:
        """The ONNX model this backend measures for ``module`` on ``shape``: the fp32 export, quantised to int8
        (:func:`~nas.cost.quantization.quantize_synthetic`: calibrated on a seeded synthetic set of ``shape``) when
        ``precision`` is int8. ``export-ops`` ships exactly these models to the device."""
        data = export_onnx(module, shape, opset=opset)
        if self.precision == "int8":
            from nas.cost.quantization import quantize_synthetic

            data = quantize_synthetic(data, shape)
        return data

    def model_sessions(self, model_bytes: bytes, shape: tuple[int, ...]) -> list[Callable[[], object]]:
        """``sessions`` timed callables of a ready ONNX model (e.g. train.py's ``model_int8.onnx``), as measured
        for the LUT; counted for node placement like every prepared model."""
        if self.check_placement:
            self._placements.append(self.node_placement(model_bytes))
        return [self._session_timer(model_bytes, shape) for _ in range(self.sessions)]

    def session(self, model_bytes: bytes):  # noqa: ANN201
        import onnxruntime as ort

        return create_session(ort, model_bytes, session_options(ort, self.threads), self.providers)

    def node_placement(self, model_bytes: bytes) -> dict[str, Any]:
        """The providers ONNX Runtime places ``model_bytes``' nodes on (a separate, profiled session)."""
        import onnxruntime as ort

        return node_placement(ort, model_bytes, session_options(ort, self.threads), self.providers)

    def reset_placement(self) -> None:
        self._placements = []

    def placement_summary(self) -> dict[str, Any] | None:
        return merge_placements(self._placements)

    def _timer(self, module: nn.Module, shape: tuple[int, ...]):  # noqa: ANN202
        data = self.model_bytes(module, shape)
        if self.check_placement:
            self._placements.append(self.node_placement(data))
        return self._session_timer(data, shape)

    def _session_timer(self, model_bytes: bytes, shape: tuple[int, ...]):  # noqa: ANN202
        sess = self.session(model_bytes)
        feeds = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        return lambda: sess.run(None, feeds)

    def prepare_sessions(self, module: nn.Module, input_shape: tuple[int, int, int]) -> list[Callable[[], object]]:
        """One export (quantised when int8), ``sessions`` ONNX Runtime sessions of it."""
        shape = (self.batch_size, *input_shape)
        return self.model_sessions(self.model_bytes(module, shape), shape)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(threads={self.threads}, batch_size={self.batch_size}, "
                f"providers=[{describe_providers(self.providers)}]"
                + (f", precision={self.precision})" if self.precision != "fp32" else ")"))


class TorchEagerCPU(LatencyBackend):
    """PyTorch eager mode on the CPU (``torch.inference_mode``, ``torch.set_num_threads(threads)``)."""

    name = "torch-eager-cpu"

    @contextlib.contextmanager
    def threads_context(self) -> Iterator[None]:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def _timer(self, module: nn.Module, shape: tuple[int, ...]):  # noqa: ANN202
        module = module.eval()
        x = torch.randn(*shape)

        def run() -> None:
            with torch.inference_mode():
                module(x)

        return run


class TorchCUDA(LatencyBackend):
    """PyTorch on a CUDA GPU, timed with CUDA events around each call and a synchronisation after it.

    Kernel launches are asynchronous, so host wall time would measure the launch, not the work: each timed call
    records a start and an end event on the current stream, and ``end.synchronize()`` waits for the GPU before
    ``elapsed_time`` is read. Warm-up calls (``warmup``) let cuDNN pick its algorithms and the caching allocator
    settle. ``threads`` sets the host's ``torch.set_num_threads`` (it drives the launch overhead).
    """

    name = "torch-cuda"

    def __init__(self, threads: int = 1, batch_size: int = 1, warmup: int = 20, repeats: int = 50,
                 device: int = 0, cudnn_benchmark: bool = True, calibration_networks: int = 0,
                 statistic: str = "median", sessions: int = 1) -> None:
        super().__init__(threads, batch_size, warmup, repeats, 0.0, calibration_networks, statistic, sessions)
        if not torch.cuda.is_available():
            raise ConfigError(
                "hardware=cuda needs a CUDA GPU, but torch.cuda.is_available() is False here (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Run on a machine with an NVIDIA "
                "GPU and a CUDA build of PyTorch, or pick a CPU target: hardware=cpu_onnx or hardware=cpu_torch.")
        if isinstance(device, bool) or not isinstance(device, int) or not 0 <= device < torch.cuda.device_count():
            raise ConfigError(f"hardware.backend.device must be a GPU index in [0, {torch.cuda.device_count()}), "
                              f"got {device!r}")
        self.device = torch.device("cuda", device)
        self.cudnn_benchmark = bool(cudnn_benchmark)

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "cuda": str(torch.version.cuda),
                "cudnn": str(torch.backends.cudnn.version())}

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.name, "device": torch.cuda.get_device_name(self.device),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(self.device))),
                "threads": self.threads, "batch_size": self.batch_size, "statistic": self.statistic,
                "cudnn_benchmark": self.cudnn_benchmark, **self.versions()}

    @contextlib.contextmanager
    def threads_context(self) -> Iterator[None]:
        previous = (torch.get_num_threads(), torch.backends.cudnn.benchmark)
        torch.set_num_threads(self.threads)
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            with torch.cuda.device(self.device):
                yield
        finally:
            torch.set_num_threads(previous[0])
            torch.backends.cudnn.benchmark = previous[1]

    def _timer(self, module: nn.Module, shape: tuple[int, ...]):  # noqa: ANN202
        module = module.eval().to(self.device)
        x = torch.randn(*shape, device=self.device)

        def run() -> None:
            with torch.inference_mode():
                module(x)

        return run

    def time_calls(self, run: Callable[[], object], count: int) -> list[float]:
        """GPU time (ms) of ``count`` calls, each between two CUDA events, synchronised before reading."""
        times = []
        torch.cuda.synchronize(self.device)
        for _ in range(count):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
        return times


def count_macs(module: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on ``shape``: half the FLOPs torch's ``FlopCounterMode`` counts
    (convolutions and matrix products; element-wise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module.eval()(torch.zeros(*shape))
    return counter.get_total_flops() // 2


class MacsProxy(LatencyBackend):
    """Not a measurement: a deterministic cost model ``overhead_ms + ms_per_mmac * MMACs`` per op.

    For tests, for reproducible examples, and as a hardware-agnostic proxy when no target device is at hand.
    Its LUTs are labelled ``macs-proxy`` so they are never mistaken for measured latencies.
    """

    name = "macs-proxy"

    def __init__(self, threads: int = 1, batch_size: int = 1, warmup: int = 0, repeats: int = 1,
                 ms_per_mmac: float = 0.01, overhead_ms: float = 0.005, calibration_networks: int = 0) -> None:
        super().__init__(threads, batch_size, warmup, repeats, calibration_networks=calibration_networks)
        self.ms_per_mmac = float(ms_per_mmac)
        self.overhead_ms = float(overhead_ms)

    def versions(self) -> dict[str, str]:
        return {"model": f"{self.overhead_ms}+{self.ms_per_mmac}*MMACs"}

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.name, "batch_size": self.batch_size, **self.versions()}

    def measure(self, module: nn.Module, input_shape: tuple[int, int, int]) -> LatencyEntry:
        macs = count_macs(module, (self.batch_size, *input_shape))
        return LatencyEntry(self.overhead_ms + self.ms_per_mmac * macs / 1e6, 0.0, 1)

    def prepare(self, module: nn.Module, input_shape: tuple[int, int, int]) -> Callable[[], object]:
        entry = self.measure(module, input_shape)
        return lambda: entry

    def time_calls(self, run: Callable[[], object], count: int) -> list[float]:
        return [run().ms for _ in range(count)]  # type: ignore[attr-defined]


def build_backend(cfg: Any) -> LatencyBackend:
    """Instantiate the ``hardware.backend`` config; a bad value surfaces as the framework's own clear error.

    (Hydra wraps exceptions raised by a target in ``InstantiationException``; the CLI's ``main_guard`` turns
    only :class:`~nas.errors.NASError` into ``error: ...``, so the original error is re-raised.)
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from nas.errors import NASError

    try:
        return instantiate(cfg)
    except InstantiationException as err:
        if isinstance(err.__cause__, NASError):
            raise err.__cause__ from None
        raise
