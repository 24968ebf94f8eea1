"""Outputs of a sub-network search: ``pareto.json``, one arch file per front member, ``hv.csv``, figures, table.

``pareto.json`` (``format: spnas-pareto``, ``version: 1``) holds, per device, the non-dominated sub-networks
with their architecture (the standard ``spnas-architecture`` format) and objective values, all minimised and in
plain units (``error`` in [0, 1], ``latency_ms``, ``macs_m`` / ``params_m`` in millions). Every member is also
written as ``pareto/<device>/member_XXX.json``, which ``train.py arch=`` loads. It contains no wall times, so
the same seed gives an identical file. It is also the warm-start input of another search (§4.4, Fig 8).
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nas.cost.vocabulary import OBJECTIVE_COSTS
from nas.errors import ArchitectureError, ConfigError
from nas.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json_document
from nas.space.architecture import Architecture
from nas.space.search_space import SearchSpace
from nas.space.timm_interop import timm_record
from nas.subnet_search.encoding import GenomeCodec
from nas.subnet_search.engine import SearchResult
from nas.subnet_search.hypervolume import Normalisation

log = logging.getLogger(__name__)

PARETO_FORMAT = "spnas-pareto"
PARETO_VERSION = 1
# objective -> its name in records and reports: costs by their canonical names (with units, nas.cost.vocabulary)
OUTPUT_NAMES = {"error": "error", "ce": "ce", **OBJECTIVE_COSTS}


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def member_records(result: SearchResult, codec: GenomeCodec, names: Sequence[str],
                   extra: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The front of ``result`` as records (objective values under their output names)."""
    out = []
    for rank, i in enumerate(result.front()):
        arch = codec.decode(result.genes[i])
        objectives = {OUTPUT_NAMES[n]: float(v) for n, v in zip(names, result.F[i])}
        out.append({"rank": rank, "key": result.keys[i], "genes": [int(g) for g in result.genes[i]],
                    "objectives": objectives, "architecture": arch.to_dict(timm_record(arch, codec.space)),
                    **(extra or {})})
    return out


def write_pareto(out: Path, header: Mapping[str, Any], results: Sequence[SearchResult], codec: GenomeCodec,
                 names: Sequence[str], norms: Mapping[str, Normalisation],
                 fingerprints: Mapping[str, str], arch_files: bool = True) -> dict[str, Any]:
    """Write ``pareto.json`` and (``arch_files``) ``pareto/<device>/member_XXX.json``; return the pareto document."""
    devices = {}
    for result in results:
        members = member_records(result, codec, names)
        folder = Path("pareto") / safe_name(result.target)
        for m in members if arch_files else ():
            rel = folder / f"member_{m['rank']:03d}.json"
            arch = Architecture.from_dict(m["architecture"]).with_meta(
                source_search="subnet_search", device=result.target, **m["objectives"])
            arch.save(out / rel, timm=timm_record(arch, codec.space))
            m["arch_file"] = rel.as_posix()
        final_hv = result.history[-1].hypervolume if result.history else 0.0
        devices[result.target] = {"lut_fingerprint": fingerprints.get(result.target, ""),
                                  "validations": result.consumed, "generations": len(result.history),
                                  "hypervolume": final_hv, "hypervolume_normalisation": norms[result.target].describe(),
                                  "stopped_early": result.stopped_early, "members": members}
    doc = {"format": PARETO_FORMAT, "version": PARETO_VERSION, **header, "devices": devices}
    atomic_write_json(out / "pareto.json", doc)
    return doc


def write_hv_csv(path: Path, results: Sequence[SearchResult], norms: Mapping[str, Normalisation]) -> None:
    """Hypervolume per generation; the normalisation and reference point of each device in comment lines."""
    lines = ["# hypervolume of the non-dominated validated sub-networks after each generation (source 002 §4.1),",
             "# computed by pymoo.indicators.hv.HV on normalised objectives f' = (f - lower) / (upper - lower)"]
    for result in results:
        d = norms[result.target].describe()
        lines.append(f"# device={result.target} objectives={d['objectives']} lower={d['lower']} "
                     f"upper={d['upper']} reference_point={d['reference_point']}")
    lines.append("device,generation,validations,fresh_validations,hypervolume,front_size")
    for result in results:
        for h in result.history:
            lines.append(f"{result.target},{h.generation},{h.validations},{h.fresh},{h.hypervolume:.10g},"
                         f"{h.front_size}")
    atomic_write_text(path, "\n".join(lines) + "\n")


