"""PopDB: population-density-based constraints of the search space (source 002 §4.6, §5.3).

An evolutionary search concentrates its population around the good regions of the space. PopDB clusters a
previous search's history (its validated sub-networks, one-hot encoded) with scikit-learn's ``HDBSCAN``, counts
how often each candidate of each layer occurs among the sub-networks of the *non-noise* clusters, and removes
the candidates whose relative frequency does not exceed ``threshold``. The result is a *mask* of the space
(``format: spnas-search-mask``), not a new space, so the trained supernet stays valid:
``subnet_search.py search_mask=<mask.json>`` searches only the kept candidates.

A layer is never emptied: if every candidate of a layer falls below the threshold, its most frequent one is
kept (and the report says so).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nas.errors import ConfigError
from nas.io import read_json_document
from nas.space.search_space import SearchSpace
from nas.subnet_search.encoding import GenomeCodec
from nas.subnet_search.predictors import one_hot
from nas.subnet_search.store import read_records

MASK_FORMAT = "spnas-search-mask"
MASK_VERSION = 1


def read_history(path: str | Path, space: SearchSpace, codec: GenomeCodec) -> np.ndarray:
    """Genomes (of the unmasked ``codec``) of the sub-networks in a ``validations.jsonl``."""
    records = read_records(path, space.name, space.digest, "history")
    return np.array([codec.encode_layers(r["architecture"], f"{path}: record {i}") for i, r in enumerate(records)],
                    dtype=int)


def build_mask(space: SearchSpace, genes: np.ndarray, threshold: float, min_cluster_size: int,
               min_samples: int | None, source: str = "") -> dict[str, Any]:
    """Cluster ``genes`` (HDBSCAN on one-hot features) and mask the rare candidates; returns the mask document."""
    from sklearn.cluster import HDBSCAN

    if not 0 <= threshold < 1:
        raise ConfigError(f"threshold must lie in [0, 1) (a relative frequency), got {threshold}")
    if isinstance(min_cluster_size, bool) or not isinstance(min_cluster_size, int) or min_cluster_size < 2:
        raise ConfigError(f"min_cluster_size must be an integer >= 2, got {min_cluster_size!r}")
    codec = GenomeCodec(space)
    if len(genes) < min_cluster_size:
        raise ConfigError(f"the history has {len(genes)} sub-networks, fewer than min_cluster_size="
                          f"{min_cluster_size}; use a longer search's history or lower min_cluster_size")
    clusterer = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, copy=True)
    labels = clusterer.fit_predict(one_hot(codec, genes))
    clustered = genes[labels >= 0]
    if len(clustered) == 0:
        raise ConfigError(f"HDBSCAN marked all {len(genes)} sub-networks as noise (no cluster of at least "
                          f"{min_cluster_size}); lower min_cluster_size / min_samples or use a longer search")
    layers, allowed = [], []
    for j, (spec, options) in enumerate(zip(codec.layers, codec.choices)):
        freq = np.bincount(clustered[:, j], minlength=len(options)) / len(clustered)
        keep = [i for i in range(len(options)) if freq[i] > threshold]
        kept_most_frequent = False
        if not keep:
            keep = [int(np.argmax(freq))]
            kept_most_frequent = True
        allowed.append(keep)
        layers.append({"index": spec.index, "name": spec.name, "allowed": [options[i].key for i in keep],
                       "removed": [options[i].key for i in range(len(options)) if i not in keep],
                       "frequency": {options[i].key: round(float(freq[i]), 6) for i in range(len(options))},
                       "kept_most_frequent_only": kept_most_frequent})
    size_after = int(np.prod([len(k) for k in allowed], dtype=np.float64))
    return {"format": MASK_FORMAT, "version": MASK_VERSION, "space": space.name, "space_digest": space.digest,
            "source": source, "threshold": threshold,
            "hdbscan": {"min_cluster_size": min_cluster_size, "min_samples": min_samples,
                        "records": int(len(genes)), "clustered": int(len(clustered)),
                        "clusters": int(labels.max() + 1)},
            "size_before": codec.size, "size_after": size_after,
            "removed_values": sum(len(layer["removed"]) for layer in layers), "layers": layers}


def load_mask(path: str | Path, space: SearchSpace) -> list[list[int]]:
    """The allowed candidate indices per searchable layer of a mask file (a mask of another space is refused)."""
    doc = read_json_document(path, "search_mask", MASK_FORMAT, MASK_VERSION, "a search mask",
                             "write one with scripts/popdb.py")
    if doc.get("space_digest") != space.digest:
        raise ConfigError(f"search_mask {path} masks space '{doc.get('space')}' (digest {doc.get('space_digest')}), "
                          f"but this search uses space '{space.name}' (digest {space.digest}); make the mask from "
                          "a search of the same space")
    codec = GenomeCodec(space)
    by_index = {int(layer["index"]): layer for layer in doc.get("layers") or []}
    allowed = []
    for spec, options in zip(codec.layers, codec.choices):
        layer = by_index.get(spec.index)
        if layer is None:
            raise ConfigError(f"search_mask {path} has no entry for layer {spec.index} ({spec.name})")
        keys = {o.key: i for i, o in enumerate(options)}
        unknown = [k for k in layer.get("allowed") or [] if k not in keys]
        if unknown or not layer.get("allowed"):
            raise ConfigError(f"search_mask {path}: layer {spec.index} allows {layer.get('allowed')}, which are not "
                              f"a non-empty subset of its candidates {list(keys)}")
        allowed.append([keys[k] for k in layer["allowed"]])
    return allowed


def format_mask_report(doc: Mapping[str, Any]) -> str:
    """Values removed per layer, and the space size before and after."""
    h = doc["hdbscan"]
    lines = [f"HDBSCAN: {h['clustered']} of {h['records']} sub-networks in {h['clusters']} cluster(s) "
             f"(min_cluster_size={h['min_cluster_size']}, min_samples={h['min_samples']}); threshold "
             f"{doc['threshold']:g}"]
    for layer in doc["layers"]:
        removed = ", ".join(layer["removed"]) or "-"
        note = "  (all below the threshold: kept the most frequent)" if layer["kept_most_frequent_only"] else ""
        lines.append(f"  layer {layer['index']:2d} {layer['name']:<12} kept {len(layer['allowed'])}, removed: "
                     f"{removed}{note}")
    before, after = doc["size_before"], doc["size_after"]
    lines.append(f"space size: {before:,} -> {after:,} sub-networks ({doc['removed_values']} candidate values "
                 f"removed; 10^{math.log10(before):.2f} -> 10^{math.log10(after):.2f})")
    return "\n".join(lines)
