"""Every bad input ends in one ``error:`` line naming the problem, exit status 2, no traceback, no result file.

Most cases run ``search.py`` / ``train.py`` in this process exactly as the command line does (``runpy`` with
``sys.argv`` set: Hydra parses the arguments, ``nas.cli.hydra_entry`` and ``main_guard`` report the error);
a few run as real subprocesses to check the process' exit status and streams end to end. They all fail
before training, and the ones that need no LUT fail before one is profiled (the cache stays empty).
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from nas.cost.backends import MacsProxy
from nas.cost.lut import LatencyEntry, LatencyLUT
from nas.cost.signatures import required_ops
from tests.conftest import ROOT, load_space, make_idx_set
from tests.test_entry import run

RESULT_FILES = ("arch.json", "summary.json", "lut.json", "arch_timm.txt", "train_summary.json", "model.onnx")


@dataclass
class Case:
    script: str
    args: list[str]
    message: str  # a substring of the error line
    absent: list[str] = field(default_factory=list)  # substrings the error line must not contain
    lut_free: bool = True  # fails before any LUT is profiled


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Running a Hydra app in this process initialises Hydra and configures logging: undo both afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    GlobalHydra.instance().clear()
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Bad files a user might pass: checkpoints, LUTs, architectures."""
    tmp = tmp_path_factory.mktemp("inputs")
    good = tmp / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(4096)}}, good)
    data = good.read_bytes()
    (tmp / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp / "text.ckpt").write_text("not ckpt")  # 8 bytes
    (tmp / "ckpt_dir.ckpt").mkdir()
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0}, tmp / "foreign.ckpt")
    # a LUT covering the tiny space for digits (costs made up: no op is built or timed)
    lut = LatencyLUT(entries={k: LatencyEntry(0.1) for k in required_ops(load_space("tiny"), 1, 10)},
                     hardware=MacsProxy().hardware_record(), space={"name": "tiny", "digest": load_space("tiny").digest}
                     ).to_dict()
    (tmp / "good_lut.json").write_text(json.dumps(lut))
    (tmp / "malformed_lut.json").write_text('{"format": "spnas-lut", "entries": {')
    other_hw = {**lut, "hardware": {**lut["hardware"], "fingerprint_id": "0123456789ab"}}
    (tmp / "other_hw_lut.json").write_text(json.dumps(other_hw))
    (tmp / "other_space_lut.json").write_text(json.dumps({**lut, "space": {"name": "cifar", "digest": "ffff"}}))
    partial = {**lut, "entries": dict(list(lut["entries"].items())[1:])}
    (tmp / "partial_lut.json").write_text(json.dumps(partial))
    (tmp / "not_a_lut.json").write_text(json.dumps({"hello": "world"}))
    (tmp / "bad_arch.json").write_text("{ not json")
    (tmp / "binary.json").write_bytes(bytes(range(256)))
    (tmp / "a_file").write_text("x")
    # Fashion-MNIST-format folders: one without its test labels, one with a truncated training image file
    (make_idx_set(tmp / "idx_incomplete") / "t10k-labels-idx1-ubyte.gz").unlink()
    truncated = make_idx_set(tmp / "idx_truncated") / "train-images-idx3-ubyte.gz"
    truncated.write_bytes(truncated.read_bytes()[:200])
    return {p.name: str(p) for p in tmp.iterdir()}


def f(name: str) -> str:
    """Placeholder for a file of the ``files`` fixture."""
    return f"@{name}@"


