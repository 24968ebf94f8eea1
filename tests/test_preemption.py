"""Pre-emption loses nothing; the same seed gives the same result whether or not the LUT had to be profiled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from nas.cli import CONFIG_DIR
from nas.search.checkpoint import load_checkpoint
from nas.search.pipeline import run_search
from tests.conftest import ROOT
from tests.test_entry import run

# 280 training images / batch 32 = 8 steps per epoch; subset dropout stays on (its random draws must be replayed)
SEARCH = ["progress=false", "hardware=macs_proxy", "data.limit=400", "data.batch_size=32", "trainer.max_epochs=2",
          "solver.runtime_warmup_epochs=1", "trainer.limit_val_batches=2"]
PAUSE_STEP = 10  # the signal arrives while the search is paused after this step, in epoch 1

# Runs search.py as the shell does, except that the pre-emption callback waits after step PAUSE_STEP until a signal
# came (and tells the test it is waiting), so the signal lands at a known step in the middle of an epoch.
WRAPPER = """
import runpy, sys, time
from pathlib import Path
from nas.search.callbacks import PreemptionCheckpoint

original = PreemptionCheckpoint.on_train_batch_end

def paused(self, trainer, *args):
    if trainer.global_step == {step}:
        Path({flag!r}).write_text("paused")
        deadline = time.monotonic() + 600
        while not trainer.received_sigterm and self.signum is None and time.monotonic() < deadline:
            time.sleep(0.05)
    return original(self, trainer, *args)

PreemptionCheckpoint.on_train_batch_end = paused
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """One LUT cache for the interrupted searches (profiled by the first one)."""
    return f"paths.cache_dir={tmp_path_factory.mktemp('lut_cache')}"


