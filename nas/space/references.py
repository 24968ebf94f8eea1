"""Architecture references: what ``arch=`` accepts (``train.py``, ``scripts/latency.py``).

* a path to an ``arch.json`` written by a search (``.json``, or any existing file);
* ``timm:<model name>``: one of timm's MBConv networks, read from timm's own ``arch_def`` (no weights are
  downloaded), e.g. ``timm:spnasnet_100`` and ``timm:mnasnet_100`` in ``space=mnasnet``;
* block strings, of any length: the project's one-line timm string (``ds_r1_k3_s1_c16 | ir_r1_k5_s2_e6_c24 ...``)
  or timm's ``arch_def`` verbatim (``[['ds_r1_k3_s1_c16_noskip'], ['ir_r3_k3_s2_e3_c24'], ...]``, ``r > 1``
  repeats and ``_noskip`` included);
* ``smallest`` / ``largest``: the space's extremes.

A network that does not fit the space is one :class:`~nas.errors.ArchitectureError` naming the first block
that does not fit and why.
"""

from __future__ import annotations

from pathlib import Path

from nas.errors import ArchitectureError
from nas.space.architecture import Architecture
from nas.space.search_space import SearchSpace

TIMM_PREFIX = "timm:"
_BLOCK_STARTS = ("ir_", "ds_", "[")


def _is_file(text: str) -> bool:
    """``Path(text).is_file()`` that is ``False`` instead of ``OSError`` for texts no file can be named by
    (longer than the file-name limit, NUL bytes, ...)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def load_architecture(reference: str | Path, space: SearchSpace, in_channels: int = 3,
                      num_classes: int = 1000) -> Architecture:
    """The architecture of ``space`` that ``reference`` names (see the module docstring for the forms).

    ``in_channels`` and ``num_classes`` are the data shape; they matter for ``timm:`` references only (timm's
    parameter count, checked against the space's network, depends on them).
    """
    text = str(reference).strip()
    if not text:
        raise ArchitectureError("arch= is empty; pass an arch.json, a timm string or timm:<model name>")
    if text.startswith(TIMM_PREFIX):
        from nas.space.timm_interop import architecture_from_timm_model

        return architecture_from_timm_model(text[len(TIMM_PREFIX):].strip(), space, in_channels, num_classes)
    if text in ("smallest", "largest"):
        return getattr(space, text)()
    if text.endswith(".json") or _is_file(text):
        if not _is_file(text):
            raise ArchitectureError(f"architecture file {text} does not exist; pass the arch.json written by "
                                    "search.py (it lies in the run's output folder)")
        arch = Architecture.load(text)
        if arch.space_name and arch.space_name != space.name:
            raise ArchitectureError(f"{text} was derived in space '{arch.space_name}', but space '{space.name}' is "
                                    f"selected; add the override space={arch.space_name}")
        return arch.validate(space)
    if text.startswith(_BLOCK_STARTS):
        from nas.space.timm_interop import architecture_from_timm_string

        return architecture_from_timm_string(text, space)
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise ArchitectureError(f"arch={shown!r} is neither an existing arch.json, nor timm:<model name>, nor block "
                            "strings (ds_.../ir_..., or timm's [[...], ...] arch_def), nor smallest/largest")