CASES: dict[str, Case] = {
    # data
    "cifar10 without data.root": Case("search.py", ["data=cifar10"], "data.root is required but not set"),
    "cifar10 root missing": Case("search.py", ["data=cifar10", "data.root=/nonexistent"],
                                 "CIFAR-10 not found: /nonexistent/cifar-10-batches-py does not exist"),
    "cifar100 root missing": Case("search.py", ["data=cifar100", "data.root=/nonexistent"], "CIFAR-100 not found"),
    "imagefolder root missing": Case("search.py", ["data=imagefolder", "data.root=/nonexistent"],
                                     "ImageFolder training data not found"),
    "fashion_mnist root missing": Case("search.py", ["data=fashion_mnist", "data.root=/nonexistent"],
                                       "Fashion-MNIST not found: /nonexistent does not exist; install it (apt-get "
                                       "install dataset-fashion-mnist); set data.root=<folder with the four files"),
    "fashion_mnist file missing": Case("search.py", ["data=fashion_mnist", f"data.root={f('idx_incomplete')}"],
                                       "has no t10k-labels-idx1-ubyte (nor t10k-labels-idx1-ubyte.gz); install it"),
    "fashion_mnist file truncated": Case("search.py", ["data=fashion_mnist", f"data.root={f('idx_truncated')}"],
                                         "train-images-idx3-ubyte.gz is corrupt: it is incomplete"),
    "mnist without data.root": Case("search.py", ["data=mnist"], "data.root is required but not set; add the "
                                                               "override data.root=<folder holding the dataset>"),
    "train fashion_mnist root missing": Case("train.py", ["arch=largest", "data=fashion_mnist",
                                                          "data.root=/nonexistent"], "Fashion-MNIST not found"),
    "batch size 0": Case("search.py", ["data.batch_size=0"], "data.batch_size must be an integer >= 1, got 0"),
    "batch size text": Case("search.py", ["data.batch_size=abc"], "data.batch_size must be an integer >= 1"),
    # solver and search budget
    "lambda text": Case("search.py", ["solver.lambda_=abc"], "solver.lambda_ must be a finite number >= 0, got 'abc'"),
    "lambda negative": Case("search.py", ["solver.lambda_=-1"], "solver.lambda_ must be a finite number >= 0"),
    "lambda nan": Case("search.py", ["solver.lambda_=nan"], "solver.lambda_ must be a finite number >= 0, got nan"),
    "label smoothing negative": Case("search.py", ["solver.label_smoothing=-0.1"], "solver.label_smoothing must be"),
    "unknown optimizer": Case("search.py", ["solver.optimizer._target_=torch.optim.Adamx"],
                              "solver.optimizer._target_='torch.optim.Adamx' cannot be imported"),
    "bad optimizer option": Case("search.py", ["solver.optimizer.momentum=-1"],
                                 "solver.optimizer: torch.optim.SGD rejects its settings"),
    "max_epochs 0": Case("search.py", ["trainer.max_epochs=0"], "trainer.max_epochs must be an integer >= 1, got 0"),
    "max_epochs text": Case("search.py", ["trainer.max_epochs=many"], "trainer.max_epochs must be an integer"),
    "limit_train_batches 0": Case("search.py", ["trainer.limit_train_batches=0"],
                                  "trainer.limit_train_batches must be a finite number > 0"),
    "seed text": Case("search.py", ["seed=abc"], "seed must be an integer"),
    "target_ms negative": Case("search.py", ["hardware.target_ms=-1"],
                               "hardware.target_ms must be a finite number > 0"),
    "every_n_train_steps 0": Case("search.py", ["checkpoint.every_n_train_steps=0"],
                                  "checkpoint.every_n_train_steps must be an integer >= 1"),
    "multi_path within warm-up": Case("search.py", ["solver=multi_path", "trainer.max_epochs=2"],
                                      "would take no architecture step"),
    "proxyless within warm-up": Case("search.py", ["solver=proxyless", "trainer.max_epochs=1"],
                                     "solver.arch_warmup_epochs=2"),
    "random without target": Case("search.py", ["solver=random"], "solver=random needs a runtime target"),
    "distillation without the sandwich rule": Case("search.py", ["solver=supernet", "solver.sampling=uniform",
                                                                 "solver.distill=true"],
                                                   "solver.distill=true needs solver.sampling=sandwich"),
    "gpu trainer without CUDA": Case("search.py", ["trainer=gpu"], "no CUDA GPU"),
    "tpu trainer without torch_xla": Case("search.py", ["trainer=tpu"], "trainer=tpu needs torch_xla"),
    # checkpoints
    "ckpt missing": Case("search.py", ["ckpt_path=/nonexistent/last.ckpt"],
                         "ckpt_path=/nonexistent/last.ckpt does not exist"),
    "ckpt truncated": Case("search.py", [f"ckpt_path={f('truncated.ckpt')}"], "is not a complete checkpoint"),
    "ckpt 8-byte text": Case("search.py", [f"ckpt_path={f('text.ckpt')}"], "is not a complete checkpoint (8 bytes"),
    "ckpt is a folder": Case("search.py", [f"ckpt_path={f('ckpt_dir.ckpt')}"], "is not a file"),
    "ckpt of something else": Case("search.py", [f"hardware.lut_path={f('good_lut.json')}",
                                                 f"ckpt_path={f('foreign.ckpt')}"], "was not written by a search"),
    # LUTs given by the user
    "lut missing": Case("search.py", ["hardware.lut_path=/nonexistent/lut.json"],
                        "LUT file /nonexistent/lut.json does not exist"),
    "lut malformed": Case("search.py", [f"hardware.lut_path={f('malformed_lut.json')}"],
                          "drop hardware.lut_path", absent=["Delete it"]),
    "lut binary": Case("search.py", [f"hardware.lut_path={f('binary.json')}"], "malformed LUT"),
    "lut not a LUT": Case("search.py", [f"hardware.lut_path={f('not_a_lut.json')}"], "this is not a LUT"),
    "lut other space": Case("search.py", [f"hardware.lut_path={f('other_space_lut.json')}"],
                            "this LUT was made for space 'cifar'"),
    "lut missing entries": Case("search.py", [f"hardware.lut_path={f('partial_lut.json')}"], "missing 1 of"),
    "lut other hardware, strict": Case("search.py", [f"hardware.lut_path={f('other_hw_lut.json')}",
                                                     "hardware.strict=true"],
                                       "set hardware.strict=false to use it anyway",
                                       absent=["set hardware.strict=true"]),
    "cuda hardware without a GPU": Case("search.py", ["hardware=cuda"], "CUDA"),
    "execution provider the build lacks": Case("search.py", ["hardware.backend.providers=[NoSuchExecutionProvider]"],
                                               "NoSuchExecutionProvider not in this onnxruntime"),
    "execution providers malformed": Case("search.py", ["hardware.backend.providers=[{nam: x}]"],
                                          "hardware.backend.providers must be a list of execution provider names"),
    # overrides Hydra parses (also run as subprocesses below)
    "unknown group option": Case("search.py", ["space=nope"], "Could not find 'space/nope'; available options: "
                                                             "cifar, mnasnet, tiny"),
    "override syntax": Case("search.py", ["solver.lambda_=["], "cannot parse the override 'solver.lambda_=['"),
    "unknown key": Case("search.py", ["solver.lamda=0.2"], "Could not override 'solver.lamda'"),
    "setting the solver does not take": Case("search.py", ["+solver.foo=1"], "solver.foo is not a setting of "
                                                                             "nas.search.solvers.SinglePathSearch"),
    "setting the trainer does not take": Case("search.py", ["+trainer.foo=1"], "trainer.foo is not a setting of "
                                                                               "pytorch_lightning.Trainer"),
    "setting the data module does not take": Case("train.py", ["arch=largest", "+data.foo=1"],
                                                  "data.foo is not a setting of nas.search.data.DigitsDataModule"),
    "run dir under a file": Case("search.py", [f"hydra.run.dir={f('a_file')}/run"], "is a file, not a folder"),
    # train.py
    "train without arch": Case("train.py", [], "arch is required but not set"),
    "train with an execution provider the build lacks": Case(
        "train.py", ["arch=largest", "hardware.backend.providers=[NoSuchExecutionProvider]"],
        "NoSuchExecutionProvider not in this onnxruntime"),
    "train arch string that is no block": Case("train.py", ["arch=hello_world | ir_r1_kX"],
                                               "is neither an existing arch.json, nor timm:<model name>"),
    "train arch block that does not parse": Case("train.py", ["arch=ir_blah_blah"], "cannot read blah in block"),
    "train arch file missing": Case("train.py", ["arch=/nonexistent/arch.json"], "does not exist"),
    "train arch file not JSON": Case("train.py", [f"arch={f('bad_arch.json')}"], "not valid JSON"),
    "train max_epochs 0": Case("train.py", ["arch=ir_blah_blah", "trainer.max_epochs=0"],
                               "trainer.max_epochs must be an integer >= 1"),
    "train cifar10 without root": Case("train.py", ["arch=x.json", "data=cifar10"], "data.root is required"),
}
SUBPROCESS = ["unknown group option", "override syntax", "ckpt truncated", "max_epochs 0", "train without arch"]


