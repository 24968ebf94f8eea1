"""Device-side profiling: export ops -> runner (onnxruntime + numpy only) -> LUT -> the search reads it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import onnx
import pytest

from nas.cost.backends import MacsProxy, OnnxRuntimeCPU
from nas.cost.device_export import RUNNER_FILES, export_space_ops
from nas.cost.lut import LatencyLUT
from nas.cost.profiler import fit_network_calibration, obtain_lut
from nas.cost.runtime_model import RuntimeModel
from nas.cost.signatures import network_op_keys, required_ops
from nas.errors import ConfigError, LUTError
from nas.space.search_space import SearchSpace
from tests.conftest import MICRO_SPACE

# run the runner where neither torch nor this framework can be imported (as on a bare device)
BARE = ("import runpy, sys; sys.modules['torch'] = None; sys.modules['nas'] = None; sys.modules['models'] = None; "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def backend(**overrides) -> OnnxRuntimeCPU:
    settings = {"warmup": 1, "repeats": 4, "cache_flush_mb": 0.5, "calibration_networks": 3, "statistic": "p25",
                "sessions": 2}
    return OnnxRuntimeCPU(**{**settings, **overrides})


def run_runner(folder, *args, cwd, runner=None):
    """Run the runner as a bare device would; by default a copy of it (and its measurement core) in ``cwd``."""
    if runner is None:
        for source in RUNNER_FILES:
            shutil.copy(source, cwd / source.name)
        runner = cwd / "device_runner.py"
    return subprocess.run([sys.executable, "-c", BARE, str(runner), str(folder), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    space = SearchSpace.from_config(MICRO_SPACE)
    folder = tmp_path_factory.mktemp("device") / "ops_micro"
    manifest = export_space_ops(space, backend(), 1, 10, folder, rounds=2, progress=False)
    return space, folder, json.loads(manifest.read_text())


def test_round_trip_export_runner_lut_search(export, tmp_path):
    space, folder, manifest = export
    ops = required_ops(space, 1, 10)
    assert [op["key"] for op in manifest["ops"]] == list(ops)
    assert len(manifest["networks"]) == 3 and manifest["settings"]["statistic"] == "p25"
    assert manifest["settings"]["sessions"] == 2
    device = tmp_path / "device"
    device.mkdir()
    shutil.copytree(folder, device / "ops_micro")
    proc = run_runner(device / "ops_micro", "--out", "lut.json", "--no-progress", cwd=device)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((device / "lut.json").read_text())
    # 4 timed runs in each of the manifest's 2 sessions per op
    assert set(data["entries"]) == set(ops) and all(e["ms"] > 0 and e["runs"] == 8 for e in data["entries"].values())
    assert data["hardware"]["sessions"] == 2
    # the calibration is the framework's fit over the calibration networks, whose sums the runner recorded
    cal = data["meta"]["calibration"]
    assert cal["networks"] == 3 and len(cal["op_sum_ms"]) == 3
    for keys, op_sum in zip((n["ops"] for n in manifest["networks"]), cal["op_sum_ms"]):
        assert op_sum == pytest.approx(sum(data["entries"][k]["ms"] for k in keys), abs=1e-5)
    assert cal["kept_ops"] == [sum(1 for k in n["ops"] if k.startswith("mbconv_")) for n in manifest["networks"]]
    # each network names its ops' stages (cost groups); the runner records the per-stage sums it fitted on
    assert all(len(n["groups"]) == len(n["ops"]) for n in manifest["networks"])
    assert [sum(row) for row in cal["stage_op_sum_ms"]] == pytest.approx(cal["op_sum_ms"], abs=1e-5)
    fitted = fit_network_calibration(cal["op_sum_ms"], cal["measured_ms"], cal["kept_ops"], cal["se_ops"],
                                     cal["stage_op_sum_ms"])
    assert data["version"] == 3 and data["stage_scales"] == []  # 3 networks: too few for stage scales
    assert data["stage_scales"] == pytest.approx(fitted.pop("stage_scales"), abs=1e-9)
    assert {k: data[k] for k in fitted} == pytest.approx(fitted, abs=1e-9)
    # same machine, same settings: the runner's fingerprint is the framework's, so even strict mode accepts it
    lut = obtain_lut(space, backend(), 1, 10, lut_path=device / "lut.json", strict=True)
    assert lut.hardware["fingerprint_id"] == backend().fingerprint_id()
    model = RuntimeModel(space, lut, 1, 10)
    for arch in (space.largest(), space.smallest()):
        op_sum = sum(data["entries"][k]["ms"] for k in network_op_keys(space, arch, 1, 10))
        kept = [c for c in arch.layers if not c.is_skip]
        expected = (data["scale"] * op_sum + data["per_op_ms"] * len(kept)
                    + data["per_se_op_ms"] * sum(c.se_ratio > 0 for c in kept) + data["overhead_ms"])
        assert model.predict(arch) == pytest.approx(expected, rel=1e-6)


def test_fp32_export_keeps_the_manifest_and_fingerprint_of_before_precisions(export, tmp_path):
    """An fp32 export is a version-1 manifest without precision fields, its files plain fp32 ONNX, and its LUT's
    fingerprint the fp32 backend's (no precision); ``--precision int8`` on it is one error line."""
    _, folder, manifest = export
    assert manifest["version"] == 1 and not {"precision", "quantization"} & set(manifest)
    assert list(manifest) == ["format", "version", "space", "in_channels", "num_classes", "settings", "ops",
                              "networks"]
    model = onnx.load(str(folder / manifest["ops"][0]["file"]))
    assert not {"QuantizeLinear", "DequantizeLinear"} & {node.op_type for node in model.graph.node}
    proc = run_runner(folder, "--out", str(tmp_path / "lut.json"), "--repeats", "1", "--precision", "fp32",
                      "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    hardware = json.loads((tmp_path / "lut.json").read_text())["hardware"]
    assert "precision" not in hardware and "precision" not in hardware["fingerprint"]
    assert hardware["fingerprint"] == backend().fingerprint()
    proc = run_runner(folder, "--out", str(tmp_path / "lut8.json"), "--precision", "int8", "--no-progress",
                      cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "holds fp32 models" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "lut8.json").exists()


def test_lut_from_other_settings_warns_or_fails_when_strict(export, tmp_path):
    space, folder, _ = export
    proc = run_runner(folder, "--out", str(tmp_path / "lut2.json"), "--statistic", "median", "--repeats", "2",
                      "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with pytest.warns(UserWarning, match=r"LUT fingerprint \w+ .*does not match the selected hardware"):
        obtain_lut(space, backend(), 1, 10, lut_path=tmp_path / "lut2.json")
    with pytest.raises(LUTError, match="does not match the selected hardware"):
        obtain_lut(space, backend(), 1, 10, lut_path=tmp_path / "lut2.json", strict=True)


def test_corrupt_exports_fail_clearly(export, tmp_path):
    _, folder, manifest = export
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "manifest.json").write_text('{"format": "spnas-op-export", "version": 1, "ops": [')
    proc = run_runner(bad, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2 and "error: " in proc.stderr and "corrupt manifest, not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr

    (bad / "manifest.json").write_text(json.dumps(manifest))
    victim = bad / manifest["ops"][2]["file"]
    victim.write_bytes(victim.read_bytes()[:-7] + b"garbage")
    proc = run_runner(bad, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2 and "is corrupt (SHA-256" in proc.stderr and manifest["ops"][2]["file"] in proc.stderr

    shutil.copy(folder / manifest["ops"][2]["file"], victim)
    broken = {**manifest, "networks": [{**manifest["networks"][0], "groups": [-1]}, *manifest["networks"][1:]]}
    (bad / "manifest.json").write_text(json.dumps(broken))
    proc = run_runner(bad, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2 and "networks[0].groups must list one stage index" in proc.stderr

    for field in ("repeats", "sessions"):
        broken = {**manifest, "settings": {**manifest["settings"], field: 0}}
        (bad / "manifest.json").write_text(json.dumps(broken))
        proc = run_runner(bad, "--no-progress", cwd=tmp_path)
        assert proc.returncode == 2 and f"settings.{field} must be an integer >= 1" in proc.stderr

    proc = run_runner(tmp_path / "nowhere", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "lut.json").exists()


def test_export_refuses_other_backends_and_foreign_folders(micro_space, tmp_path):
    with pytest.raises(ConfigError, match="select hardware=cpu_onnx"):
        export_space_ops(micro_space, MacsProxy(), 1, 10, tmp_path / "x", progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no op export"):
        export_space_ops(micro_space, backend(), 1, 10, tmp_path / "busy", progress=False)


def test_device_lut_loads_like_any_lut(export, tmp_path):
    """The runner writes the framework's LUT format; a wrong overhead value is caught on load."""
    _, folder, _ = export
    proc = run_runner(folder, "--out", str(tmp_path / "lut.json"), "--repeats", "2", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "lut.json").read_text())
    assert LatencyLUT.from_dict(data).overhead_ms == data["overhead_ms"]
    data["overhead_ms"] = "fast"
    with pytest.raises(LUTError, match="'overhead_ms' must be a finite number"):
        LatencyLUT.from_dict(data, source="lut.json")


def test_manifest_without_sessions_measures_one_session(export, tmp_path):
    """Exports written before ``sessions`` existed still run: one session per file."""
    _, folder, manifest = export
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    settings = {k: v for k, v in manifest["settings"].items() if k != "sessions"}
    (old / "manifest.json").write_text(json.dumps({**manifest, "settings": settings}))
    proc = run_runner(old, "--out", str(tmp_path / "lut.json"), "--repeats", "3", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "lut.json").read_text())
    assert data["hardware"]["sessions"] == 1 and all(e["runs"] == 3 for e in data["entries"].values())


def test_exported_folder_runs_as_shipped(export, tmp_path):
    """The export holds the runner and the measurement core it imports (identical to the framework's); run in place
    from elsewhere, with neither torch nor the framework importable, it writes a LUT. Without the core it is one
    ``error:`` line and exit 2."""
    _, folder, _ = export
    for source in RUNNER_FILES:
        assert (folder / source.name).read_bytes() == source.read_bytes()
    shipped = tmp_path / "shipped"
    shutil.copytree(folder, shipped)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_runner(shipped, "--out", "lut.json", "--repeats", "2", "--no-progress", cwd=elsewhere,
                      runner=shipped / "device_runner.py")
    assert proc.returncode == 0, proc.stderr
    assert LatencyLUT.load(elsewhere / "lut.json").entries
    assert sorted(p.name for p in elsewhere.iterdir()) == ["lut.json"]
    (shipped / "measurement_core.py").unlink()
    proc = run_runner(shipped, "--out", "lut2.json", "--no-progress", cwd=elsewhere,
                      runner=shipped / "device_runner.py")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "measurement_core.py is missing" in errors[0]
    assert "Traceback" not in proc.stderr and not (elsewhere / "lut2.json").exists()


def test_shipped_runner_uses_its_own_measurement_core_where_spnas_is_installed(tmp_path):
    """On a machine where spnas is importable (this one), the shipped runner must still measure, fit and price with
    the measurement core shipped beside it (the export's), not with the installed package's."""
    for source in RUNNER_FILES:
        shutil.copy(source, tmp_path / source.name)
    core = tmp_path / "measurement_core.py"
    core.write_text(core.read_text() + '\nraise SystemExit("the shipped measurement core was imported")\n')
    proc = subprocess.run([sys.executable, str(tmp_path / "device_runner.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert "the shipped measurement core was imported" in proc.stderr, proc.stdout + proc.stderr
