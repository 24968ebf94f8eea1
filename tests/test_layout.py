"""The package layout: one-way imports between the parts, and no module name used in two folders."""

from __future__ import annotations

from collections import Counter

from importlinter.cli import lint_imports

from tests.conftest import ROOT


def test_import_contracts_hold():
    # the contracts live in pyproject.toml ([tool.importlinter]); a reversed or circular import fails here
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_no_module_name_repeats_across_folders():
    names = Counter(path.stem for folder in ("nas", "models") for path in (ROOT / folder).rglob("*.py")
                    if path.stem != "__init__")
    assert [name for name, count in names.items() if count > 1] == []
