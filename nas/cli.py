"""Entry-point helpers: every bad input ends in one ``error: ...`` line on stderr and exit status 2.

Two layers:

* :func:`hydra_entry` runs before ``@hydra.main``: it composes the command line's overrides itself, so a wrong
  group option (``space=nope``), bad override syntax or an unknown key, and a run folder that cannot be created
  (``hydra.run.dir=<read-only>``), are reported in one line instead of Hydra's multi-line message (exit 1).
  Command lines with flags (``-m``, ``--cfg``, ``--help``, ...) go to Hydra unchecked: sweeps use a syntax
  (``a=1,2``) that plain composition rejects, and the flags print Hydra's own output.
* :func:`main_guard` wraps the task function: :class:`~nas.errors.NASError` (input errors with a message that
  names the fix), errors of Hydra's ``instantiate`` and of OmegaConf, and write errors of the file system become
  one line; :class:`~nas.errors.Interrupted` (a run stopped by a signal after saving a checkpoint) prints what was
  saved and how to resume, and exits with ``128 + signum``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

from nas.errors import ConfigError, Interrupted, NASError

if TYPE_CHECKING:
    import resource

    from omegaconf import DictConfig

    from nas.run_shell import Task

T = TypeVar("T")
log = logging.getLogger("nas")

#: the Hydra configs, shipped inside the package (nas/conf): the one place that knows where they are
CONFIG_DIR = Path(__file__).resolve().parent / "conf"
#: the folder of the entry scripts (search.py, train.py, ...) in a source checkout; an installed wheel has none
ENTRY_DIR = Path(__file__).resolve().parents[1]
# errors of the environment, not of the program: reported in one line like an input error
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                       errno.EEXIST, errno.ENOENT}


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` (one line) to stderr and exit with status 2."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(2)


def one_line(message: str) -> str:
    """Join a multi-line message into one line (Hydra's option lists become comma-separated)."""
    lines = [line.strip() for line in str(message).splitlines()]
    lines = [line for line in lines if line and not line.startswith(("full_key:", "object_type=", "reference_type="))]
    out: list[str] = []
    listing = False
    for line in lines:
        if listing and not line.endswith(":"):
            out[-1] += (" " if out[-1].endswith(":") else ", ") + line
            continue
        listing = line.endswith(":")
        out.append(line)
    text = "; ".join(out)
    return re.sub(r"\s+", " ", text).strip()


def describe_config_error(err: Exception) -> str:
    """One line for an error of OmegaConf / Hydra about the configuration."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(err, MissingMandatoryValue):
        return missing_value_message(str(getattr(err, "full_key", None) or "a value"))
    if isinstance(err, MissingConfigException):
        first = re.sub(r"^In '[^']*': ", "", str(err).strip().splitlines()[0])
        options = f"; available options: {', '.join(sorted(err.options))}" if err.options else ""
        return f"{first}{options}"
    if isinstance(err, ValueError) and "Config group override must be a string" in str(err):
        return f"{one_line(str(err))}; to drop a config group write ~<group> (e.g. ~logger)"
    if isinstance(err, OverrideParseException):
        return f"cannot parse the override {err.override!r}: {one_line(err.message)}"
    return one_line(str(err)).replace(".; ", "; ")


def missing_value_message(key: str) -> str:
    """What to tell a user who left a mandatory (``???``) value unset."""
    hints = {
        "data.root": "data.root=<folder holding the dataset> (CIFAR: the folder containing cifar-10-batches-py/ or "
                     "cifar-100-python/, or add data.download=true to fetch it there; MNIST: the folder with its four "
                     "IDX files)",
        "arch": "arch=<run folder>/arch.json (written by search.py) or a quoted timm string",
        "out": "out=<output path>",
        "hardware.target_ms": "hardware.target_ms=<runtime target in ms>",
    }
    return f"{key} is required but not set; add the override {hints.get(key, key + '=<value>')}"


def main_guard(run: Callable[[], T]) -> T:
    """Call ``run``; bad input prints one ``error:`` line and exits 2, an interrupted run exits ``128 + signum``."""
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return run()
    except NASError as err:
        fail(str(err))
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        sys.exit(err.exit_code)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, NASError):
            fail(str(cause))
        fail(f"{one_line(str(err))} (check the overrides of that config group)")
    except (OmegaConfBaseException, HydraException) as err:
        fail(describe_config_error(err))
    except OSError as err:
        if err.errno in (_ENVIRONMENT_ERRNOS - {errno.ENOENT, errno.EEXIST}):
            fail(f"cannot write {err.filename or 'an output file'}: {err.strerror}; choose a writable folder "
                 "(hydra.run.dir=..., paths.cache_dir=...) or free space")
        raise


def hydra_entry(main: Callable[[], object], config_name: str, argv: Sequence[str] | None = None) -> None:
    """Check the command line composes and its run folder can be created, then call the ``@hydra.main`` ``main``."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        check_command_line(config_name, args)
    except NASError as err:
        fail(str(err))
    main()


def check_command_line(config_name: str, args: Sequence[str]) -> None:
    """Compose ``config_name`` with ``args`` as Hydra will, raising :class:`ConfigError` with one line if it fails.

    Also checks the ``threads`` setting (:mod:`nas.threads`), and that the run folder (``hydra.run.dir``) can be
    created, as Hydra does next, so an unwritable one is a clear error.
    """
    if any(arg.startswith("-") for arg in args):
        return  # Hydra flags (-m sweeps, --cfg, --help, ...): Hydra's own handling
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=args, return_hydra_config=True)
            run_dir = OmegaConf.select(cfg, "hydra.run.dir")
    except (HydraException, OmegaConfBaseException, ValueError) as err:  # ValueError: e.g. group=null
        raise ConfigError(describe_config_error(err)) from None
    finally:
        GlobalHydra.instance().clear()
    check_target_settings(cfg)
    from nas.threads import parse_setting

    parse_setting(cfg.get("threads"))  # nas.threads: refused here, before the command's heavy imports
    if run_dir:
        check_writable_dir(str(run_dir), "hydra.run.dir")


