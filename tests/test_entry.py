"""End-to-end: the real `search.py` / `train.py` command lines, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nas.search.checkpoint import load_checkpoint
from nas.search.data import DigitsDataModule
from nas.space.architecture import Architecture
from nas.space.networks import build_child
from nas.space.timm_interop import build_timm_model
from tests.conftest import ROOT, load_space

FAST = ["progress=false", "data.limit=400", "hardware.backend.warmup=1", "hardware.backend.repeats=3",
        "hardware.backend.calibration_networks=3"]


def run(script: str, *overrides: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def search_run(tmp_path_factory, onnx_lut_cache):
    tmp = tmp_path_factory.mktemp("search")
    (tmp / "cache").symlink_to(onnx_lut_cache, target_is_directory=True)  # the suite's shared LUT cache
    proc = run("search.py", "trainer.max_epochs=1", f"hydra.run.dir={tmp}/run", f"paths.cache_dir={tmp}/cache",
               *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc


def test_search_writes_a_valid_architecture_that_reloads_and_builds(search_run):
    tmp, proc = search_run
    run_dir = tmp / "run"
    space = load_space("tiny")
    arch = Architecture.load(run_dir / "arch.json", space)
    data = json.loads((run_dir / "arch.json").read_text())
    assert data["meta"]["predicted_latency_ms"] > 0 and data["meta"]["hardware"] == "onnxruntime-cpu"
    net = build_child(space, arch, in_channels=1, num_classes=10)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    timm_net = build_timm_model(data["timm"]["arch_def"], num_classes=10, in_chans=1,
                                **{k: v for k, v in data["timm"].items() if k != "arch_def"})
    assert sum(p.numel() for p in timm_net.parameters()) == sum(p.numel() for p in net.parameters())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["architecture"] == arch.keys
    assert (run_dir / "arch_timm.txt").read_text().strip() == summary["timm"]
    assert "predicted latency" in proc.stdout and "timm: " in proc.stdout
    # the run directory holds the LUT used, a resumable checkpoint and TensorBoard events
    assert json.loads((run_dir / "lut.json").read_text())["format"] == "spnas-lut"
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["spnas"]["architecture"]["layers"] == data["layers"]
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


def test_second_search_reuses_the_cached_lut(search_run):
    tmp, _ = search_run
    cached = list((tmp / "cache").glob("tiny-*.json"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    proc = run("search.py", "trainer.max_epochs=1", "trainer.limit_train_batches=2", f"hydra.run.dir={tmp}/run2",
               f"paths.cache_dir={tmp}/cache", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Using cached LUT" in proc.stdout + proc.stderr
    assert cached[0].stat().st_mtime_ns == mtime


def test_train_py_trains_the_derived_architecture(search_run):
    tmp, _ = search_run
    proc = run("train.py", f"arch={tmp}/run/arch.json", "trainer.max_epochs=1", f"hydra.run.dir={tmp}/train",
               f"paths.cache_dir={tmp}/cache", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp / "train" / "train_summary.json").read_text())
    assert summary["parameters"] > 0
    assert (tmp / "train" / "checkpoints" / "last.ckpt").is_file()
    # ONNX export: passes the checker and computes what the trained torch network computes
    import numpy as np
    import onnx
    import onnxruntime as ort

    onnx_path = tmp / "train" / "model.onnx"
    onnx.checker.check_model(onnx.load(str(onnx_path)), full_check=True)
    space = load_space("tiny")
    net = build_child(space, Architecture.load(tmp / "run" / "arch.json", space), 1, 10)
    state = load_checkpoint(tmp / "train" / "checkpoints" / "last.ckpt")["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    # the reported test accuracy is the trained network's on the test split (same data settings as FAST)
    data = DigitsDataModule(image_size=32, limit=400, seed=0)
    data.setup("test")
    images, labels = data.test_set.tensors
    with torch.no_grad():
        correct = int((net.eval()(images).argmax(1) == labels).sum())
    assert summary["test_acc"] == pytest.approx(correct / len(labels), abs=1e-6)
    assert summary["parameters"] == sum(p.numel() for p in net.parameters())
    x = torch.randn(3, 1, 32, 32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    single = [session.run(None, {session.get_inputs()[0].name: x[i:i + 1].numpy()})[0] for i in range(3)]
    with torch.no_grad():
        np.testing.assert_allclose(np.concatenate(single), net.eval()(x).numpy(), rtol=1e-4, atol=1e-5)
    assert summary["onnx_max_abs_diff"] <= 1e-4
    # latency on the target backend, against the runtime model's prediction from the search's LUT
    assert summary["measured_latency_ms"] > 0 and summary["predicted_latency_ms"] > 0
    # the drift since the LUT: its 3 calibration networks measured again with the network (nas.cost.drift)
    drift = summary["drift"]
    assert drift["references"] == 3 and drift["low"] <= drift["factor"] <= drift["high"]
    low, high = summary["drift_range_ms"]
    assert low <= summary["drift_predicted_ms"] <= high
    assert summary["drift_predicted_ms"] == pytest.approx(summary["predicted_latency_ms"] * drift["factor"])
    assert summary["lut"].startswith(str(tmp / "cache"))
    assert "predicted" in proc.stdout and "measured" in proc.stdout


@pytest.mark.parametrize("overrides, message", [
    (["solver.lambda_=-1"], "error: solver.lambda_ must be a finite number >= 0"),
    (["hardware.lut_path=/nonexistent/lut.json"], "error: LUT file /nonexistent/lut.json does not exist"),
    (["space=nope"], "Could not find 'space/nope'"),
    (["solver.optimizer._target_=torch.optim.Adamx"], "error: solver.optimizer._target_='torch.optim.Adamx' cannot"),
])
def test_bad_overrides_fail_with_a_clear_message(tmp_path, overrides, message):
    proc = run("search.py", *overrides, f"hydra.run.dir={tmp_path}/run", f"paths.cache_dir={tmp_path}/cache",
               "trainer.max_epochs=1", *FAST)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_csv_logger_and_no_logger(tmp_path, onnx_lut_cache):
    """logger=csv writes metrics.csv instead of TensorBoard events; ~logger (no logger) builds none."""
    from nas.cli import compose_config
    from nas.search.pipeline import build_logger

    proc = run("search.py", "trainer.max_epochs=1", "logger=csv", f"hydra.run.dir={tmp_path}/csv",
               f"paths.cache_dir={onnx_lut_cache}", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = (tmp_path / "csv" / "csv" / "metrics.csv").read_text()
    assert "val/acc" in metrics.splitlines()[0] and len(metrics.splitlines()) > 1
    assert not (tmp_path / "csv" / "tb").exists() and (tmp_path / "csv" / "arch.json").is_file()
    assert build_logger(compose_config("search", ["~logger"])) is False


def test_one_child_training_function_with_the_recipe_group(tmp_path):
    """``train_child`` is the package's one child training (train.py, HyperPower, the benchmark scripts); the
    scripts read their recipe from ``recipe=default`` instead of writing SGD settings by hand."""
    import re

    import pytorch_lightning as pl

    from nas.errors import ConfigError
    from nas.search.training import load_recipe, recipe_arguments, train_child

    recipe = load_recipe("default")
    args = recipe_arguments(recipe.train)
    assert args["optimizer"].func is torch.optim.SGD and args["optimizer"].keywords["lr"] == 0.1
    assert args["label_smoothing"] == 0.1 and recipe.trainer.max_epochs == 20
    assert load_recipe("fashion_mnist_long").trainer.max_epochs == 40
    with pytest.raises(ConfigError):
        load_recipe("no_such_recipe")

    space = load_space("tiny")
    net = build_child(space, space.smallest(), 1, 10).eval()  # left in eval mode: train_child trains it anyway
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    datamodule = DigitsDataModule(batch_size=32, image_size=space.resolution, limit=120, num_workers=0)
    out = train_child(net, datamodule, **args, trainer=trainer)
    assert set(out) == {"val_acc", "test_acc", "epochs", "parameters"}
    assert 0.0 <= out["val_acc"] <= 1.0 and 0.0 <= out["test_acc"] <= 1.0 and out["epochs"] == 1
    assert out["parameters"] == sum(p.numel() for p in net.parameters())

    # a retraining killed after its last epoch's checkpoint resumes to a validation accuracy too (the fit has
    # nothing left to run, so no validation of its own)
    from pytorch_lightning.callbacks import ModelCheckpoint

    def trainer_with_checkpoints() -> pl.Trainer:
        return pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=tmp_path,
                          callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])

    train_child(build_child(space, space.smallest(), 1, 10), datamodule, **args, trainer=trainer_with_checkpoints(),
                test=False)
    resumed = train_child(build_child(space, space.smallest(), 1, 10), datamodule, **args, test=False,
                          trainer=trainer_with_checkpoints(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed["val_acc"] is not None and 0.0 <= resumed["val_acc"] <= 1.0 and resumed["test_acc"] is None

    builders = [str(p.relative_to(ROOT)) for folder in ("nas", "scripts") for p in (ROOT / folder).rglob("*.py")
                if re.search(r"ChildTrainingModule\(", p.read_text())]
    assert builders == ["nas/search/training.py"], builders
    for script in ("compare_solvers.py", "supernet_truth.py"):
        assert "torch.optim.SGD" not in (ROOT / "scripts" / script).read_text()
    for module in ("solver_comparison.py", "weight_sharing_truth.py"):  # the logic of those two scripts
        text = (ROOT / "nas" / "benchmarks" / module).read_text()
        assert "torch.optim.SGD" not in text and "retrain_from_scratch" in text


def test_the_run_shell_seeds_times_and_writes_one_summary_file(tmp_path):
    """:func:`nas.run_shell.run_task`: seeding, timing and the summary file, the same for every command."""
    from omegaconf import OmegaConf

    from nas.run_shell import Task, run_task

    def task(cfg):
        return {"draw": float(torch.rand(1)), "loss": float("nan"), "output_dir": cfg.get("elsewhere")}

    cfg = OmegaConf.create({"seed": 3, "paths": {"output_dir": str(tmp_path / "run")}, "elsewhere": None})
    first = run_task(Task(task, summary="s.json"), cfg)
    again = run_task(Task(task, summary="again.json"), cfg)
    assert first["draw"] == again["draw"]  # seeded before the task ran
    written = json.loads((tmp_path / "run" / "s.json").read_text())  # strict JSON: NaN became null
    assert written["loss"] is None and written["wall_time_s"] >= 0
    assert written["run"]["seed"] == 3 and written["run"]["format"] == "spnas-run"
    assert written["run"]["command"] and written["run"]["started_utc"].endswith("+00:00")

    kept = run_task(Task(lambda c: {"wall_time_s": 123.0}, summary="kept.json"), cfg)  # e.g. a resumed search's
    assert kept["wall_time_s"] == 123.0
    assert json.loads((tmp_path / "run" / "kept.json").read_text())["wall_time_s"] == 123
    moved = OmegaConf.merge(cfg, {"elsewhere": str(tmp_path / "resumed")})  # a run continuing another's folder
    run_task(Task(task, summary="s.json"), moved)
    assert (tmp_path / "resumed" / "s.json").is_file()
    assert run_task(Task(lambda c: {"x": 1}), cfg) == {"x": 1} and not (tmp_path / "run" / "None").exists()


def test_every_hydra_command_runs_in_the_run_shell():
    """Each ``spnas`` command with a Hydra config is built by :func:`nas.cli.hydra_command` around a Task; the
    commands that leave a summary name its file."""
    import importlib

    from nas.command import COMMANDS
    from nas.run_shell import Task

    summaries = {}
    for name, (module, function, config_name, _) in COMMANDS.items():
        if config_name is None:
            continue
        app = getattr(importlib.import_module(f"nas.entries.{module}"), function)
        assert isinstance(getattr(app, "task", None), Task), name
        summaries[name] = app.task.summary
    assert summaries["search"] == "summary.json" and summaries["train"] == "train_summary.json"
    assert summaries["hyperpower"] == "hyperpower.json" and summaries["latency"] == "latency.json"
    assert summaries["gpu-check"] == "gpu_check.json"
