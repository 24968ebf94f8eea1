"""Sub-network search on several torch.distributed ranks (gloo on CPU): the same records as one process."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from nas.errors import ConfigError, Interrupted, NASError
from nas.subnet_search.ranks import launch_from_env, shares, slurm_tasks_on_node
from nas.subnet_search.run import run_subnet_search
from nas.threads import thread_budget
from tests.test_subnet_search import AdditiveError, fake_checkpoint, objective_space, subnet_cfg

WORLD = 2


@pytest.fixture
def ckpt(micro_space, tmp_path) -> Path:
    return fake_checkpoint(tmp_path / "supernet.ckpt", micro_space)


def context() -> mp.context.BaseContext:
    """Ranks are forked from a server that imported this module once per session (a fresh interpreter: no
    thread pool of this process is inherited); a spawned process would import torch and the package again."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Counting:
    """Validates with ``inner`` and counts; with ``die_after``, the process is killed (SIGKILL) before the
    validation after that many."""

    def __init__(self, inner, die_after: int | None = None) -> None:
        self.inner, self.die_after, self.count = inner, die_after, 0

    def validate(self, arch):
        if self.die_after is not None and self.count >= self.die_after:
            os.kill(os.getpid(), signal.SIGKILL)
        self.count += 1
        return self.inner.validate(arch)


def rank_main(rank: int, tmp: str, ckpt: str, port: int, overrides: list[str], table: bool,
              die_after: int | None, rank1_overrides: list[str]) -> None:
    """One rank of a 2-rank search (a ``torch.multiprocessing`` process); writes ``rank<r>.json``."""
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from nas.space.search_space import SearchSpace
    from nas.subnet_search import evaluation
    from tests.conftest import MICRO_SPACE

    cfg = subnet_cfg(Path(tmp), Path(ckpt), *overrides, *(rank1_overrides if rank == 1 else []), out="ranks")
    counted: list[Counting] = []
    if table:  # a fast synthetic objective
        space = objective_space(SearchSpace.from_config(MICRO_SPACE))
        counted.append(Counting(AdditiveError(space.codec, space.latency["proxy"].tables),
                                die_after if rank == 1 else None))
        validator = counted[0]
    else:  # the supernet evaluator of the checkpoint, counted
        validator = None
        plain = evaluation.SupernetEvaluator.validate

        def validate(self, arch):
            counted.append(arch)
            return plain(self, arch)
        evaluation.SupernetEvaluator.validate = validate  # type: ignore[method-assign]
    report: dict = {"rank": rank}
    try:
        result = run_subnet_search(cfg, validator=validator)
        report["hypervolume"] = next(iter(result["pareto"]["devices"].values()))["hypervolume"]
        report["ranks"] = result["summary"]["ranks"]
    except Interrupted as err:
        report["stopped"] = str(err)
        report["exit_code"] = err.exit_code
    except NASError as err:
        report["error"] = str(err)
        report["exit_code"] = 2
    report["validated"] = counted[0].count if table else len(counted)
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(report))
    sys.exit(report.get("exit_code", 0))