def check_target_settings(cfg: DictConfig, path: str = "") -> None:
    """Every node with a ``_target_`` holds only settings its target takes: ``+solver.foo=1`` would otherwise end
    in a ``TypeError`` when the node is instantiated, after data and LUT were prepared. Raises :class:`ConfigError`
    naming the key and the settings the target takes. Targets with ``**kwargs`` or that cannot be imported (their
    own check reports that) are skipped; the ``hydra`` node is Hydra's."""
    import inspect

    from omegaconf import OmegaConf

    for key in cfg.keys():
        name = f"{path}.{key}" if path else str(key)
        if name == "hydra":
            continue
        node = cfg._get_node(key)
        if OmegaConf.is_dict(node):
            check_target_settings(node, name)  # type: ignore[arg-type]
    target = cfg._get_node("_target_") if "_target_" in cfg else None
    if target is None or not isinstance(target._value(), str):
        return
    from hydra._internal.utils import _locate

    try:
        obj = _locate(target._value())
        parameters = inspect.signature(obj).parameters.values()
    except Exception:  # noqa: BLE001 - an unimportable target is reported where it is instantiated
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    takes = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [str(k) for k in cfg.keys() if not str(k).startswith("_") and str(k) not in takes]
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{unknown[0]} is not a setting of {target._value()} (it takes: {', '.join(takes)});"
                          f" remove the override {where}{unknown[0]}=... or fix its name")


def check_writable_dir(path: str, option: str) -> None:
    """Check that ``path`` exists as a writable folder or can be created; :class:`ConfigError` if not.

    Nothing is left behind: a probe folder is created in the nearest existing ancestor and removed (the run
    folder itself is not created here, its name may hold a time stamp that Hydra resolves again).
    """
    import tempfile

    fix = f"choose a folder you can write to, e.g. {option}=outputs/run"
    ancestor = Path(path).absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{option}={path}: {ancestor} is a file, not a folder; {fix}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".spnas-probe-", dir=ancestor))
    except OSError as err:
        raise ConfigError(f"{option}={path}: cannot create files in {ancestor} ({err.strerror}); {fix}") from None


def entry_command(name: str) -> list[str]:
    """The command that runs entry point ``name`` (``search``, ``train``, ...) in a new process of this Python.

    The checkout's script when there is one (it imports this checkout's ``nas``), else the installed ``spnas``
    command's subcommand (``python -m nas.command <name>``).
    """
    script = ENTRY_DIR / f"{name}.py"
    if script.is_file() and (ENTRY_DIR / "pyproject.toml").is_file():  # not a stray search.py in site-packages
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "nas.command", name.replace("_", "-")]


