"""Alias of ``spnas study-truth``: ``python scripts/study_truth.py [key=value ...]`` runs
:mod:`nas.entries.study_truth`."""

from __future__ import annotations

from nas.entries.study_truth import main

if __name__ == "__main__":
    main()
