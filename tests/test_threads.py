"""The thread budget (nas/threads.py): each process' share of its CPUs, the config override, the log line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    rebalance,
    register,
    registered_processes,
    resolve,
    share,
    start_time,
    thread_budget,
    trainer_processes,
    waiting_on_children,
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


# ------------------------------------------------------------------------------------ the registry (issue 22)
@pytest.fixture
def registry(tmp_path, monkeypatch):
    """An empty registry folder of this test's own; this process not registered in it, no budget applied, no
    OMP_NUM_THREADS or LOCAL_WORLD_SIZE, and 4 CPUs (0-3) in its affinity without a cgroup quota; torch's threads
    restored afterwards."""
    import nas.threads as threads

    monkeypatch.setenv("SPNAS_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for name in ("_entry", "_entry_pid", "_applied"):
        monkeypatch.setattr(threads, name, None)
    monkeypatch.setattr(threads, "affinity_set", lambda: frozenset({0, 1, 2, 3}))
    monkeypatch.setattr(threads, "cgroup_cpus", lambda *a: None)
    before = torch.get_num_threads()
    folder = tmp_path / "runtime" / "processes"
    folder.mkdir(parents=True, mode=0o700)
    yield folder
    threads.unregister()
    torch.set_num_threads(before)


@pytest.fixture
def sleepers():
    """Start sleeping processes (``start()``: its pid and start time); all killed afterwards."""
    started: list[subprocess.Popen] = []

    def start() -> tuple[int, int]:
        proc = subprocess.Popen(["sleep", "60"])
        started.append(proc)
        return proc.pid, start_time(proc.pid)

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def entry(folder, pid, started, affinity=(0, 1, 2, 3), pidns=None):
    """A registry file as :func:`nas.threads.register` writes it, for another process."""
    from nas.threads import _pid_namespace

    path = folder / f"{pid}-{started}.json"
    path.write_text(json.dumps({"pid": pid, "start": started, "affinity": list(affinity),
                                "pidns": _pid_namespace() if pidns is None else pidns}))
    return path


def test_start_times_tell_a_live_process_from_a_dead_or_reused_pid(sleepers):
    pid, started = sleepers()
    assert isinstance(started, int) and start_time(pid) == started and start_time(os.getpid()) is not None
    done = subprocess.Popen(["true"])
    done.wait()
    assert start_time(done.pid) is None


def test_registry_counts_live_processes_on_these_cpus_and_deletes_stale_entries(registry, sleepers):
    live, other_cpus, other_namespace = sleepers(), sleepers(), sleepers()
    done = subprocess.Popen(["true"])
    done.wait()
    kept = [entry(registry, *live),
            entry(registry, *other_cpus, affinity=[7]),                    # alive, on other CPUs: not counted
            entry(registry, *other_namespace, pidns="pid:[1]")]            # another container's: not judged
    stale = [entry(registry, done.pid, 123),                              # dead
             entry(registry, live[0], live[1] + 1)]                        # the pid reused by another process
    (registry / "notes.txt").write_text("not an entry")
    assert registered_processes() == 2  # this process and the live one on its CPUs
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    assert registered_processes(frozenset({7})) == 2 and registered_processes(frozenset({9})) == 1
    assert register() is not None and registered_processes() == 2  # this process counts once, registered or not


@pytest.mark.parametrize("others,expected", [(0, 4), (1, 2), (2, 1)])
def test_the_automatic_share_divides_the_cpus_over_the_registered_processes(registry, sleepers, others, expected):
    for _ in range(others):
        entry(registry, *sleepers())
    budget = thread_budget({"threads": None})
    assert (budget.registered, budget.threads) == (1 + others, expected)  # 4 CPUs over 1, 2, 3 processes
    assert budget.describe().endswith(f"1 local process, {1 + others} spnas process{'es' if others else ''} "
                                      f"on these CPUs)")


def test_a_runs_own_processes_count_once(registry, sleepers):
    """2 DDP ranks that registered are 2 processes, not 4; one outside the run makes 3."""
    assert resolve(None, {}, 4, None, 2, 2).threads == 2 and resolve(None, {}, 4, None, 2, 1).threads == 2
    assert resolve(None, {}, 4, None, 2, 3).threads == 1 and resolve(None, {}, 8, None, 1, 3).threads == 2
    entry(registry, *sleepers())  # the other rank
    assert thread_budget({"threads": None}, env={"LOCAL_WORLD_SIZE": "2"}).threads == 2


def test_rebalance_lowers_and_raises_the_threads_as_processes_come_and_go(registry, sleepers, caplog):
    alone = apply_thread_budget({"threads": None})
    assert (alone.threads, alone.registered, torch.get_num_threads()) == (4, 1, 4)
    assert next(registry.glob(f"{os.getpid()}-*.json")).exists()  # registered itself
    other = subprocess.Popen(["sleep", "60"])
    try:
        entry(registry, other.pid, start_time(other.pid))
        assert rebalance() is None  # rate-limited: too soon after the budget was applied
        with caplog.at_level("INFO", logger="nas"):
            assert rebalance(force=True).threads == 2 and torch.get_num_threads() == 2
        assert any(r.getMessage().startswith("rebalanced: threads: 2 of 4 CPUs") and "(was 4)" in r.getMessage()
                   for r in caplog.records)
        assert rebalance(now=1e12).threads == 2  # the count unchanged: nothing to do
    finally:
        other.kill()
        other.wait()
    assert rebalance(force=True).threads == 4 and torch.get_num_threads() == 4  # it left: back up
    assert not list(registry.glob(f"{other.pid}-*.json"))  # its entry cleaned by the reader


@pytest.mark.parametrize("fixed", ["threads", "OMP_NUM_THREADS"])
def test_rebalance_leaves_a_chosen_budget_alone(registry, sleepers, monkeypatch, fixed):
    if fixed == "threads":
        budget = apply_thread_budget({"threads": 3})
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        budget = apply_thread_budget({"threads": None})
    assert budget.threads == 3 and torch.get_num_threads() == 3
    assert next(registry.glob(f"{os.getpid()}-*.json")).exists()  # still counted by the others
    entry(registry, *sleepers())
    entry(registry, *sleepers())
    assert rebalance(force=True) is None and torch.get_num_threads() == 3


def test_a_parent_waiting_on_its_child_is_not_counted(registry):
    path = register()
    assert path is not None and path.exists()
    with waiting_on_children():
        assert not path.exists()
    assert path.exists()


def test_a_study_waiting_on_its_job_is_not_counted_by_the_job(registry, tmp_path, monkeypatch):
    """:func:`nas.cli.run_entry` (the studies' jobs): the parent's entry is out of the registry while its child
    runs, and back afterwards."""
    from nas import cli

    script = "import os, sys; print(sorted(os.listdir(sys.argv[1])))"
    monkeypatch.setattr(cli, "entry_command", lambda name: [sys.executable, "-c", script])
    path = register()
    status, _ = cli.run_entry("search", [str(registry)], tmp_path / "job.log")
    assert status == 0 and (tmp_path / "job.log").read_text().strip() == "[]" and path.exists()


def test_a_process_leaves_the_registry_at_exit_and_a_forked_child_leaves_its_entry(tmp_path):
    script = """if True:
        import os, sys
        from nas.threads import register
        path = register()
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # the child's exit runs the inherited atexit handler: it must not remove the parent's entry
        os.waitpid(pid, 0)
        print(path, path.exists())
    """
    env = {**os.environ, "SPNAS_RUNTIME_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    path, existed = proc.stdout.split()
    assert existed == "True" and Path(path).parent == tmp_path / "processes" and not Path(path).exists()


def test_training_rebalances_through_a_callback(registry, sleepers):
    """Search, train and HyperPower's trials carry :class:`ThreadRebalance`; before a batch it re-applies the
    budget (once the rate limit allows)."""
    import nas.threads as threads
    from nas.search.callbacks import ThreadRebalance

    for module in ("nas/search/pipeline.py", "nas/search/training.py", "nas/hyperpower/study.py"):
        assert "ThreadRebalance()" in (Path(__file__).resolve().parents[1] / module).read_text()
    assert apply_thread_budget({"threads": None}).threads == 4
    entry(registry, *sleepers())
    callback = ThreadRebalance()
    callback.on_train_batch_start(None, None, None, 0)
    assert torch.get_num_threads() == 4  # within the rate limit
    threads._applied.checked -= threads.REBALANCE_INTERVAL_S
    callback.on_validation_batch_start(None, None, None, 0)
    assert torch.get_num_threads() == 2
