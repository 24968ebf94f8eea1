"""ONNX Runtime execution providers: config form, fingerprint, early errors, node placement, device runner, train.py.

This machine's onnxruntime build has the CPU provider and the Azure provider (which takes no ordinary node, so
every node of a model it is asked to run first falls back to the CPU: a real partitioned placement to count).
Nothing here is mocked.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import warnings

import onnxruntime as ort
import pytest
import torch
from omegaconf import OmegaConf

from nas.cost.backends import OnnxRuntimeCPU, build_backend, export_onnx, onnx_providers
from nas.cost.device_export import export_space_ops
from nas.cost.lut import LatencyLUT
from nas.cost.measurement_core import (
    cpu_model,
    fingerprint_id,
    node_placement,
    normalize_providers,
    session_options,
)
from nas.cost.profiler import cache_path, obtain_lut, profile_space
from nas.errors import ConfigError, LUTError
from nas.search.training import export_and_check
from nas.space.networks import build_child
from nas.space.search_space import SearchSpace
from tests.conftest import MICRO_SPACE, ROOT
from tests.test_device_profiling import run_runner

CPU = "CPUExecutionProvider"
AZURE = "AzureExecutionProvider"
needs_azure = pytest.mark.skipif(AZURE not in ort.get_available_providers(),
                                 reason="this onnxruntime build has no second provider to partition a graph with")
CPU_ONNX = OmegaConf.load(ROOT / "nas" / "conf" / "hardware" / "cpu_onnx.yaml")


def legacy_fingerprint(threads=1, batch_size=1, cache_flush_mb=0.0, statistic="median") -> dict:
    """The fingerprint of the ONNX Runtime backend as it was built before providers could be chosen."""
    return {"backend": "onnxruntime-cpu", "device": cpu_model(), "machine": platform.machine(),
            "system": platform.system(), "logical_cpus": os.cpu_count(), "threads": threads,
            "batch_size": batch_size, "cache_flush_mb": float(cache_flush_mb), "statistic": statistic,
            "onnxruntime": ort.__version__}


def tiny_model() -> bytes:
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                 torch.nn.Flatten(), torch.nn.Linear(8, 4))
    return export_onnx(module, (1, 3, 16, 16))


def test_default_config_keeps_the_fingerprint_and_cache_key_of_cached_luts():
    backend = build_backend(CPU_ONNX.backend)
    assert backend.providers == [{"name": CPU, "options": {}}]
    settings = CPU_ONNX.backend
    legacy = legacy_fingerprint(settings.threads, settings.batch_size, settings.cache_flush_mb, settings.statistic)
    assert backend.fingerprint() == legacy
    assert backend.fingerprint_id() == fingerprint_id(legacy)
    # every spelling of the default is the default; without providers= the backend is what it always was
    for providers in (None, CPU, [CPU], [{"name": CPU}], [{"name": CPU, "options": {}}], [(CPU, {})]):
        assert OnnxRuntimeCPU(providers=providers).fingerprint_id() == fingerprint_id(legacy_fingerprint())
    space = SearchSpace.from_config(MICRO_SPACE)
    assert cache_path("c", space, backend, 1, 10).name == (
        f"micro-{space.digest}-i1-c10-onnxruntime-cpu-t1-b1-{fingerprint_id(legacy)}.json")


def test_providers_and_their_options_change_the_fingerprint():
    default = OnnxRuntimeCPU().fingerprint_id()
    ids = {
        "azure first": OnnxRuntimeCPU(providers=[AZURE, CPU]).fingerprint_id(),
        "cpu first": OnnxRuntimeCPU(providers=[CPU, AZURE]).fingerprint_id(),
        "cpu option": OnnxRuntimeCPU(providers=[{"name": CPU, "options": {"arena": 0}}]).fingerprint_id(),
        "other value": OnnxRuntimeCPU(providers=[{"name": CPU, "options": {"arena": 1}}]).fingerprint_id(),
    }
    assert len(set(ids.values()) | {default}) == 5, ids
    # option values reach ONNX Runtime as strings: 1 and "1" are one setting
    assert OnnxRuntimeCPU(providers=[{"name": CPU, "options": {"arena": "1"}}]).fingerprint_id() == ids["other value"]
    record = OnnxRuntimeCPU(providers=[AZURE, CPU]).hardware_record()
    assert record["providers"] == [{"name": AZURE, "options": {}}, {"name": CPU, "options": {}}]
    assert record["fingerprint"]["providers"] == record["providers"]


def test_hydra_form_and_malformed_lists():
    cfg = OmegaConf.merge(CPU_ONNX, OmegaConf.create(
        {"backend": {"providers": [{"name": CPU, "options": {"use_arena": 0}}]}}))
    assert build_backend(cfg.backend).providers == [{"name": CPU, "options": {"use_arena": "0"}}]
    for bad, message in (([], "must be a list"), ([{"nam": CPU}], "got the entry"), ([CPU, CPU], "twice"),
                         ([{"name": CPU, "options": [1]}], "got the entry"), (3, "must be a list")):
        with pytest.raises(ConfigError, match=message) as info:
            OnnxRuntimeCPU(providers=bad)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="twice"):
        normalize_providers([CPU, {"name": CPU}])


def test_unavailable_provider_is_one_line_listing_the_build_providers():
    with pytest.raises(ConfigError) as info:
        onnx_providers(["NoSuchExecutionProvider", CPU])
    message = str(info.value)
    assert "\n" not in message and "NoSuchExecutionProvider not in this onnxruntime" in message
    assert all(name in message for name in ort.get_available_providers())


def test_unavailable_provider_from_the_shell_fails_before_profiling(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, "-m", "nas.command", "profile-lut",
                           "hardware.backend.providers=[NoSuchExecutionProvider]", "in_channels=1", "num_classes=10",
                           f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "NoSuchExecutionProvider" in errors[0], proc.stderr[-2000:]
    assert all(name in errors[0] for name in ort.get_available_providers())
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not list(tmp_path.glob("cache/*.json"))


def test_node_placement_of_the_cpu_provider_has_no_fallback():
    placement = node_placement(ort, tiny_model(), session_options(ort, 1), normalize_providers([CPU]))
    assert placement["nodes"] >= 3 and placement["fallback_nodes"] == 0 and placement["fallback_ops"] == {}
    assert placement["by_provider"] == {CPU: placement["nodes"]}


@needs_azure
def test_node_placement_counts_nodes_left_to_another_provider():
    placement = node_placement(ort, tiny_model(), session_options(ort, 1), normalize_providers([AZURE, CPU]))
    assert placement["first_provider"] == AZURE
    assert placement["fallback_nodes"] == placement["nodes"] >= 3 and placement["by_provider"] == {
        CPU: placement["nodes"]}
    assert {"Conv", "Gemm"} <= set(placement["fallback_ops"])


@needs_azure
def test_profiled_lut_records_placement_and_differs_from_the_cpu_lut(tmp_path):
    space = SearchSpace.from_config(MICRO_SPACE)
    settings = {"warmup": 0, "repeats": 1}
    partitioned = OnnxRuntimeCPU(providers=[AZURE, CPU], **settings)
    with pytest.warns(UserWarning, match=f"run partly off {AZURE}"):
        lut = profile_space(space, partitioned, 1, 10, progress=False, rounds=1)
    placement = lut.meta["node_placement"]
    assert placement["models"] == len(lut.entries) and placement["fallback_nodes"] == placement["nodes"] > 0
    assert lut.hardware["providers"][0]["name"] == AZURE
    path = lut.save(tmp_path / "azure.json")
    assert cache_path(tmp_path, space, partitioned, 1, 10) != cache_path(tmp_path, space, OnnxRuntimeCPU(**settings),
                                                                          1, 10)
    with pytest.raises(LUTError, match=f"providers={AZURE}\\+{CPU}\\) does not match"):
        LatencyLUT.load(path).check_hardware(OnnxRuntimeCPU(**settings).fingerprint_id(), strict=True)
    # the default backend counts nothing (no provider other than the CPU's can take a node)
    plain = profile_space(space, OnnxRuntimeCPU(**settings), 1, 10, progress=False, rounds=1)
    assert "node_placement" not in plain.meta
    assert obtain_lut(space, partitioned, 1, 10, lut_path=path, strict=True).hardware["fingerprint_id"] == (
        partitioned.fingerprint_id())


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    space = SearchSpace.from_config(MICRO_SPACE)
    folder = tmp_path_factory.mktemp("providers") / "ops_micro"
    backend = OnnxRuntimeCPU(warmup=0, repeats=1, calibration_networks=0)
    manifest = export_space_ops(space, backend, 1, 10, folder, rounds=1, progress=False)
    return folder, json.loads(manifest.read_text())


def test_export_records_the_providers(export):
    assert export[1]["settings"]["providers"] == [{"name": CPU, "options": {}}]


def test_device_runner_takes_providers(export, tmp_path):
    folder, _ = export
    proc = run_runner(folder, "--out", str(tmp_path / "cpu.json"), "--providers", CPU, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "cpu.json").read_text())
    assert data["hardware"]["providers"] == [{"name": CPU, "options": {}}] and "node_placement" not in data["meta"]
    assert data["hardware"]["fingerprint_id"] == OnnxRuntimeCPU(warmup=0, repeats=1).fingerprint_id()
    if AZURE in ort.get_available_providers():
        proc = run_runner(folder, "--out", str(tmp_path / "azure.json"), "--providers", f"{AZURE},{CPU}",
                          "--no-progress", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "warning: " in proc.stderr and f"partly off {AZURE}" in proc.stderr
        data = json.loads((tmp_path / "azure.json").read_text())
        assert data["meta"]["node_placement"]["fallback_nodes"] > 0
        assert data["hardware"]["fingerprint_id"] == OnnxRuntimeCPU(
            warmup=0, repeats=1, providers=[AZURE, CPU]).fingerprint_id()
    # options, in both command-line forms
    for value in (f"{CPU}:use_arena=1", json.dumps([{"name": CPU, "options": {"use_arena": 1}}])):
        proc = run_runner(folder, "--out", str(tmp_path / "opt.json"), "--providers", value, "--no-progress",
                          cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        data = json.loads((tmp_path / "opt.json").read_text())
        assert data["hardware"]["providers"] == [{"name": CPU, "options": {"use_arena": "1"}}]


def test_device_runner_rejects_an_unavailable_provider_in_one_line(export, tmp_path):
    folder, _ = export
    for value, message in (("NoSuchExecutionProvider,CPUExecutionProvider", "NoSuchExecutionProvider not in this "
                                                                             "onnxruntime"),
                           (f"{CPU}:use_arena", "is not key=value")):
        proc = run_runner(folder, "--out", str(tmp_path / "lut.json"), "--providers", value, "--no-progress",
                          cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "lut.json").exists()
    assert all(name in errors[0] or "key=value" in errors[0] for name in ort.get_available_providers())


def test_train_onnx_check_reports_node_placement(tmp_path):
    space = SearchSpace.from_config(MICRO_SPACE)
    net = build_child(space, space.smallest(), 1, 10)
    result = export_and_check(net, tmp_path / "model.onnx")
    assert result["onnx_providers"] == [{"name": CPU, "options": {}}]
    assert result["onnx_node_placement"]["fallback_nodes"] == 0 and result["onnx_node_placement"]["nodes"] > 0
    with pytest.raises(ConfigError, match="NoSuchExecutionProvider not in this onnxruntime"):
        export_and_check(net, tmp_path / "model2.onnx", providers=["NoSuchExecutionProvider"])
    if AZURE in ort.get_available_providers():
        with warnings.catch_warnings():
            result = export_and_check(net, tmp_path / "model3.onnx", providers=[AZURE, CPU])
        assert result["onnx_node_placement"]["fallback_nodes"] == result["onnx_node_placement"]["nodes"] > 0


def test_shipped_runner_still_imports_nothing_of_the_framework(export, tmp_path):
    """The runner's copy with its measurement core runs where torch and nas cannot be imported (run_runner)."""
    folder, _ = export
    device = tmp_path / "device"
    shutil.copytree(folder, device)
    proc = run_runner(device, "--out", str(tmp_path / "lut.json"), "--no-progress", cwd=tmp_path,
                      runner=device / "device_runner.py")
    assert proc.returncode == 0, proc.stderr
