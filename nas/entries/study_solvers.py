"""Study A: solvers against a cloud of random networks on Fashion-MNIST (docs/evidence.md); resumable.

    spnas study-solvers                        # run or continue; nas/conf/study_solvers.yaml
    spnas study-solvers seeds=[0] cloud.size=10
    spnas study-solvers report_only=true       # table and figure from the records

Overrides are Hydra's ``key=value`` on nas/conf/study_solvers.yaml. Every finished network appends one record to
``records``; re-running skips them. Run it from the project folder (the default paths are relative to it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def study_command(doc: str, config_name: str, run: Callable[[Any], None]) -> None:
    """The command line of a study: ``--help`` prints ``doc``; otherwise ``nas/conf/<config_name>.yaml`` composed
    with the arguments (:func:`nas.studies.solver_study.study_config`) is handed to ``run``, bad input ending in one
    ``error:`` line."""
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(doc)
        return
    from nas.cli import compose_config, main_guard
    from nas.studies.solver_study import study_config
    from nas.threads import apply_thread_budget

    def study() -> None:
        cfg = compose_config(config_name, args, with_choices=True)
        apply_thread_budget(cfg)  # this process' threads (its jobs, one at a time, take their own)
        run_until_stopped(run, study_config(cfg, args))

    main_guard(study)


def run_until_stopped(run: Callable[[Any], None], cfg: Any) -> None:
    """``run(cfg)``; SIGTERM or Ctrl-C stops it after the running search or retraining has saved its checkpoint
    (:func:`nas.cli.run_entry`), saying what is kept and how to continue (exit 143 / 130)."""
    import signal

    from nas.cli import SignalStop, stop_on_signals
    from nas.errors import Interrupted
    from nas.run_shell import command_line

    try:
        with stop_on_signals():
            run(cfg)
    except SignalStop as stop:
        raise Interrupted(stop.signum, f"stopped by {signal.Signals(stop.signum).name}: every finished network is "
                          f"in {cfg.records}, and the running search or retraining saved its last checkpoint\n"
                          f"resume with: {command_line()}") from None


def run_solver_study(cfg: Any) -> None:
    """Run or continue Study A (or only rebuild its report), then print the table."""
    from nas.io import read_jsonl
    from nas.studies.solver_study import SolverStudy, write_report

    records = read_jsonl(cfg.records, "study network") if cfg.report_only else SolverStudy(cfg).run()
    print(write_report(records, cfg))
    print(f"records {cfg.records}; table {cfg.table}; figure {cfg.figure}")


def main() -> None:
    """``spnas study-solvers [key=value ...]``."""
    study_command(__doc__, "study_solvers", run_solver_study)
