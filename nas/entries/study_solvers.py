"""Study A: solvers against a cloud of random networks on Fashion-MNIST (docs/evidence.md); resumable.

    spnas study-solvers                        # run or continue; nas/conf/study_solvers.yaml
    spnas study-solvers seeds=[0] cloud.size=10
    spnas study-solvers report_only=true       # table and figure from the records

Overrides are Hydra's ``key=value`` on nas/conf/study_solvers.yaml. Every finished network appends one record to
``records``; re-running skips them. Run it from the project folder (the default paths are relative to it).
"""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return

    from nas.cli import compose_config, main_guard
    from nas.io import read_jsonl
    from nas.studies.solver_study import SolverStudy, study_config, write_report

    def run() -> None:
        cfg = study_config(compose_config("study_solvers", args, with_choices=True), args)
        if cfg.report_only:
            records = read_jsonl(cfg.records, "study network")
        else:
            records = SolverStudy(cfg).run()
        print(write_report(records, cfg))
        print(f"records {cfg.records}; table {cfg.table}; figure {cfg.figure}")

    main_guard(run)