def _interrupted_search(tmp_path: Path, signum: int, run_dir: Path, cache: str, script: str = "search.py",
                        args: tuple[str, ...] = tuple(SEARCH)) -> subprocess.CompletedProcess:
    flag = tmp_path / f"paused-{signum}"
    wrapper = tmp_path / "paused_search.py"
    wrapper.write_text(WRAPPER.format(step=PAUSE_STEP, flag=str(flag), script=str(ROOT / script)))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(wrapper), *args, f"hydra.run.dir={run_dir}", cache], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 1800  # generous: a CI machine may be shared and slow
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the search never reached the pause step"
        time.sleep(0.1)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigterm_mid_epoch_saves_and_the_resumed_search_equals_an_uninterrupted_one(tmp_path, cache):
    reference = run("search.py", *SEARCH, f"hydra.run.dir={tmp_path}/reference", cache)
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed = _interrupted_search(tmp_path, signal.SIGTERM, tmp_path / "killed", cache)
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr[-3000:]
    assert "Traceback" not in killed.stderr
    ckpt_path = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert f"stopped by SIGTERM at step {PAUSE_STEP}" in killed.stderr
    assert f"ckpt_path={ckpt_path}" in killed.stderr  # the resume command
    for name in ("arch.json", "summary.json", "lut.json"):
        assert not (tmp_path / "killed" / name).exists()  # an interrupted search reports no result
    ckpt = load_checkpoint(ckpt_path)
    loader = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    steps_per_epoch = 8
    assert ckpt["global_step"] == PAUSE_STEP and (loader["epoch"], loader["batches_done"]) == (1, 2)
    assert not list((tmp_path / "killed" / "checkpoints").glob("epoch001*.ckpt"))  # mid-epoch: not an epoch file
    assert (PAUSE_STEP) % steps_per_epoch

    resumed = run("search.py", *SEARCH, f"hydra.run.dir={tmp_path}/resumed", cache, f"ckpt_path={ckpt_path}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / "resumed" / "arch.json").read_bytes() == (tmp_path / "reference" / "arch.json").read_bytes()
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["steps"] == 2 * steps_per_epoch
    clock = next(v for k, v in ckpt["callbacks"].items() if k.startswith("SearchClock"))
    # the whole search: the killed part (up to its checkpoint) plus the resumed part
    assert summary["wall_time_s"] >= round(clock["wall_time_s"], 2) > 0


def test_ctrl_c_saves_a_checkpoint_and_prints_how_to_resume(tmp_path, cache):
    stopped = _interrupted_search(tmp_path, signal.SIGINT, tmp_path / "stopped", cache)
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr[-3000:]
    ckpt_path = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert f"stopped by SIGINT at step {PAUSE_STEP}" in stopped.stderr
    assert f"ckpt_path={ckpt_path}" in stopped.stderr and "Traceback" not in stopped.stderr
    assert load_checkpoint(ckpt_path)["global_step"] == PAUSE_STEP
    assert not (tmp_path / "stopped" / "arch.json").exists()


def test_sigterm_stops_train_py_with_a_checkpoint_and_the_resume_command(tmp_path, cache):
    """train.py is as safe to pre-empt as search.py: the same checkpoint-and-stop, and the resumed run finishes."""
    args = ("arch=smallest", "progress=false", "hardware=macs_proxy", "data.limit=400", "data.batch_size=32",
            "trainer.max_epochs=2", "train.export.onnx=false", "~logger")
    stopped = _interrupted_search(tmp_path, signal.SIGTERM, tmp_path / "train", cache, "train.py", args)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    ckpt_path = tmp_path / "train" / "checkpoints" / "last.ckpt"
    assert f"stopped by SIGTERM at step {PAUSE_STEP}" in stopped.stderr and "Traceback" not in stopped.stderr
    assert "resume with: python train.py" in stopped.stderr and f"ckpt_path={ckpt_path}" in stopped.stderr
    assert load_checkpoint(ckpt_path)["global_step"] == PAUSE_STEP
    assert not (tmp_path / "train" / "train_summary.json").exists()  # a stopped run reports no result
    resumed = run("train.py", *args, f"hydra.run.dir={tmp_path}/train", cache, f"ckpt_path={ckpt_path}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((tmp_path / "train" / "train_summary.json").read_text())
    assert summary["epochs"] == 2 and summary["resumed_from"] == str(ckpt_path) and summary["val_acc"] is not None


def _search_in_process(tmp_path: Path, name: str) -> Path:
    overrides = [*SEARCH, "trainer.max_epochs=1", f"paths.output_dir={tmp_path}/{name}",
                 f"paths.cache_dir={tmp_path}/cache"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        run_search(compose("search", overrides=overrides))
    return tmp_path / name


def test_cold_and_warm_lut_cache_give_the_same_result(tmp_path):
    cold = _search_in_process(tmp_path, "cold")  # profiles the LUT: builds modules from the global RNG
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1
    warm = _search_in_process(tmp_path, "warm")  # reads it from the cache
    assert (cold / "arch.json").read_bytes() == (warm / "arch.json").read_bytes()
    thresholds = [{k: v for k, v in load_checkpoint(d / "checkpoints" / "last.ckpt")["state_dict"].items()
                   if ".t_" in k or k.rsplit(".", 1)[-1].startswith("t_")} for d in (cold, warm)]
    assert thresholds[0] and thresholds[0].keys() == thresholds[1].keys()
    assert all((thresholds[0][k] == thresholds[1][k]).all() for k in thresholds[0])
    # the run's lut.json says when the LUT was measured, like the cached file
    cached = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert json.loads((warm / "lut.json").read_text())["created"] == cached["created"]
    assert json.loads((cold / "lut.json").read_text())["created"] == cached["created"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_users_umask(tmp_path, umask):
    from nas.io import atomic_write_json

    old = os.umask(umask)
    try:
        path = atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_json_files_never_hold_nan(tmp_path):
    from nas.io import atomic_write_json

    with pytest.raises(ValueError, match="NaN / Infinity are not JSON"):
        atomic_write_json(tmp_path / "summary.json", {"val_acc": float("nan")})
    assert not list(tmp_path.iterdir())  # nothing written, no temporary file left


def test_one_nan_to_null_helper_for_every_report():
    """``nas.io.null_non_finite`` / ``finite_or_none`` are the package's only NaN-to-null helpers: they turn NaN,
    infinities and numpy scalars into what strict JSON writes, and nothing else defines its own copy."""
    import math
    import re

    import numpy as np

    from nas.io import finite_or_none, null_non_finite

    report = {"tau": float("nan"), "n": np.int64(3), np.int64(4): [np.float32(0.5), float("inf"), (1, None)],
              "ok": np.bool_(True), "s": "x"}
    assert null_non_finite(report) == {"tau": None, "n": 3, 4: [0.5, None, [1, None]], "ok": True, "s": "x"}
    json.dumps(null_non_finite(report), allow_nan=False)
    assert [finite_or_none(v) for v in (None, float("nan"), -math.inf, np.float64(2.0), 1)] == [None, None, None,
                                                                                               2.0, 1.0]
    root = Path(__file__).resolve().parents[1]
    copies = [f"{p.relative_to(root)}: {m}" for folder in ("nas", "scripts") for p in (root / folder).rglob("*.py")
              if p.name != "io.py"
              for m in re.findall(r"def \w*(?:finite_or_none|non_finite|sanitize)\w*", p.read_text())]
    assert not copies, copies