def run_ranks(tmp: Path, ckpt: Path, overrides: list[str], table: bool = False, die_after: int | None = None,
              rank1_overrides: Sequence[str] = ()) -> tuple[list[int], list[dict]]:
    """Run the search on 2 spawned ranks; their exit codes and reports."""
    ctx = context()
    port = free_port()
    procs = [ctx.Process(target=rank_main, args=(r, str(tmp), str(ckpt), port, overrides, table, die_after,
                                                 list(rank1_overrides))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    codes = [p.exitcode for p in procs]
    reports = [json.loads(Path(tmp, f"rank{r}.json").read_text()) if Path(tmp, f"rank{r}.json").is_file() else {}
               for r in range(WORLD)]
    return codes, reports


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_gloo_ranks_write_the_records_and_pareto_json_of_one_process(ckpt, tmp_path):
    overrides = ["budget=24", "algorithm.population=8"]
    one = run_subnet_search(subnet_cfg(tmp_path, ckpt, *overrides, out="one"))
    codes, reports = run_ranks(tmp_path, ckpt, overrides)
    assert codes == [0, 0], reports
    # the supernet evaluator ran on both ranks, each on its share of every generation
    assert reports[0]["validated"] + reports[1]["validated"] == 24
    assert min(r["validated"] for r in reports) >= 24 // 2 - 3
    # every rank returns rank 0's result; the files are rank 0's, byte for byte those of one process
    assert reports[0]["hypervolume"] == reports[1]["hypervolume"] == pytest.approx(
        next(iter(one["pareto"]["devices"].values()))["hypervolume"], abs=0)
    assert reports[0]["ranks"] == 2 and one["summary"]["ranks"] == 1
    for name in ("validations.jsonl", "pareto.json"):
        assert (tmp_path / "ranks" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_a_killed_rank_leaves_the_store_whole_and_resume_gives_the_uninterrupted_front(micro_space, ckpt,
                                                                                        tmp_path):
    overrides = ["budget=40", "algorithm.population=10"]
    space = objective_space(micro_space)
    full = run_subnet_search(subnet_cfg(tmp_path, ckpt, *overrides, out="full"),
                             validator=AdditiveError(space.codec, space.latency["proxy"].tables))
    codes, reports = run_ranks(tmp_path, ckpt, overrides, table=True, die_after=12)
    assert codes[1] == -signal.SIGKILL  # rank 1 was killed in its third generation's share
    assert codes[0] == 1 and "another rank stopped answering" in reports[0]["stopped"]
    assert "resume with: " in reports[0]["stopped"] and "resume=" in reports[0]["stopped"]
    store = tmp_path / "ranks" / "validations.jsonl"
    kept = records(store)  # complete records of the generations gathered before the kill, nothing torn
    assert store.read_text().endswith("\n") and 0 < len(kept) < 40
    assert not (tmp_path / "ranks" / "pareto.json").exists()
    table = Counting(AdditiveError(space.codec, space.latency["proxy"].tables))
    run_subnet_search(subnet_cfg(tmp_path, ckpt, *overrides, f"resume={tmp_path / 'ranks'}", out="x"),
                      validator=table)
    assert table.count == 40 - len(kept)  # nothing validated twice
    assert (tmp_path / "ranks" / "pareto.json").read_bytes() == (tmp_path / "full" / "pareto.json").read_bytes()
    assert [r["key"] for r in records(store)] == [r["key"] for r in records(tmp_path / "full" / "validations.jsonl")]
    assert full["summary"]["ranks"] == 1


def test_a_rank_that_cannot_start_stops_every_rank_before_any_work(ckpt, tmp_path):
    codes, reports = run_ranks(tmp_path, ckpt, ["budget=24", "algorithm.population=8"],
                               rank1_overrides=[f"supernet={tmp_path / 'missing.ckpt'}"])
    assert codes == [2, 2]
    error = reports[1]["error"]
    assert error.startswith("supernet checkpoint") and "missing.ckpt does not exist" in error
    assert reports[0]["error"] == f"rank 1: {reports[1]['error']}" and reports[0]["validated"] == 0
    assert not (tmp_path / "ranks" / "validations.jsonl").exists()


def test_the_launch_is_read_from_torchrun_or_srun():
    assert launch_from_env({}) is None and launch_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    torchrun = launch_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                "MASTER_ADDR": "n0", "MASTER_PORT": "29400"})
    assert (torchrun.world_size, torchrun.rank, torchrun.local_rank, torchrun.local_world_size) == (4, 3, 1, 2)
    assert (torchrun.master_addr, torchrun.master_port, torchrun.launcher) == ("n0", 29400, "torchrun")
    srun = launch_from_env({"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "6", "SLURM_LOCALID": "1",
                            "SLURM_NODEID": "2", "SLURM_STEP_TASKS_PER_NODE": "2(x2),2",
                            "SLURM_STEP_NODELIST": "gpu[07-09]", "SLURM_JOB_ID": "123456"})
    assert (srun.world_size, srun.rank, srun.local_rank, srun.local_world_size) == (6, 5, 1, 2)
    assert (srun.master_addr, srun.master_port, srun.launcher) == ("gpu07", 15000 + 3456, "slurm")
    # the batch script of an allocation (no srun step) is one process
    assert launch_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) is None
    assert slurm_tasks_on_node("3,1(x2)", 2) == 1
    with pytest.raises(ConfigError, match="SLURM_STEP_TASKS_PER_NODE"):
        slurm_tasks_on_node("two", 0)
    with pytest.raises(ConfigError, match="RANK='x'"):
        launch_from_env({"WORLD_SIZE": "2", "RANK": "x"})
    # a rank's threads: its share over the node's ranks that srun reported, at least 1
    assert thread_budget({"threads": None}, env={}, processes=len(os.sched_getaffinity(0)) * 4).threads == 1


def test_shares_balance_the_expected_cost_over_the_ranks():
    weights = [5, 1, 9, 3, 7, 2, 8]
    parts = shares(weights, 3)
    assert sorted(i for part in parts for i in part) == list(range(7))
    assert [len(p) for p in parts] == [3, 2, 2]
    assert parts == [[2, 5, 1], [6, 3], [4, 0]]  # 9+2+1, 8+3, 7+5: snake order
    assert shares([1.0], 2) == [[0], []]