def _args(case: Case, files: dict[str, str], tmp_path: Path) -> list[str]:
    args = list(case.args)
    for name, path in files.items():
        args = [a.replace(f"@{name}@", path) for a in args]
    defaults = [f"hydra.run.dir={tmp_path}/run", f"paths.cache_dir={tmp_path}/cache", "progress=false"]
    if case.script == "search.py" and "hardware=" not in " ".join(args):
        defaults.append("hardware.backend.repeats=2")
    named = {a.split("=", 1)[0] for a in args}
    return [d for d in defaults if d.split("=", 1)[0] not in named] + args


def _check(case: Case, code: int, out: str, err: str, tmp_path: Path) -> None:
    assert code == 2, (code, out[-2000:], err[-2000:])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert case.message in errors[0], errors[0]
    assert not any(bad in errors[0] for bad in case.absent), errors[0]
    assert "Traceback" not in out + err
    written = [p for name in RESULT_FILES for p in tmp_path.rglob(name)]
    assert not written, written
    if case.lut_free:
        assert not list(tmp_path.glob("cache/*.json")), "a LUT was profiled before the input was checked"


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_fails_with_one_error_line(name, files, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    if name == "gpu trainer without CUDA" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = _args(case, files, tmp_path)
    monkeypatch.setattr(sys, "argv", [str(ROOT / case.script), *args])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / case.script), run_name="__main__")
    captured = capsys.readouterr()
    _check(case, exit_info.value.code, captured.out, captured.err, tmp_path)


@pytest.mark.parametrize("name", SUBPROCESS)
def test_bad_input_from_the_shell(name, files, tmp_path):
    case = CASES[name]
    proc = run(case.script, *_args(case, files, tmp_path))
    _check(case, proc.returncode, proc.stdout, proc.stderr, tmp_path)


def test_unwritable_run_folder_is_one_error_line(tmp_path):
    if os.geteuid() == 0:
        target = "/sys/spnas-test/run"  # root may write anywhere a mode allows: use a file system that refuses
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        target = str(locked / "run")
    proc = run("search.py", f"hydra.run.dir={target}", f"paths.cache_dir={tmp_path}/cache")
    case = Case("search.py", [], "cannot create files in")
    _check(case, proc.returncode, proc.stdout, proc.stderr, tmp_path)
    assert not Path(target).exists()


def test_at_least_thirty_distinct_cases():
    assert len(CASES) + 1 >= 30
    assert len({(c.script, tuple(c.args)) for c in CASES.values()}) == len(CASES)
