"""The thread budget (nas/threads.py): each process' share of its CPUs, the config override, the log line."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from nas.cli import CONFIG_DIR
from nas.errors import ConfigError
from nas.threads import (
    ThreadBudget,
    apply_thread_budget,
    cgroup_cpus,
    child_environment,
    local_processes,
    quota_cpus,
    resolve,
    share,
    trainer_processes,
)
from tests.conftest import load_space
from tests.test_package import spnas


@pytest.mark.parametrize("affinity,quota,local,expected", [
    (2, None, 1, 2), (2, None, 2, 1), (2, None, 4, 1),  # never below one thread
    (16, 3, 1, 3), (16, 3, 2, 1), (4, 8, 2, 2),          # the quota caps the affinity, not the other way round
    (64, None, 8, 8),
])
def test_share_splits_the_usable_cpus_over_the_local_processes(affinity, quota, local, expected):
    assert share(affinity, quota, local) == expected


def test_cgroup_quota_lines_give_whole_cpus_rounded_up():
    assert quota_cpus("max 100000") is None and quota_cpus("250000 100000\n") == 3 and quota_cpus("50000 100000") == 1
    assert quota_cpus(None, "-1", "100000") is None and quota_cpus(None, "150000", "100000") == 2
    assert quota_cpus("garbage") is None and quota_cpus(None, None, None) is None


def test_cgroup_reader_takes_the_smallest_quota_on_the_process_path(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "cgroup"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "cpu.max").write_text("200000 100000\n")       # the parent allows 2 CPUs
    (root / "a" / "b" / "cpu.max").write_text("max 100000\n")    # the process' own cgroup: no limit of its own
    proc.write_text("0::/a/b\n")
    assert cgroup_cpus(root, proc) == 2
    proc.write_text("0::/elsewhere\n")
    assert cgroup_cpus(root, proc) is None
    (root / "cpu,cpuacct" / "job").mkdir(parents=True)           # cgroup v1
    (root / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us").write_text("350000\n")
    (root / "cpu,cpuacct" / "job" / "cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("4:memory:/job\n3:cpu,cpuacct:/job\n0::/\n")
    assert cgroup_cpus(root, proc) == 4
    assert cgroup_cpus(root, tmp_path / "missing") is None


def test_local_processes_count_torchrun_ranks_lightning_ddp_ranks_and_side_by_side_jobs():
    ddp_cpu = {"accelerator": "cpu", "strategy": "ddp", "devices": 2}
    assert local_processes({}, None) == 1 and local_processes({}, {"devices": 4, "strategy": "auto"}) == 1
    assert local_processes({}, ddp_cpu) == 2 and local_processes({}, {**ddp_cpu, "devices": [0, 1, 2]}) == 3
    assert local_processes({"LOCAL_WORLD_SIZE": "4"}, ddp_cpu) == 4  # torchrun's word wins
    assert local_processes({}, ddp_cpu, jobs=3) == 6
    assert trainer_processes({"accelerator": "cpu", "strategy": "ddp_spawn", "devices": "3"}) == 3


def test_config_wins_over_omp_num_threads_which_wins_over_the_automatic_share():
    env = {"OMP_NUM_THREADS": "3"}
    assert resolve(4, env, 2, None, 2) == ThreadBudget(4, "threads=4", 2, None, 2)
    assert resolve(None, env, 2, None, 2).threads == 3 and resolve(None, env, 2, None, 2).source == "OMP_NUM_THREADS=3"
    assert resolve("auto", {"OMP_NUM_THREADS": ""}, 2, None, 2) == ThreadBudget(1, "auto", 2, None, 2)
    auto = resolve(None, {}, 2, None, 2)
    assert auto.describe() == "threads: 1 of 2 CPUs (affinity 2, cgroup none, 2 local processes)"
    assert resolve(None, {}, 8, 3, 1).describe() == "threads: 3 of 3 CPUs (affinity 8, cgroup 3, 1 local process)"
    assert resolve(4, env, 2, None, 2).describe().startswith("threads: 4 (threads=4; automatic would be 1 of 2 CPUs")


@pytest.mark.parametrize("value", [0, -1, "x", 1.5, True])
def test_a_bad_threads_value_is_refused(value):
    with pytest.raises(ConfigError, match=r"^threads must be an integer >= 1 or null"):
        resolve(value, {}, 2, None, 1)
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS must be an integer >= 1"):
        resolve(None, {"OMP_NUM_THREADS": "x"}, 2, None, 1)


def test_the_config_override_sets_torch_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            search = compose("search", overrides=["threads=3", "trainer=ddp_cpu"])
            subnet = compose("subnet_search")
        assert subnet.threads is None  # every command has the key (nas/conf/process/default.yaml): automatic
        assert apply_thread_budget(search).threads == 3 and torch.get_num_threads() == 3
        search.threads = None  # automatic: 2 CPU DDP ranks share this process' CPUs
        budget = apply_thread_budget(search)
        assert budget.local_processes == 2 and torch.get_num_threads() == budget.threads == share(
            budget.affinity, budget.quota, 2)
    finally:
        torch.set_num_threads(before)


def test_children_run_side_by_side_get_their_share_unless_the_user_chose():
    assert child_environment(2, {}, cpus=4)["OMP_NUM_THREADS"] == "2"
    assert child_environment(3, {}, cpus=2)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in child_environment(1, {}, cpus=4)  # one alone takes its own budget
    assert child_environment(2, {"OMP_NUM_THREADS": "4"}, cpus=4)["OMP_NUM_THREADS"] == "4"


def test_an_entry_point_logs_its_budget_and_records_it(tmp_path, caplog, monkeypatch):
    """The latency command's task in the run shell, as ``spnas latency ... threads=1`` runs it."""
    from nas.entries.latency import main
    from nas.run_shell import run_task

    monkeypatch.setattr("nas.threads._last_logged", None)
    arch = tmp_path / "arch.json"
    load_space("tiny").smallest().save(arch)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("latency", overrides=[f"arch={arch}", "hardware=macs_proxy", "measure=false", "threads=1",
                                            f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}/cache",
                                            "progress=false"])
    before = torch.get_num_threads()
    try:
        with caplog.at_level("INFO", logger="nas"):
            run_task(main.task, cfg)
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert any(r.getMessage().startswith("threads: 1 (threads=1; automatic would be ") for r in caplog.records)
    assert json.loads((tmp_path / "latency.json").read_text())["run"]["threads"] == 1


def test_a_bad_threads_value_on_the_command_line_is_one_error_line(tmp_path):
    proc = spnas("latency", "arch=none.json", "threads=x", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: threads must be an integer >= 1 or null")
    assert not (tmp_path / "run").exists()  # refused before the run folder, the imports and the task


def test_a_study_hands_its_threads_setting_to_every_job():
    from nas.studies.solver_study import forwarded_settings

    args = ["threads=2", "data.root=/d", "seeds=[0]", "threads_x=1"]
    assert forwarded_settings(args) == ["threads=2", "data.root=/d"]