def _savefig(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())


def plot_fronts(path: Path, results: Sequence[SearchResult], names: Sequence[str], title: str = "") -> None:
    """``pareto_front.png``: every validated sub-network and the front, per device (first two objectives)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(results)
    fig = Figure(figsize=(5 * n, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)
    xi, yi = (1, 0) if len(names) > 1 else (0, 0)
    for ax, result in zip(axes[0], results):
        F = np.array(result.F).reshape(-1, len(names))
        front = result.front()
        ax.scatter(F[:, xi], F[:, yi], s=8, c="0.7", label=f"validated ({len(F)})")
        if len(front):
            pts = F[front][np.argsort(F[front, xi])]
            ax.step(pts[:, xi], pts[:, yi], where="post", c="tab:red", lw=1)
            ax.scatter(pts[:, xi], pts[:, yi], s=18, c="tab:red", label=f"Pareto front ({len(front)})")
        ax.set_xlabel(OUTPUT_NAMES[names[xi]])
        ax.set_ylabel(OUTPUT_NAMES[names[yi]])
        ax.set_title(f"{result.target}")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    _savefig(fig, path)


def plot_hv(path: Path, curves: Mapping[str, Sequence[tuple[int, float]]], title: str = "") -> None:
    """``hv_vs_validations.png``: hypervolume against the number of validations, one line per curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, pts in curves.items():
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker=".", label=label)
    ax.set_xlabel("validations (supernet evaluations)")
    ax.set_ylabel("hypervolume (normalised objectives)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _savefig(fig, path)


def format_table(doc: Mapping[str, Any]) -> str:
    """The fronts as a plain-text table (printed at the end of a search)."""
    lines = []
    for device, d in doc["devices"].items():
        members = d["members"]
        cols = list(members[0]["objectives"]) if members else []
        lines.append(f"\nPareto front on {device}: {len(members)} sub-networks of {d['validations']} validated, "
                     f"hypervolume {d['hypervolume']:.4f}")
        lines.append("  #  " + "".join(f"{c:>12}" for c in cols) + "  architecture (every layer)")
        for m in members:
            lines.append(f"{m['rank']:3d}  " + "".join(f"{m['objectives'][c]:12.5g}" for c in cols) + "  " + m["key"])
        if d.get("stopped_early"):
            lines.append(f"  note: {d['stopped_early']}")
    return "\n".join(lines)


def load_warm_start(path: str | os.PathLike, space: SearchSpace, codec: GenomeCodec,
                    device: str | None = None) -> np.ndarray:
    """Genomes of the front members of another run's ``pareto.json`` (§4.4: warm start, Fig 8).

    All devices' fronts are used (members in file order, duplicates dropped) unless ``device`` names one. A
    file of another space is an error naming both digests.
    """
    path = Path(path)
    doc = read_json_document(path, "warm_start", PARETO_FORMAT, PARETO_VERSION, "a pareto.json of subnet_search.py",
                             "pass <other run>/pareto.json")
    if doc.get("space_digest") != space.digest:
        raise ConfigError(f"warm_start {path} was searched in space '{doc.get('space')}' (digest "
                          f"{doc.get('space_digest')}), but this search uses space '{space.name}' (digest "
                          f"{space.digest}); warm-start only from a search of the same space")
    devices = doc.get("devices") or {}
    if device is not None:
        if device not in devices:
            raise ConfigError(f"warm_start {path} has no device {device!r}; it has {sorted(devices)}")
        devices = {device: devices[device]}
    rows, seen, skipped = [], set(), 0
    for name, d in devices.items():
        for i, m in enumerate(d.get("members") or []):
            arch = Architecture.from_dict(m.get("architecture"), source=f"{path}: devices.{name}.members[{i}]")
            arch.validate(space)
            try:
                genes = codec.encode(arch)
            except ArchitectureError:
                if not codec.masked:
                    raise
                skipped += 1  # a candidate the search mask removed
                continue
            if tuple(genes) not in seen:
                seen.add(tuple(genes))
                rows.append(genes)
    if skipped:
        log.info("warm start: %d front member(s) of %s use candidates the search mask removed; skipped", skipped, path)
    if not rows:
        raise ConfigError(f"warm_start {path} has no front members to start from"
                          + (" inside the search mask" if skipped else ""))
    return np.array(rows, dtype=int)
