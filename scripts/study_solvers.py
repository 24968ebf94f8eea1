"""Alias of ``spnas study-solvers``: ``python scripts/study_solvers.py [key=value ...]`` runs
:mod:`nas.entries.study_solvers`."""

from __future__ import annotations

from nas.entries.study_solvers import main

if __name__ == "__main__":
    main()
