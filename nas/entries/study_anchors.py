"""Study B: Study A's best searched networks retrained longer, against the published Fashion-MNIST rows.

    spnas study-anchors                  # nas/conf/study_anchors.yaml; resumable
    spnas study-anchors select.top=2 recipe=fashion_mnist

Overrides are Hydra's ``key=value`` on nas/conf/study_anchors.yaml. Run it from the project folder (the default
paths are relative to it) after spnas study-solvers.
"""

from __future__ import annotations

from typing import Any

from nas.entries.study_solvers import study_command


def run_anchor_study(cfg: Any) -> None:
    """Run or continue Study B, then print its table."""
    from nas.studies.anchor_study import AnchorStudy, write_anchor_report

    records = AnchorStudy(cfg).run()
    print(write_anchor_report(records, cfg))
    print(f"records {cfg.records}; table {cfg.table}")


def main() -> None:
    """``spnas study-anchors [key=value ...]``."""
    study_command(__doc__, "study_anchors", run_anchor_study)
