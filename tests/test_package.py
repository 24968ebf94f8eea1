"""The installable package: the wheel holds the configs, the ``spnas`` command and the licence; the command's
subcommands are listed, and a bad command line is one ``error:`` line with exit status 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nas.cli import CONFIG_DIR
from nas.command import COMMANDS
from tests.conftest import ROOT

# what a wheel is built from (the rest of the checkout, e.g. outputs/, is not copied)
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "nas", "models", "hydra_plugins"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel built offline (no build isolation, no downloads) from a copy of the sources."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = (tmp / "dist").glob("spnas-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_wheel_holds_every_config(wheel):
    names = set(wheel.namelist())
    assert {"nas/conf/search.yaml", "nas/conf/space/tiny.yaml", "nas/conf/hydra/launcher/slurm.yaml"} <= names
    configs = {path.relative_to(CONFIG_DIR.parent.parent).as_posix() for path in CONFIG_DIR.rglob("*.yaml")}
    assert len(configs) > 50
    assert configs <= names, sorted(configs - names)


def test_wheel_holds_the_packages_the_command_and_the_licence(wheel):
    names = set(wheel.namelist())
    assert {"nas/command.py", "nas/cli.py", "nas/entries/hydra_apps.py", "models/child.py",
            "hydra_plugins/spnas_optuna_sweeper/optuna_sweeper.py"} <= names
    assert not any(name.startswith(("tests/", "scripts/", "outputs/")) for name in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "[console_scripts]" in text and "spnas = nas.command:main" in text
    licences = [n for n in names if ".dist-info/" in n and n.rsplit("/", 1)[-1] == "LICENSE"]
    assert licences, sorted(n for n in names if ".dist-info/" in n)
    assert "Apache License" in wheel.read(licences[0]).decode()
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    meta = wheel.read(metadata).decode()
    assert "License-Expression: Apache-2.0" in meta
    for requirement in ("torchmetrics", "joblib", "PyYAML"):
        assert f"Requires-Dist: {requirement}" in meta, requirement


def spnas(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``spnas <args>`` as ``python -m nas.command`` of this checkout, run from ``cwd``."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "nas.command", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_help_lists_every_subcommand(tmp_path):
    proc = spnas("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name in ("search", "train", "subnet-search", "hyperpower", "profile-lut", "export-ops",
                 "validate-runtime-model", "latency", "popdb", "evaluate-predictor", "gpu-check"):
        assert name in COMMANDS
        assert sum(line.split()[:1] == [name] for line in lines) == 1, name
    assert not list(tmp_path.iterdir())


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return errors[0]


def test_unknown_subcommand_is_one_error_line_naming_the_valid_ones(tmp_path):
    error = one_error_line(spnas("serch", "trainer.max_epochs=1", cwd=tmp_path))
    assert "'serch'" in error
    assert all(name in error for name in COMMANDS)
    assert "search" in one_error_line(spnas(cwd=tmp_path))  # no command at all


def test_bad_override_of_a_subcommand_is_one_error_line(tmp_path):
    error = one_error_line(spnas("search", "space=nope", cwd=tmp_path))
    assert "Could not find 'space/nope'; available options: cifar, mnasnet, tiny" in error
    error = one_error_line(spnas("popdb", "thresold=0.1", cwd=tmp_path))
    assert "thresold" in error
    assert not list(tmp_path.iterdir())  # nothing written: no outputs/ folder


def test_subcommand_help_is_that_commands_help(tmp_path):
    proc = spnas("search", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "search is powered by Hydra" in proc.stdout and "space: cifar, mnasnet, tiny" in proc.stdout


def test_the_sweeper_plugin_loads_without_the_tune_extra(tmp_path):
    # Hydra imports every hydra_plugins module at start-up: without Optuna (pip install spnas, no [tune]) the
    # plugin must still import, or every command prints Hydra's "Error importing ... plugin" warning
    code = ("import sys; sys.modules['optuna'] = None\n"
            "import hydra_plugins.spnas_optuna_sweeper.optuna_sweeper as plugin\n"
            "assert 'optuna' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_hyperpower_without_the_tune_extra_is_one_error_line(tmp_path):
    code = ("import sys; sys.modules['optuna'] = None\n"
            "from nas.command import main\n"
            f"main(['hyperpower', 'hyperpower.constraints.memory_mb=0.6', 'hydra.run.dir={tmp_path}/run'])\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert "pip install 'spnas[tune]'" in one_error_line(proc)


def test_entry_command_is_the_checkouts_script_else_the_installed_subcommand(tmp_path, monkeypatch):
    import nas.cli

    assert nas.cli.entry_command("search") == [sys.executable, str(ROOT / "search.py")]
    (tmp_path / "search.py").write_text("")  # a folder like site-packages: no project file beside it
    monkeypatch.setattr(nas.cli, "ENTRY_DIR", tmp_path)
    assert nas.cli.entry_command("subnet_search") == [sys.executable, "-m", "nas.command", "subnet-search"]
    assert nas.cli.entry_command("search") == [sys.executable, "-m", "nas.command", "search"]


def test_every_entry_point_has_the_one_cache_default(monkeypatch, tmp_path):
    """One ``paths`` group: every command caches LUTs in the same folder, whatever the working directory."""
    from nas.cli import compose_config

    monkeypatch.delenv("SPNAS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    names = ["search", "train", "profile", "latency", "subnet_search", "hyperpower", "validate", "export_ops",
             "evaluate_predictor"]
    folders = {name: compose_config(name, []).paths.cache_dir for name in names}
    assert set(folders.values()) == {str(tmp_path / "xdg" / "spnas")}, folders
    monkeypatch.setenv("SPNAS_CACHE_DIR", str(tmp_path / "mine"))
    assert {compose_config(name, []).paths.cache_dir for name in names} == {str(tmp_path / "mine")}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("override, message", [
    ("space=nope", "Could not find 'space/nope'"),
    ("nosuchkey=1", "nosuchkey"),
    ("space=[", "cannot parse the override 'space=['"),
])
def test_every_command_refuses_a_bad_command_line_in_one_line(command, override, message, tmp_path, capsys,
                                                               monkeypatch):
    """Each command, run as ``spnas <command>`` in this process: an unknown group option, an unknown key, a broken
    override. One ``error:`` line, exit 2, nothing written."""
    from hydra.core.global_hydra import GlobalHydra

    from nas.command import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as exit_info:
        main([command, override])
    GlobalHydra.instance().clear()
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(errors) == 1, err[-2000:]
    assert message in errors[0] and "Traceback" not in err
    assert not list(tmp_path.iterdir())
