"""Latency backends: CUDA selection and errors, fingerprints, cache flush and statistics."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from nas.cli import CONFIG_DIR
from nas.cost.backends import OnnxRuntimeCPU, TorchCUDA, TorchEagerCPU, build_backend, summarize
from nas.cost.measurement_core import time_interleaved
from nas.errors import ConfigError


def hardware_config(name: str, *overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("search", overrides=[f"hardware={name}", *overrides]).hardware


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where no GPU is present")
def test_cuda_without_gpu_is_a_clear_error():
    cfg = hardware_config("cuda")
    assert cfg.backend._target_ == "nas.cost.backends.TorchCUDA"
    with pytest.raises(ConfigError, match=r"hardware=cuda needs a CUDA GPU.*hardware=cpu_onnx"):
        build_backend(cfg.backend)


def fake_gpu(monkeypatch):
    """Mock of the CUDA device queries, because this machine has no GPU (fingerprint logic only)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))


def test_cuda_fingerprint_has_gpu_threads_and_batch(monkeypatch):
    fake_gpu(monkeypatch)
    cfg = hardware_config("cuda", "hardware.backend.batch_size=8")
    backend = instantiate(cfg.backend)
    fp = backend.fingerprint()
    assert fp["device"] == "Fake GPU 80GB" and fp["capability"] == "9.0" and fp["batch_size"] == 8
    assert backend.fingerprint_id() != TorchCUDA(batch_size=1).fingerprint_id()
    assert TorchCUDA(threads=1).fingerprint_id() != TorchCUDA(threads=4).fingerprint_id()
    with pytest.raises(ConfigError, match=r"hardware.backend.device must be a GPU index in \[0, 1\)"):
        TorchCUDA(device=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_measures_an_op_on_the_gpu(micro_space):
    from nas.cost.signatures import required_ops

    backend = TorchCUDA(warmup=3, repeats=5)
    ops = required_ops(micro_space, 1, 10)
    small, big = ops[next(k for k in ops if "_k3_e3_se0_" in k)], ops[next(k for k in ops if "_k5_e6_se0.5_" in k)]
    assert 0 < backend.measure(small.build(), small.input_shape).ms
    assert backend.measure(big.build(), big.input_shape).runs == 5


def test_threads_batch_flush_and_statistic_are_part_of_the_fingerprint():
    base = OnnxRuntimeCPU()
    for other in (OnnxRuntimeCPU(threads=2), OnnxRuntimeCPU(batch_size=4), OnnxRuntimeCPU(cache_flush_mb=2.0),
                  OnnxRuntimeCPU(statistic="p10")):
        assert other.fingerprint_id() != base.fingerprint_id()
    # how much is measured (warm-up, repeats, sessions) changes the noise, not what a number means
    assert OnnxRuntimeCPU(warmup=3, repeats=7, sessions=3).fingerprint_id() == base.fingerprint_id()
    assert TorchEagerCPU().fingerprint_id() != base.fingerprint_id()


@pytest.mark.parametrize("kwargs, message", [
    ({"statistic": "mean"}, "statistic must be one of"),
    ({"cache_flush_mb": -1}, r"cache_flush_mb must be a number in \[0, 1024\]"),
    ({"calibration_networks": 1.5}, "calibration_networks must be an integer >= 0"),
    ({"threads": 0}, "threads must be an integer >= 1"),
    ({"sessions": 0}, "sessions must be an integer >= 1"),
])
def test_bad_backend_settings_name_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        OnnxRuntimeCPU(**kwargs)


def test_summary_statistics():
    times = [5.0, 1.0, 2.0, 3.0, 4.0]
    assert summarize(times).ms == 3.0
    assert summarize(times, "min").ms == 1.0
    assert summarize(times, "p25").ms == 2.0
    assert summarize(times, "p10").ms == pytest.approx(1.4)
    assert summarize(times).iqr_ms == 2.0 and summarize(times).runs == 5


def test_cache_flush_runs_before_each_timed_call():
    backend = OnnxRuntimeCPU(cache_flush_mb=0.25)
    seen = []

    def run():
        seen.append(float(backend._scratch[0]))

    backend.time_calls(run, 3)
    assert seen == [1.0, 2.0, 3.0]  # the buffer was streamed (incremented) once before every call
    assert backend._scratch.nbytes == 2**18


def test_interleaved_schedule_times_every_session_in_a_fresh_order_each_round():
    log = []

    def session(name, s):
        return lambda: log.append(("warm", name, s))

    def time_calls(run, count):
        run()  # the fake run logs a "warm" entry; turn it into a timed one
        log[-1] = ("timed", *log[-1][1:])
        return [float(count)] * count

    runs = {name: [session(name, s) for s in range(sessions)] for name, sessions in (("a", 2), ("b", 1), ("c", 3))}
    samples = time_interleaved(runs, time_calls, repeats=5, rounds=5, seed=1)
    assert {n: [len(t) for t in v] for n, v in samples.items()} == {"a": [5, 5], "b": [5], "c": [5, 5, 5]}
    # each round: one untimed re-warm call right before each session's timed call, every session once
    pairs = list(zip(log[0::2], log[1::2]))
    assert all(w[0] == "warm" and t[0] == "timed" and w[1:] == t[1:] for w, t in pairs)
    orders = [tuple(t[1:] for _, t in pairs[r * 6:(r + 1) * 6]) for r in range(5)]
    assert all(sorted(o) == sorted(orders[0]) and len(set(o)) == 6 for o in orders)
    assert len(set(orders)) > 1  # the order changes between rounds ...
    log.clear()
    time_interleaved(runs, time_calls, repeats=5, rounds=5, seed=1)
    assert [tuple(t[1:]) for t in log[1::2]] == [o for order in orders for o in order]  # ... and is seeded


def test_onnxruntime_loads_each_op_in_separate_sessions(micro_space):
    from nas.cost.profiler import profile_ops
    from nas.cost.signatures import required_ops

    backend = OnnxRuntimeCPU(warmup=1, repeats=3, sessions=2)
    ops = required_ops(micro_space, 1, 10)
    some = dict(list(ops.items())[:2])
    first = next(iter(some.values()))
    runs = backend.prepare_sessions(first.build(), first.input_shape)
    assert len(runs) == 2 and runs[0] is not runs[1]
    outputs = [run()[0] for run in runs]
    assert outputs[0].shape == outputs[1].shape and (outputs[0] == outputs[1]).all()  # same model, same input
    samples = {}
    entries = profile_ops(some, backend, progress=False, rounds=3, samples_out=samples)
    assert all(len(samples[k]) == 2 and [len(t) for t in samples[k]] == [3, 3] for k in some)
    assert all(entries[k].runs == 6 and entries[k].ms > 0 for k in some)
    assert backend.hardware_record()["sessions"] == 2


def test_onnx_export_keeps_its_graph_and_hides_no_other_warning():
    """``export_onnx`` keeps the TorchScript exporter (see its docstring for why): the graph of a small network
    is the one every cached LUT was profiled with, only torch's two notices about that exporter are hidden, only
    inside the call, and no module of the package hides DeprecationWarnings (or all warnings) for its callers."""
    import collections
    import hashlib
    import re
    import warnings

    import onnx

    from nas.cost.backends import export_onnx
    from nas.space.networks import build_child
    from tests.conftest import ROOT, load_space

    space = load_space("tiny")
    pinned = {  # architecture: node count, op types, sha256 of the op sequence (16 hex)
        "smallest": (30, {"Add": 1, "Conv": 13, "Gemm": 1, "Identity": 5, "ReduceMean": 1, "Relu": 9},
                     "b5640dda1a71bc58"),
        "largest": (85, {"Add": 3, "Conv": 29, "Gemm": 1, "Identity": 18, "Mul": 5, "ReduceMean": 6, "Relu": 18,
                         "Sigmoid": 5}, "e5d0f724c7c337c1"),
    }
    for name, (count, ops, digest) in pinned.items():
        net = build_child(space, getattr(space, name)(), 1, 10)
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # a notice that escaped would raise here
            before = list(warnings.filters)
            model = onnx.load_from_string(export_onnx(net, (1, 1, space.resolution, space.resolution)))
            assert warnings.filters == before  # the caller's filters are restored
        sequence = [n.op_type for n in model.graph.node]
        assert (len(sequence), dict(collections.Counter(sequence))) == (count, ops), name
        assert hashlib.sha256(" ".join(sequence).encode()).hexdigest()[:16] == digest, name
        assert model.opset_import[0].version == 17
    blanket = re.compile(r"simplefilter\(\s*[\"']ignore[\"']\s*\)|filterwarnings\(\s*[\"']ignore[\"']\s*\)|"
                         r"(?:simplefilter|filterwarnings)\([^)]*DeprecationWarning")
    hiding = [str(p.relative_to(ROOT)) for folder in ("nas", "models") for p in (ROOT / folder).rglob("*.py")
              if blanket.search(p.read_text()) and p.name != "backends.py"]
    assert not hiding, hiding
    source = (ROOT / "nas" / "cost" / "backends.py").read_text()
    assert not re.search(r"simplefilter\(\s*[\"']ignore", source)
