"""One Optuna study worked on by several processes: the storage, the shared trial budget, stale trials.

Workers (``spnas hyperpower storage=sqlite:///hp.db study_name=x`` started several times, or several λ sweeps on
one ``hydra.sweeper.storage``) meet in an Optuna storage (:func:`open_storage`). The study ends at ``n_trials``
evaluations in total: before each ask a worker counts the study's evaluations (:func:`evaluations`: complete,
pruned and running trials, what ``optuna.study.MaxTrialsCallback(n_trials, states=...)`` counts; an ask-and-tell
loop has no callbacks, so the count is made here), and after the ask it checks the trial's place
(:func:`claim`): the storage numbers trials in the order they were created, so a trial with ``n_trials`` counted
trials before it is surplus (two workers that counted at the same time) and is failed, never evaluated. Failed
trials (a stopped evaluation, a surplus ask) are not evaluations. Each trial names its worker (host and process id,
:func:`mark_worker`), so a worker that starts fails the running trials of dead processes on its host
(:func:`fail_dead_workers`) and leaves the running trials of live ones alone.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.errors import ConfigError

#: the states that use up the budget: finished evaluations and the ones under way
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
#: seconds a SQLite writer waits for another worker's lock before failing
SQLITE_TIMEOUT_S = 120
#: tries to open an RDB storage whose tables another worker may be creating at the same moment
ATTEMPTS = 5


def check_storage(url: Any, setting: str = "storage") -> str | None:
    """``None`` (the default storage) or the storage as a string: an RDB URL (``sqlite:///hp.db``,
    ``postgresql://...``) or an Optuna journal file (``*.journal``); anything else is a :class:`ConfigError`."""
    if url is None:
        return None
    text = str(url).strip()
    if "://" in text or text.endswith(".journal"):
        return text
    raise ConfigError(f"{setting}={url!r} is neither an Optuna storage URL (e.g. sqlite:///hp.db, "
                      f"postgresql://user@host/db) nor a journal file (<path>.journal)")


def redact(url: str) -> str:
    """The storage URL without its password (for logs and summary files)."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}" if ":" in credentials else url


def open_storage(url: str, setting: str = "storage") -> optuna.storages.BaseStorage:
    """The Optuna storage of ``url`` (:func:`check_storage`): an ``RDBStorage`` (SQLite writers wait up to
    :data:`SQLITE_TIMEOUT_S` for each other's locks) or a ``JournalStorage`` on a file (file locks: several
    processes on one machine or a shared file system). One that cannot be opened is a :class:`ConfigError`."""
    text = check_storage(url, setting)
    assert text is not None
    if text.startswith("sqlite:///") and text != "sqlite:///:memory:":
        folder = Path(text[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise ConfigError(f"cannot open {setting}={text}: the folder {folder} does not exist; create it or "
                              "choose another path")
    for attempt in range(ATTEMPTS):
        try:
            if "://" not in text:
                from optuna.storages.journal import JournalFileBackend

                Path(text).parent.mkdir(parents=True, exist_ok=True)
                return optuna.storages.JournalStorage(JournalFileBackend(text))
            engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if text.startswith("sqlite") else None
            return optuna.storages.RDBStorage(text, engine_kwargs=engine)
        except (ImportError, ValueError, OSError, RuntimeError) as err:
            raise ConfigError(f"cannot open {setting}={redact(text)}: {type(err).__name__}: {err}") from None
        except Exception as err:  # noqa: BLE001 - sqlalchemy's (bad URL, missing driver, unreachable server)
            if not type(err).__module__.startswith("sqlalchemy"):
                raise
            # two workers creating the tables of a new database at once: the loser finds them made; try again
            if attempt + 1 == ATTEMPTS or type(err).__name__ not in ("OperationalError", "IntegrityError"):
                raise ConfigError(f"cannot open {setting}={redact(text)}: {str(err).splitlines()[0]}") from None
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def evaluations(study: optuna.Study) -> int:
    """Trials of the study that use up the budget (:data:`COUNTED`)."""
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def claim(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """Whether the just-asked ``trial`` is within the first ``n_trials`` evaluations of the study; if not, it is
    failed (user attribute ``surplus``) and must not be evaluated."""
    before = sum(1 for t in study.get_trials(deepcopy=False, states=COUNTED) if t.number < trial.number)
    if before < n_trials:
        return True
    trial.set_user_attr("surplus", True)
    study.tell(trial, state=TrialState.FAIL)
    return False


def worker_id() -> dict[str, Any]:
    """This process as a worker: host name and process id."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def mark_worker(trial: optuna.Trial) -> None:
    """Record on ``trial`` which process evaluates it (:func:`fail_dead_workers` reads it)."""
    trial.set_user_attr("worker", worker_id())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_workers(study: optuna.Study) -> list[int]:
    """Fail the running trials whose worker was a process of this host that no longer exists (killed without a
    chance to fail its trial); the trial numbers. Trials of live processes and of other hosts are left running."""
    host, failed = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") == host and worker.get("pid") != os.getpid() and not _alive(int(worker["pid"])):
            study.tell(t.number, state=TrialState.FAIL)
            failed.append(t.number)
    return failed
