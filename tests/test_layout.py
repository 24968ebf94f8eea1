"""The package layout: one-way imports between the parts, and no module name used in two folders."""

from __future__ import annotations

import logging
from collections import Counter

from importlinter.cli import lint_imports

from tests.conftest import ROOT


def test_import_contracts_hold():
    # the contracts live in pyproject.toml ([tool.importlinter]); a reversed or circular import fails here
    # import-linter configures logging with disable_existing_loggers: switch back on the loggers it switches off,
    # or every later test in this process loses the records of nas.* (caplog sees nothing)
    before = {name: lg.disabled for name, lg in logging.root.manager.loggerDict.items()
              if isinstance(lg, logging.Logger)}
    try:
        assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0
    finally:
        for name, disabled in before.items():
            logging.getLogger(name).disabled = disabled


def test_no_module_name_repeats_across_folders():
    names = Counter(path.stem for folder in ("nas", "models") for path in (ROOT / folder).rglob("*.py")
                    if path.stem != "__init__")
    assert [name for name, count in names.items() if count > 1] == []


def test_no_backend_switch_and_scripts_keep_only_their_command_line():
    # figures are drawn on matplotlib's Figure API (nas.io.agg_figure): a library never switches its caller's
    # backend; the logic of every script lives in the package (nas.entries, nas.benchmarks)
    switches = [str(p.relative_to(ROOT)) for folder in ("nas", "scripts") for p in (ROOT / folder).rglob("*.py")
                if "matplotlib.use(" in p.read_text()]
    assert switches == []
    long_scripts = {p.name: n for p in (ROOT / "scripts").glob("*.py")
                    if (n := len(p.read_text().splitlines())) > 40}
    assert long_scripts == {}
