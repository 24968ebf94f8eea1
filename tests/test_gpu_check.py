"""``spnas gpu-check`` on a machine without a GPU: its refusal, its step runner, its report and table.

The check itself needs a CUDA GPU; these tests run its machinery on the CPU. Where a part really needs the GPU it
is replaced, and only there: the GPU gate (:func:`require_cuda`) and the machine info (GPU name, memory) in the
end-to-end test, and the search's ``trainer=gpu`` by ``trainer=cpu``. The child commands, the ONNX Runtime and
NVML availability checks and the failure of ``hardware=cuda`` without a GPU are the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from nas.cli import compose_config
from nas.entries import gpu_check as gc
from tests.conftest import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_the_command_is_one_error_line_and_writes_nothing(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "nas.command", "gpu-check"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: no CUDA GPU is visible: "), proc.stderr
    assert "torch.cuda.is_available() is False" in proc.stderr and "spnas gpu-check" in proc.stderr
    assert not proc.stdout and not list(tmp_path.iterdir())  # refused before Hydra made a run folder


def test_the_default_steps_fit_in_ten_minutes():
    cfg = compose_config("gpu_check")
    steps = gc.check_settings(cfg)
    assert steps == list(gc.STEPS)
    budgets = sum(float(cfg[name].budget_s) for name in steps)
    children = 3  # cuda_runtime_model, ort_cuda (two commands, one budget), gpu_search: each may need its grace
    assert budgets <= 540 and budgets + children * float(cfg.grace_s) + 30 < 600, budgets


def test_the_default_steps_hand_their_commands_valid_command_lines(tmp_path, monkeypatch):
    """Each child command line of the default steps composes as its command will compose it (the commands need a
    GPU to run: here they are recorded, not run, and the build is said to have the CUDA provider)."""
    import onnxruntime

    from nas.cli import check_command_line, entry_command

    recorded = []

    def record(argv, log_path, budget_s, grace_s=10.0):
        recorded.append(list(argv))
        assert 0 < budget_s <= 150 and grace_s == 10

    monkeypatch.setattr(gc, "run_child", record)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [gc.CUDA_PROVIDER, "CPUExecutionProvider"])
    cfg = compose_config("gpu_check", [f"paths.output_dir={tmp_path}"])
    for name in ("cuda_runtime_model", "ort_cuda", "gpu_search"):
        with pytest.raises(gc.StepFailed, match="without writing"):  # nothing ran, so no summary
            gc.STEPS[name](cfg, tmp_path, time.monotonic() + float(cfg[name].budget_s))
    configs = {"validate_runtime_model": "validate", "profile_lut": "profile", "search": "search"}
    composed = []
    for argv in recorded:
        command = next(c for c in configs if argv[:len(entry_command(c))] == entry_command(c))
        check_command_line(configs[command], argv[len(entry_command(command)):])
        composed.append(command)
    assert composed == ["validate_runtime_model", "profile_lut", "search"]  # no LUT: the ORT step stopped there
    assert "hardware=cuda" in recorded[0] and "trainer=gpu" in recorded[2]
    recorded.clear()
    (tmp_path / "ort_cuda").mkdir()
    (tmp_path / "ort_cuda" / "lut.json").write_text('{"meta": {}}')
    with pytest.raises(gc.StepFailed, match="without writing validation.json"):
        gc.ort_cuda(cfg, tmp_path, time.monotonic() + 150)
    for argv, config in zip(recorded, ("profile", "validate")):
        check_command_line(config, argv[len(entry_command("profile_lut")):])
    assert len(recorded) == 2
    assert "hardware.backend.providers=[CUDAExecutionProvider,CPUExecutionProvider]" in recorded[0]


@pytest.mark.parametrize("steps", ["[nope]", "[nvml_power,nvml_power]", "[]"])
def test_unknown_or_repeated_steps_are_a_clear_error(steps):
    with pytest.raises(gc.ConfigError, match="steps must name each of these at most once: cuda_runtime_model"):
        gc.check_settings(compose_config("gpu_check", [f"steps={steps}"]))
    with pytest.raises(gc.ConfigError, match="gpu_search.budget_s must be a positive number"):
        gc.check_settings(compose_config("gpu_check", ["gpu_search.budget_s=0"]))


def test_each_step_is_its_row_whatever_the_others_do(tmp_path):
    """:func:`run_step` with plain functions in place of the steps (the runner needs no GPU): an exception with a
    multi-line message, a missing package and a result each become their own row."""
    def broken(deadline):
        raise RuntimeError("CUDA error: an illegal memory access\nCompile with TORCH_USE_CUDA_DSA")

    def missing(deadline):
        raise gc.Unavailable("pynvml is not installed")

    def fine(deadline):
        assert deadline > time.monotonic()
        return {"summary": "3 W", "power_w": {"smallest": 3.0}, "tau": float("nan")}

    rows = [gc.run_step("a", 5, broken), gc.run_step("b", 5, missing), gc.run_step("c", 5, fine),
            gc.run_step("d", 5, lambda d: (_ for _ in ()).throw(gc.StepFailed("ran past its budget")))]
    assert [r["status"] for r in rows] == ["failed", "unavailable", "ok", "failed"]
    assert rows[0]["reason"] == "RuntimeError: CUDA error: an illegal memory access; Compile with TORCH_USE_CUDA_DSA"
    assert rows[1]["reason"] == "pynvml is not installed" and rows[1]["result"] is None
    assert rows[2]["summary"] == "3 W" and rows[2]["result"]["power_w"] == {"smallest": 3.0}
    assert rows[3]["reason"] == "ran past its budget" and all(r["budget_s"] == 5 for r in rows)

    table = gc.format_table(rows).splitlines()
    assert len(table) == 5 and table[0].split() == ["step", "time", "(of", "budget)", "result"]
    assert table[1].split()[0] == "a" and "failed: RuntimeError: CUDA error" in table[1]
    assert table[2].endswith("unavailable: pynvml is not installed") and table[3].endswith("ok: 3 W")

    path = gc.write_report(tmp_path / "run" / "gpu_check.json", {"steps": rows})
    assert json.loads(path.read_text())["steps"][2]["result"]["tau"] is None  # strict JSON: NaN became null
    assert [p.name for p in path.parent.iterdir()] == ["gpu_check.json"]  # atomic: no temporary file left


def test_a_child_past_its_budget_is_stopped(tmp_path):
    log = tmp_path / "step.log"
    start = time.monotonic()
    with pytest.raises(gc.StepFailed, match=r"^ran past its budget: stopped after 2 s \(see step.log\)$"):
        gc.run_child([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], log,
                     budget_s=2, grace_s=2)
    assert time.monotonic() - start < 20
    gc.run_child([sys.executable, "-c", "print('fine')"], log, budget_s=60)
    with pytest.raises(gc.StepFailed, match=r"^bad value; set x=1 \(exit status 2; see step.log\)$"):
        gc.run_child([sys.executable, "-c", "import sys; print('error: bad value; set x=1', file=sys.stderr); "
                                            "sys.exit(2)"], log, budget_s=60)
    text = log.read_text()
    assert "started" in text and "fine" in text and text.count("$ ") == 3


def test_without_the_cuda_provider_or_nvml_the_steps_are_unavailable(tmp_path):
    import onnxruntime

    cfg = compose_config("gpu_check", [f"paths.output_dir={tmp_path}"])
    if gc.CUDA_PROVIDER not in onnxruntime.get_available_providers():
        with pytest.raises(gc.Unavailable, match=r"^onnxruntime build lacks CUDAExecutionProvider \(pip install "
                                                 r"onnxruntime-gpu\)$"):
            gc.ort_cuda(cfg, tmp_path, time.monotonic() + 60)
    try:
        import pynvml  # noqa: F401
    except ImportError:
        with pytest.raises(gc.Unavailable, match=r"pip install nvidia-ml-py"):
            gc.nvml_power(cfg, tmp_path, time.monotonic() + 60)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the cuda step must fail for want of a GPU here")
def test_the_check_end_to_end_one_failure_does_not_hide_the_others(tmp_path, monkeypatch, capsys):
    """The whole check with its real child commands: ``hardware=cuda`` fails without a GPU (a real failure); the
    ONNX Runtime step profiles and validates (on the CPU provider here: the build is said to have the CUDA one);
    the search runs to its end (on the CPU here, ``trainer=cpu``), where the check reads Lightning's log and
    refuses to call a search that did not use the GPU a GPU search; NVML is missing here, or finds no GPU. Faked,
    as they need a GPU: the GPU gate, the GPU's name and memory, and the CUDA provider in onnxruntime's list."""
    import onnxruntime

    monkeypatch.setattr(gc, "require_cuda", lambda: None)
    monkeypatch.setattr(gc, "machine_info", lambda: {"gpus": [{"index": 0, "name": "Fake GPU", "capability": "9.0",
                                                               "memory_gib": 80.0}], "driver": None})
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [gc.CUDA_PROVIDER, "CPUExecutionProvider"])
    fast = ["'hardware.backend.calibration_networks=3'", "'hardware.backend.warmup=1'", "'hardware.backend.repeats=3'"]
    cfg = compose_config("gpu_check", [
        f"paths.output_dir={tmp_path}/run", f"paths.cache_dir={tmp_path}/cache",
        "cuda_runtime_model.overrides=['hardware=cuda','space=tiny','n=2']",
        f"ort_cuda.overrides=['hardware=cpu_onnx','hardware.backend.providers=[CPUExecutionProvider]',"
        f"'hardware.backend.sessions=1','space=tiny',{','.join(fast)}]", "ort_cuda.validate=['n=2','named=[]']",
        "gpu_search.overrides=['trainer=cpu','trainer.max_epochs=1','trainer.limit_train_batches=2',"
        "'trainer.limit_val_batches=1','hardware=macs_proxy','data.limit=200','logger=csv']",
    ])
    report = gc.gpu_check(cfg)
    rows = {r["step"]: r for r in report["steps"]}
    assert list(rows) == list(gc.STEPS)
    cuda = rows["cuda_runtime_model"]
    assert cuda["status"] == "failed" and cuda["reason"].startswith("hardware=cuda needs a CUDA GPU"), cuda
    assert cuda["reason"].endswith("(exit status 2; see cuda_runtime_model.log)")
    ort = rows["ort_cuda"]
    assert ort["status"] == "ok", ort
    assert ort["result"]["mode"] == "lut" and ort["result"]["n"] == 2 and ort["result"]["space"] == "tiny"
    assert ort["summary"].startswith("calibrated MAPE ") and "floor" in ort["summary"]
    assert (tmp_path / "run" / "ort_cuda" / "lut.json").is_file()
    search = rows["gpu_search"]
    assert search["status"] == "failed", search
    assert search["reason"].startswith("Lightning ran the search without the GPU"), search
    assert (tmp_path / "run" / "gpu_search" / "arch.json").is_file()  # the search itself ran to its end
    assert rows["nvml_power"]["status"] == "unavailable", rows["nvml_power"]
    assert report["complete"] and (report["ok"], report["failed"], report["unavailable"]) == (1, 2, 1)

    written = json.loads((tmp_path / "run" / "gpu_check.json").read_text())  # the last per-step write
    assert written["format"] == "spnas-gpu-check" and len(written["steps"]) == 4
    assert written["machine"]["gpus"][0]["name"] == "Fake GPU"
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("GPU 0: Fake GPU (9.0, 80.0 GiB); driver None")
    assert [line.split()[0] for line in out[-6:-1]] == ["step", *gc.STEPS]  # the table, one line per step
    assert out[-1].startswith("1 ok, 2 failed, 1 unavailable; written to")
    with pytest.raises(SystemExit) as exit_info:  # the command's exit status: a step failed
        gc.TASK.returns(report)
    assert exit_info.value.code == 1
    assert gc.TASK.returns({**report, "failed": 0}) is None
