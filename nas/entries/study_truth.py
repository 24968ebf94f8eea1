"""Truth study: supernet-measured error against the retrained test error of Study A's networks and of networks
of sub-network search fronts (issue 19).

    spnas study-truth                              # run or continue; nas/conf/study_truth.yaml
    spnas study-truth '+variants.t2=["solver.distill=true","solver.distill_temperature=2.0"]'
    spnas study-truth '+variants.bn16=["solver.distill=true","eval.bn_batches=16"]'   # distill's supernet, measured
    spnas study-truth ~variants.sandwich           # drop a variant of the config
    spnas study-truth front.only=true              # only retrain the front networks (run one per core: they split them)
    spnas study-truth report_only=true             # table and figure from the records

Overrides are Hydra's ``key=value`` on nas/conf/study_truth.yaml (a variant is a list of search.py overrides).
Each supernet variant is trained once (a killed training resumes); each (variant, network) pair appends one record
to ``records``; re-running skips them. Run it from the project folder (the default paths are relative to it) after
spnas study-solvers.
"""

from __future__ import annotations

from typing import Any

from nas.entries.study_solvers import study_command


def run_truth_study(cfg: Any) -> None:
    """Run or continue the truth study (or only rebuild its report), then print the table."""
    from nas.io import read_jsonl
    from nas.studies.truth_study import TruthStudy, write_truth_report

    if not cfg.report_only:
        TruthStudy(cfg).run()
    # the report is of every record in the file, those another study process appended meanwhile included
    records = read_jsonl(cfg.records, "truth record")
    print(write_truth_report(records, cfg))
    print(f"records {cfg.records}; table {cfg.table}; figure {cfg.figure}")


def main() -> None:
    """``spnas study-truth [key=value ...]``."""
    study_command(__doc__, "study_truth", run_truth_study)
