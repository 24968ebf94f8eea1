"""int8 latency: ``hardware.backend.precision=int8`` (static QDQ quantisation with onnxruntime.quantization) in the
fingerprint, the op models, a tiny LUT profiled, searched and trained end to end, train.py's model_int8.onnx, and the
device export at int8 with its runner's LUT.

Quantisation is real (nothing mocked); the runs are small (the tiny space, 2 calibration networks, 1 epoch).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from omegaconf import OmegaConf

from nas.cli import compose_config
from nas.cost.backends import OnnxRuntimeCPU, build_backend, export_onnx
from nas.cost.device_export import export_space_ops
from nas.cost.lut import LatencyLUT
from nas.cost.measurement_core import cpu_fingerprint, fingerprint_id
from nas.cost.profiler import cache_path, obtain_lut
from nas.cost.quantization import INT8_RECIPE
from nas.cost.signatures import required_ops
from nas.errors import ConfigError, LUTError
from nas.search.data import DigitsDataModule
from nas.search.training import export_int8_and_check, int8_export_requested
from nas.space.networks import build_child
from nas.space.search_space import SearchSpace
from tests.conftest import MICRO_SPACE, ROOT
from tests.test_device_profiling import run_runner
from tests.test_providers import AZURE, CPU, legacy_fingerprint

CPU_ONNX = OmegaConf.load(ROOT / "nas" / "conf" / "hardware" / "cpu_onnx.yaml")
SMALL = ["hardware.backend.warmup=1", "hardware.backend.repeats=3", "hardware.backend.calibration_networks=2"]
FAST = ["progress=false", "data.limit=400", *SMALL]
QDQ = {"QuantizeLinear", "DequantizeLinear"}
# the end-to-end runs: the tiny space with 3x3 kernels and no SE only (a third of the ops to quantise and profile)
NARROW = ["space.candidates.kernels=[3]", "space.candidates.se_ratios=[0]"]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    return errors[0]


def test_fp32_keeps_the_fingerprint_and_cache_key_int8_changes_them():
    settings = CPU_ONNX.backend
    assert settings.precision == "fp32"
    legacy = legacy_fingerprint(settings.threads, settings.batch_size, settings.cache_flush_mb, settings.statistic)
    fp32 = build_backend(settings)
    assert fp32.fingerprint() == legacy and fp32.fingerprint_id() == fingerprint_id(legacy)
    assert OnnxRuntimeCPU(precision="fp32").fingerprint_id() == OnnxRuntimeCPU().fingerprint_id() == fingerprint_id(
        legacy_fingerprint())
    assert "precision" not in fp32.hardware_record()
    int8 = build_backend(compose_config("profile", ["hardware=cpu_onnx_int8"]).hardware.backend)
    assert int8.precision == "int8" and int8.fingerprint_id() != fp32.fingerprint_id()
    fingerprint = int8.fingerprint()
    assert fingerprint["precision"] == "int8" and fingerprint["quantization"]["format"] == "QDQ"
    assert {k: v for k, v in fingerprint.items() if k not in ("precision", "quantization")} == legacy
    assert int8.hardware_record()["precision"] == "int8"
    space = SearchSpace.from_config(MICRO_SPACE)
    assert cache_path("c", space, fp32, 1, 10).name == (
        f"micro-{space.digest}-i1-c10-onnxruntime-cpu-t1-b1-{fingerprint_id(legacy)}.json")
    assert cache_path("c", space, int8, 1, 10).name == (
        f"micro-{space.digest}-i1-c10-onnxruntime-cpu-int8-t1-b1-{int8.fingerprint_id()}.json")


def test_bad_precision_is_one_config_error_line():
    for bad in ("int4", "INT8", 8, None):
        with pytest.raises(ConfigError, match="hardware.backend.precision must be fp32 or int8") as info:
            OnnxRuntimeCPU(precision=bad)
        assert "\n" not in str(info.value)


def test_int8_op_model_is_quantised_qdq_and_runs():
    space = SearchSpace.from_config(MICRO_SPACE)
    op = next(op for key, op in required_ops(space, 1, 10).items() if "_se0.25_" in key)
    shape = (1, *op.input_shape)
    module = op.build()
    fp32_bytes = export_onnx(module, shape)
    backend = OnnxRuntimeCPU(precision="int8", warmup=0, repeats=1)
    data = backend.model_bytes(module, shape)
    assert data == backend.model_bytes(module, shape)  # seeded calibration: the same model every time
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert QDQ <= set(ops) and not QDQ & {node.op_type for node in onnx.load_from_string(fp32_bytes).graph.node}
    weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert weights, "the convolution weights are stored as int8"
    # per-channel: the weights' DequantizeLinear has one scale per output channel
    weight_names = {t.name for t in weights}
    scales = {t.name: t for t in model.graph.initializer}
    per_channel = [scales[n.input[1]] for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in weight_names]
    assert per_channel and all(len(s.dims) == 1 and s.dims[0] > 1 for s in per_channel)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    reference = ort.InferenceSession(fp32_bytes, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert out.shape == reference.shape and np.isfinite(out).all()
    assert np.corrcoef(out.ravel(), reference.ravel())[0, 1] > 0.9  # quantised, yet the same function
    runs = backend.prepare_sessions(module, op.input_shape)
    assert len(runs) == backend.sessions and backend.time_calls(runs[0], 2)[0] > 0


def int8_backend(**overrides) -> OnnxRuntimeCPU:
    return OnnxRuntimeCPU(**{"precision": "int8", "warmup": 1, "repeats": 2, "calibration_networks": 2, **overrides})


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    """An int8 export of the micro space with 3x3 kernels and no SE (a few ops and 2 calibration networks)."""
    space = SearchSpace.from_config({**MICRO_SPACE, "candidates": {**MICRO_SPACE["candidates"], "kernels": [3],
                                                                   "se_ratios": [0]}})
    folder = tmp_path_factory.mktemp("int8_export") / "ops_micro"
    manifest = export_space_ops(space, int8_backend(), 1, 10, folder, rounds=1, progress=False)
    return space, folder, json.loads(manifest.read_text())


def test_int8_export_ships_qdq_models_quantised_as_the_backend_measures_them(int8_export):
    space, folder, manifest = int8_export
    backend = int8_backend()
    assert manifest["version"] == 2 and manifest["precision"] == "int8"
    assert manifest["quantization"] == INT8_RECIPE == backend.fingerprint()["quantization"]
    assert [op["key"] for op in manifest["ops"]] == list(required_ops(space, 1, 10)) and len(manifest["networks"]) == 2
    ops = required_ops(space, 1, 10)
    for item in manifest["ops"] + manifest["networks"]:
        model = onnx.load(str(folder / item["file"]))
        assert QDQ <= {node.op_type for node in model.graph.node}, item["file"]
        assert any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4 for t in model.graph.initializer)
    # the same function and recipe as the int8 backend: the same graph as its model of the op
    first = manifest["ops"][1]
    shipped = onnx.load(str(folder / first["file"]))
    measured = onnx.load_from_string(backend.model_bytes(ops[first["key"]].build(), tuple(first["input_shape"])))
    assert [n.op_type for n in shipped.graph.node] == [n.op_type for n in measured.graph.node]
    session = ort.InferenceSession(str(folder / first["file"]), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(first["input_shape"]).astype(np.float32)
    assert np.isfinite(session.run(None, {session.get_inputs()[0].name: x})[0]).all()


def test_runner_lut_of_an_int8_export_has_the_framework_int8_fingerprint(int8_export, tmp_path):
    space, folder, manifest = int8_export
    proc = run_runner(folder, "--out", str(tmp_path / "lut.json"), "--precision", "int8", "--no-progress",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "int8" in proc.stdout
    data = json.loads((tmp_path / "lut.json").read_text())
    assert data["hardware"]["precision"] == "int8" and set(data["entries"]) == {op["key"] for op in manifest["ops"]}
    assert data["hardware"]["fingerprint"] == int8_backend().fingerprint()
    assert data["hardware"]["fingerprint_id"] == int8_backend().fingerprint_id()
    lut = obtain_lut(space, int8_backend(), 1, 10, lut_path=tmp_path / "lut.json", strict=True)
    assert lut.hardware["fingerprint_id"] == int8_backend().fingerprint_id()
    with pytest.raises(LUTError, match="precision=int8"):
        obtain_lut(space, OnnxRuntimeCPU(warmup=1, repeats=2), 1, 10, lut_path=tmp_path / "lut.json", strict=True)
    if AZURE in ort.get_available_providers():  # node placement on an int8 export: counted, in the fingerprint
        proc = run_runner(folder, "--out", str(tmp_path / "azure.json"), "--providers", f"{AZURE},{CPU}",
                          "--repeats", "1", "--no-progress", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        data = json.loads((tmp_path / "azure.json").read_text())
        assert data["meta"]["node_placement"]["fallback_nodes"] > 0
        assert data["hardware"]["fingerprint_id"] == int8_backend(repeats=1, providers=[AZURE, CPU]).fingerprint_id()


def test_runner_refuses_a_precision_mismatch_or_an_inconsistent_int8_manifest(int8_export, tmp_path):
    _, folder, manifest = int8_export
    proc = run_runner(folder, "--out", str(tmp_path / "lut.json"), "--precision", "fp32", "--no-progress",
                      cwd=tmp_path)
    one_error_line(proc, "--precision fp32", "holds int8 models", "quantises nothing")
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    for broken, message in (({**manifest, "version": 1}, "precision int8 needs manifest version 2"),
                            ({k: v for k, v in manifest.items() if k != "quantization"}, "'quantization' must be"),
                            ({**manifest, "precision": "int4"}, "'precision' must be one of"),
                            ({**manifest, "version": 3}, "manifest version 3 is not supported by this runner")):
        (bad / "manifest.json").write_text(json.dumps(broken))
        one_error_line(run_runner(bad, "--out", str(tmp_path / "lut.json"), "--no-progress", cwd=tmp_path), message)
    assert not (tmp_path / "lut.json").exists()


def test_int8_fingerprint_needs_its_recipe():
    with pytest.raises(ValueError, match="needs the quantisation recipe"):
        cpu_fingerprint("onnxruntime-cpu", 1, 1, 0.0, "median", {}, precision="int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        cpu_fingerprint("onnxruntime-cpu", 1, 1, 0.0, "median", {}, precision="fp16")


def test_export_ops_command_int8_records_the_target_providers(tmp_path):
    """``spnas export-ops`` at int8 with a provider list of another device: this build lacks one, the export records
    it (the device's runner checks it there, one error line here)."""
    providers = "hardware.backend.providers=[NoSuchExecutionProvider, CPUExecutionProvider]"
    proc = run("-m", "nas.command", "export-ops", "hardware=cpu_onnx_int8", providers, f"out={tmp_path}/ops",
               "space=tiny", *NARROW, "hardware.backend.calibration_networks=0", "progress=false",
               f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "int8 ops" in proc.stdout and "NoSuchExecutionProvider not in this onnxruntime build" in proc.stdout
    manifest = json.loads((tmp_path / "ops" / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["quantization"] == INT8_RECIPE
    assert [p["name"] for p in manifest["settings"]["providers"]] == ["NoSuchExecutionProvider", CPU]
    assert QDQ <= {node.op_type for node in onnx.load(str(tmp_path / "ops" / manifest["ops"][0]["file"])).graph.node}
    one_error_line(run_runner(tmp_path / "ops", "--out", str(tmp_path / "lut.json"), "--no-progress", cwd=tmp_path),
                   "NoSuchExecutionProvider not in this onnxruntime")


def test_train_export_int8_setting():
    def requested(*overrides: str) -> bool:
        return int8_export_requested(compose_config("train", ["arch=x", *overrides]))

    assert not requested()
    assert requested("hardware=cpu_onnx_int8")
    assert requested("train.export.int8=true")
    assert not requested("hardware=cpu_onnx_int8", "train.export.int8=false")
    assert not requested("hardware=cpu_onnx_int8", "train.export.onnx=false")
    with pytest.raises(ConfigError, match="precision must be fp32 or int8, got 'int4'"):
        requested("hardware.backend.precision=int4")


def test_int8_export_of_a_network_checks_and_scores_it(tmp_path):
    """The fp32 hardware with train.export.int8: the quantised network, calibrated on images, scored in ORT."""
    space = SearchSpace.from_config(MICRO_SPACE)
    net = build_child(space, space.smallest(), 1, 10).eval()
    export_onnx(net, (1, 1, 16, 16), tmp_path / "model.onnx")
    data = DigitsDataModule(image_size=16, limit=200, seed=0, augment=False)
    result = export_int8_and_check(tmp_path / "model.onnx", tmp_path / "model_int8.onnx", data, batch_size=1,
                                   calibration_images=8)
    assert result["int8_qdq_nodes"] > 0 and result["int8_calibration_images"] == 8
    onnx.checker.check_model(onnx.load(str(tmp_path / "model_int8.onnx")), full_check=True)
    assert result["onnx_test_images"] == 30  # the data module's test split (15 % of 200)
    assert 0 <= result["int8_test_acc"] <= 1 and 0 <= result["onnx_test_acc"] <= 1


def test_bad_precision_from_the_shell_fails_before_profiling(tmp_path):
    proc = run("-m", "nas.command", "profile-lut", "hardware.backend.precision=int4", "in_channels=1",
               "num_classes=10", f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run")
    one_error_line(proc, "hardware.backend.precision must be fp32 or int8, got 'int4'")
    assert not list(tmp_path.glob("cache/*.json"))


@pytest.fixture(scope="module")
def int8_runs(tmp_path_factory):
    """profile-lut, search.py and train.py at int8, each the real command line."""
    tmp = tmp_path_factory.mktemp("int8")
    common = [f"paths.cache_dir={tmp}/cache", *NARROW]
    profile = run("-m", "nas.command", "profile-lut", "hardware=cpu_onnx_int8", "in_channels=1", "num_classes=10",
                  "progress=false", *SMALL, *common, f"hydra.run.dir={tmp}/profile")
    assert profile.returncode == 0, profile.stderr[-3000:]
    search = run(str(ROOT / "search.py"), "hardware=cpu_onnx_int8", "trainer.max_epochs=1", *FAST, *common,
                 f"hydra.run.dir={tmp}/run")
    assert search.returncode == 0, search.stderr[-3000:]
    train = run(str(ROOT / "train.py"), "hardware=cpu_onnx_int8", f"arch={tmp}/run/arch.json", "trainer.max_epochs=1",
                *FAST, *common, f"hydra.run.dir={tmp}/train")
    assert train.returncode == 0, train.stderr[-3000:]
    return tmp, profile, search, train


def test_int8_lut_is_profiled_with_calibration_and_cached(int8_runs):
    tmp, profile, search, _ = int8_runs
    cached = list((tmp / "cache").glob("tiny-*-onnxruntime-cpu-int8-*.json"))
    assert len(cached) == 1, list((tmp / "cache").iterdir())
    lut = LatencyLUT.load(cached[0])
    assert lut.hardware["precision"] == "int8" and lut.hardware["fingerprint"]["quantization"]["format"] == "QDQ"
    assert lut.meta["calibration"]["networks"] == 2 and all(e.ms > 0 for e in lut.entries.values())
    assert "precision=int8" in profile.stdout
    assert "Using cached LUT" in search.stdout + search.stderr  # search.py reuses what profile-lut measured
    # an fp32 backend does not accept the int8 LUT as its own
    with pytest.raises(LUTError, match="precision=int8"):
        lut.check_hardware(OnnxRuntimeCPU().fingerprint_id(), strict=True)


def test_int8_search_prices_with_the_int8_lut(int8_runs):
    tmp = int8_runs[0]
    arch = json.loads((tmp / "run" / "arch.json").read_text())
    assert arch["meta"]["predicted_latency_ms"] > 0
    hardware = json.loads((tmp / "run" / "lut.json").read_text())["hardware"]
    int8 = build_backend(compose_config("search", ["hardware=cpu_onnx_int8", *SMALL]).hardware.backend)
    assert hardware["precision"] == "int8" and hardware["fingerprint_id"] == int8.fingerprint_id()


def test_int8_train_exports_checks_and_reports_model_int8(int8_runs):
    tmp, _, _, train = int8_runs
    summary = json.loads((tmp / "train" / "train_summary.json").read_text())
    model = onnx.load(str(tmp / "train" / "model_int8.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert QDQ <= {node.op_type for node in model.graph.node}
    assert summary["int8_onnx"].endswith("model_int8.onnx") and summary["int8_qdq_nodes"] > 0
    assert 0 <= summary["int8_test_acc"] <= 1 and summary["onnx_test_images"] == 60
    assert summary["onnx_test_acc"] == pytest.approx(summary["test_acc"], abs=1e-6)  # ORT fp32 == torch
    assert summary["int8_acc_delta"] == pytest.approx(summary["int8_test_acc"] - summary["onnx_test_acc"])
    assert summary["latency_precision"] == "int8" and summary["int8_measured_latency_ms"] > 0
    assert summary["int8_predicted_latency_ms"] == summary["predicted_latency_ms"] > 0
    assert summary["int8_latency_error_pct"] == pytest.approx(
        100 * (summary["int8_predicted_latency_ms"] / summary["int8_measured_latency_ms"] - 1))
    assert "int8: " in train.stdout and "int8 latency: measured" in train.stdout


def test_bad_precision_in_train_fails_before_training(tmp_path):
    proc = run(str(ROOT / "train.py"), "hardware.backend.precision=int4", "arch=none.json", "progress=false",
               f"hydra.run.dir={tmp_path}/train", f"paths.cache_dir={tmp_path}/cache")
    one_error_line(proc, "precision must be fp32 or int8")
    assert not (tmp_path / "train" / "checkpoints").exists()
