"""Scaling out: DDP over 2 CPU processes (gloo) matches one process with the same global batch and seed."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nas.cli import CONFIG_DIR
from nas.entries.hydra_apps import SEARCH
from nas.errors import ConfigError
from nas.run_shell import run_task
from nas.search.checkpoint import load_checkpoint
from nas.search.global_batchnorm import GlobalBatchNorm2d, ProcessSyncBatchNorm
from nas.search.preflight import check_trainer_config
from tests.test_entry import run

COMMON = ["progress=false", "hardware=macs_proxy", "trainer.max_epochs=1", "data.limit=400",
          "solver.subset_dropout.epochs=0", "solver.lambda_=1.0", "trainer.precision=64-true"]


def thresholds(run_dir) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    return {k: v for k, v in state.items() if k.rsplit(".", 1)[-1].startswith("t_")}


def test_ddp_two_cpu_processes_agree_with_each_other_and_with_one_process(tmp_path):
    # Both processes of the DDP run need a core each: this is the one test not pinned to a single core.
    # In float64 (precision=64-true) 2 processes x 16 samples with BatchNorm over the global batch compute what one
    # process with 32 samples computes up to float64 rounding (~1e-16 relative), which stays far below any
    # threshold's distance to a norm over the epoch's 8 steps: no hard indicator flips, and both searches end equal
    # to float64 precision. (In float32 rounding differs between CPUs enough to flip indicators; the runs then
    # diverge by an amount that depends on the machine, so float32 is not compared.)
    cache = f"paths.cache_dir={tmp_path}/cache"
    # the single-process reference runs in this process (same pipeline as search.py, one interpreter start less)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("search", overrides=[*COMMON, "data.batch_size=32", f"paths.output_dir={tmp_path}/single",
                                           cache])
    run_task(SEARCH, cfg)  # the run shell writes summary.json
    ddp = run("search.py", *COMMON, "trainer=ddp_cpu", "data.batch_size=16", f"hydra.run.dir={tmp_path}/ddp",
              cache)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    log = ddp.stdout + ddp.stderr
    assert "GLOBAL_RANK: 1" in log and "Using rank 0's LUT" in log  # rank 1 loaded the LUT rank 0 profiled

    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    reference = json.loads((tmp_path / "single" / "summary.json").read_text())
    # every rank ends with exactly the same thresholds (gathered from both ranks after the fit)
    assert summary["ddp"] == {"world_size": 2, "max_threshold_diff_across_ranks": 0.0}
    assert reference["ddp"]["world_size"] == 1
    assert summary["architecture"] == reference["architecture"]
    assert summary["architecture"] != [reference["architecture"][0]] + ["k5_e6_se0.5"] * 5  # the search moved
    t_ddp, t_single = thresholds(tmp_path / "ddp"), thresholds(tmp_path / "single")
    assert t_ddp.keys() == t_single.keys() and t_single
    assert all(v.dtype == torch.float64 for v in t_single.values())
    moved = max(float(v.abs().max()) for v in t_single.values())
    assert moved > 1e-3  # thresholds start at 0: they were trained
    for k in t_single:  # float64 rounding amplified by 8 steps stays many orders of magnitude below 1e-9
        torch.testing.assert_close(t_ddp[k], t_single[k], rtol=0, atol=1e-9, msg=k)


def test_global_batchnorm_is_plain_batchnorm_in_one_process_and_swaps_back():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    x = torch.randn(6, 3, 8, 8)
    expected = net(x)
    plugin = ProcessSyncBatchNorm()
    synced = plugin.apply(net)
    assert isinstance(synced[1], GlobalBatchNorm2d)
    torch.testing.assert_close(synced(x), expected)  # no process group: identical to BatchNorm2d
    reverted = plugin.revert(synced)
    assert type(reverted[1]) is torch.nn.BatchNorm2d
    assert torch.equal(reverted[1].running_mean, synced[1].running_mean)


@pytest.mark.parametrize("name, message", [
    ("gpu", "no CUDA GPU"),
    ("tpu", "torch_xla"),
])
def test_trainer_configs_that_cannot_run_here_fail_clearly(name, message):
    cfg = OmegaConf.load(CONFIG_DIR / "trainer" / f"{name}.yaml")
    if name == "gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=message):
        check_trainer_config(cfg)
    for trainer in ("cpu", "ddp", "ddp_cpu", "gpu", "tpu"):
        text = (CONFIG_DIR / "trainer" / f"{trainer}.yaml").read_text()
        assert "- default" in text  # every trainer option extends the default Trainer settings


def test_slurm_launcher_config_composes_for_a_sweep():
    # SLURM itself cannot run here: this checks the launcher config resolves against the submitit plugin's schema
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("search", overrides=["hydra/launcher=slurm", "trainer=ddp", "hydra.launcher.partition=gpu",
                                           "hydra.launcher.tasks_per_node=4"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.tasks_per_node == 4 and launcher.timeout_min > 0
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm
