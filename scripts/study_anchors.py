"""Alias of ``spnas study-anchors``: ``python scripts/study_anchors.py [key=value ...]`` runs
:mod:`nas.entries.study_anchors`."""

from __future__ import annotations

from nas.entries.study_anchors import main

if __name__ == "__main__":
    main()
