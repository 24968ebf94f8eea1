"""Study B: Study A's best searched networks retrained longer, against the published Fashion-MNIST rows.

    spnas study-anchors                  # nas/conf/study_anchors.yaml; resumable
    spnas study-anchors select.top=2 recipe=fashion_mnist

Overrides are Hydra's ``key=value`` on nas/conf/study_anchors.yaml. Run it from the project folder (the default
paths are relative to it) after spnas study-solvers.
"""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return

    from nas.cli import compose_config, main_guard
    from nas.studies.anchor_study import AnchorStudy, write_anchor_report
    from nas.studies.solver_study import study_config

    def run() -> None:
        cfg = study_config(compose_config("study_anchors", args, with_choices=True), args)
        records = AnchorStudy(cfg).run()
        print(write_anchor_report(records, cfg))
        print(f"records {cfg.records}; table {cfg.table}")

    main_guard(run)