def run_entry(name: str, args: Sequence[str], log_path: str | os.PathLike,
              jobs: int = 1) -> tuple[int, resource.struct_rusage]:
    """Run entry point ``name`` (:func:`entry_command`) with ``args`` in a new process of this Python, its output
    (stdout and stderr) into ``log_path`` (its folder is created). Returns the exit status and the process'
    resource usage (:func:`os.wait4`): CPU time ``ru_utime + ru_stime`` (s), peak memory ``ru_maxrss`` (KiB on
    Linux), the process' own, whatever else this one holds. ``jobs``: how many such processes the caller runs side
    by side; each then gets its share of the CPUs in ``OMP_NUM_THREADS`` (:func:`nas.threads.child_environment`;
    one alone takes its own budget, :mod:`nas.threads`). While it waits, this process is out of the registry of
    spnas processes (:func:`nas.threads.waiting_on_children`): its child does not count it.

    Stopped by :class:`SignalStop` (inside :func:`stop_on_signals`) while the process runs, it hands SIGTERM on to
    the process (a Ctrl-C in a terminal reaches the whole process group already), waits until the process has
    saved and stopped, and raises the :class:`SignalStop` again."""
    import signal
    import subprocess

    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    from nas.threads import child_environment, waiting_on_children

    env = {**child_environment(jobs), "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    with open(log_path, "w") as handle, waiting_on_children():  # the idle parent is not counted beside its child
        proc = subprocess.Popen([*entry_command(name), *args], stdout=handle, stderr=subprocess.STDOUT, env=env)
        try:
            _, wait_status, usage = os.wait4(proc.pid, 0)
        except SignalStop as stop:
            if stop.signum == signal.SIGTERM:
                proc.send_signal(signal.SIGTERM)
            os.wait4(proc.pid, 0)
            raise
        proc.returncode = os.waitstatus_to_exitcode(wait_status)
    return proc.returncode, usage


class CommandLineParser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` whose errors (an unknown flag, a value of the wrong type, a missing
    argument) are one ``error:`` line and exit status 2 (:func:`fail`), like every other command's bad input;
    ``--help`` prints the parser's help as usual."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def compose_config(config_name: str, overrides: Sequence[str] = (), with_choices: bool = False,
                   keep_global: bool = False) -> DictConfig:
    """``nas/conf/<config_name>.yaml`` composed with ``overrides`` as the command line would (no run folder, no
    ``hydra:`` node); a bad override is a :class:`ConfigError` with one line. ``with_choices``: add ``choices``,
    Hydra's record of which option of each config group was chosen (to pass them on to another command).
    ``keep_global``: inside a running Hydra app, compose with its Hydra instance instead of replacing it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if keep_global and GlobalHydra.instance().is_initialized():
        try:
            return compose(config_name, overrides=list(overrides))
        except (HydraException, OmegaConfBaseException, ValueError) as err:
            raise ConfigError(describe_config_error(err)) from None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            if not with_choices:
                return compose(config_name, overrides=list(overrides))
            from omegaconf import OmegaConf, open_dict

            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
            choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
            with open_dict(cfg):
                del cfg["hydra"]
                cfg["choices"] = choices
            return cfg
    except (HydraException, OmegaConfBaseException, ValueError) as err:  # ValueError: e.g. group=null
        raise ConfigError(describe_config_error(err)) from None
    finally:
        GlobalHydra.instance().clear()


class SignalStop(BaseException):
    """Raised by :func:`stop_on_signals` inside the guarded block when SIGTERM or SIGINT arrives."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM (SLURM, Kubernetes, ``kill``) and SIGINT (Ctrl-C) into :class:`SignalStop` inside the block, so
    a long-running command can say what it saved and how to resume (:class:`~nas.errors.Interrupted`) instead of
    dying without a word. The previous handlers are restored afterwards; off the main thread nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SignalStop(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def resume_command(setting: str, value: str) -> str:
    """The command line of this process with ``setting=value`` in place of any earlier ``setting=...``."""
    from nas.run_shell import command_line

    return command_line(setting, value)


def hydra_command(task: Task | Callable[[DictConfig], object], config_name: str) -> tuple[Callable[[], object],
                                                                                           Callable[[], None]]:
    """The two entry functions of a Hydra command that runs ``task`` on ``nas/conf/<config_name>.yaml`` in the run
    shell (:func:`nas.run_shell.run_task`: seeding, timing, summary file): ``main``, the ``@hydra.main`` app (bad
    input inside the task is one ``error:`` line, :func:`main_guard`; it returns ``task.returns(result)`` to a
    sweeper), and ``run_command``, which checks the command line first (:func:`hydra_entry`) and then runs
    ``main``. A plain function is a :class:`~nas.run_shell.Task` without a summary file. The config sets
    ``hydra.job.name``, so the log file is named after the command whichever module defines it."""
    import hydra

    from nas.run_shell import Task, run_task

    shelled = task if isinstance(task, Task) else Task(task)

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    def main(cfg: DictConfig) -> object:
        return shelled.returns(main_guard(lambda: run_task(shelled, cfg)))

    def run_command() -> None:
        hydra_entry(main, config_name)

    main.task = shelled  # type: ignore[attr-defined]  # what it runs (tests check every command has one)
    return main, run_command
