"""The measurement core shared by the framework and the device runner: numpy, onnxruntime and the standard library.

One copy of everything a LUT's numbers depend on, so that a LUT measured on a device by ``device_runner.py`` and
one measured by the framework (``nas.cost.profiler``) are made, fitted and priced the same way:

* the file-format constants of LUTs (``spnas-lut``) and op exports (``spnas-op-export``);
* the hardware fingerprint (:func:`cpu_fingerprint`, :func:`fingerprint_id`; precision and quantisation recipe
  included) and the ONNX Runtime session options;
* the ONNX Runtime execution providers (:func:`normalize_providers`, :func:`missing_providers`) and the count of the
  nodes a provider leaves to another (:func:`node_placement`);
* the interleaved timing schedule (:func:`time_interleaved`) and the per-op statistic (:func:`summary`);
* the network calibration's fit (:func:`fit_network_calibration`);
* the calibrated price of a network (:func:`calibrated_ms`): the one formula that turns LUT sums into
  milliseconds for ``RuntimeModel``, ``LatencyLUT``, validation, the calibration ablation and the fit itself.

It imports nothing from the framework (an import-linter contract in ``pyproject.toml`` checks it):
``nas.entries.export_ops`` ships this file next to ``device_runner.py``, which imports it as a sibling module on a
device that has only numpy and onnxruntime. See docs/latency.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

MANIFEST_FORMAT = "spnas-op-export"
#: the manifest versions this core reads: 1, fp32 models; 2 adds ``precision`` and ``quantization`` (the recipe
#: the shipped int8 models were quantised with). An export is written in the lowest version that describes it
#: (fp32: 1, unchanged), so that a runner without precisions refuses an int8 export rather than mislabel its LUT.
MANIFEST_VERSIONS = (1, 2)
PRECISIONS = ("fp32", "int8")
LUT_FORMAT = "spnas-lut"
LUT_VERSION = 3
BACKEND = "onnxruntime-cpu"
STATISTICS = {"median": 50.0, "p25": 25.0, "p10": 10.0, "min": 0.0}
CPU_PROVIDER = "CPUExecutionProvider"
#: the execution providers of every measurement unless ``hardware.backend.providers`` / ``--providers`` say otherwise
DEFAULT_PROVIDERS: tuple[dict[str, Any], ...] = ({"name": CPU_PROVIDER, "options": {}},)

Number = TypeVar("Number")  # a float, or a torch tensor on RuntimeModel's differentiable path


# ---------------------------------------------------------------------------------------------- fingerprint
def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux) or ``platform.processor()`` (part of every CPU fingerprint)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_fingerprint(backend: str, threads: int, batch_size: int, cache_flush_mb: float, statistic: str,
                    versions: dict[str, str], providers: Sequence[Mapping[str, Any]] | None = None,
                    precision: str = "fp32", quantization: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a CPU measurement depends on (device, software versions, threads, batch size, flush, statistic, the
    ONNX Runtime execution providers with their options, and the models' precision with their quantisation recipe);
    the framework's CPU backends and the device runner both use it, so a LUT the runner measures on the search
    machine matches the framework's exactly.

    ``providers`` (normalised, :func:`normalize_providers`) enter only when they differ from
    :data:`DEFAULT_PROVIDERS`, and ``precision`` with ``quantization`` (required then) only when it is not fp32, so
    the fingerprint of the default (CPU, fp32) measurement, and with it every LUT cached before providers and
    precisions could be chosen, stays what it was. ``ValueError`` on an unknown precision or a missing recipe.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    fingerprint = {"backend": backend, "device": cpu_model(), "machine": platform.machine(),
                   "system": platform.system(), "logical_cpus": os.cpu_count(), "threads": threads,
                   "batch_size": batch_size, "cache_flush_mb": float(cache_flush_mb), "statistic": statistic,
                   **versions}
    if providers is not None and not is_default_providers(providers):
        fingerprint["providers"] = [{"name": p["name"], "options": dict(p["options"])} for p in providers]
    if precision != "fp32":
        if not isinstance(quantization, Mapping) or not quantization:
            raise ValueError(f"a {precision} fingerprint needs the quantisation recipe, got {quantization!r}")
        fingerprint["precision"] = precision
        fingerprint["quantization"] = dict(quantization)
    return fingerprint


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """Short hash of a fingerprint: the id LUTs are compared and cached by."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]


def normalize_providers(providers: Any) -> list[dict[str, Any]]:
    """The execution providers as ``[{"name": ..., "options": {str: str}}, ...]``, in order of preference.

    Accepts ``None`` (:data:`DEFAULT_PROVIDERS`), a name, or a list whose items are names, ``{name, options}``
    mappings or ``(name, options)`` pairs (ONNX Runtime's own form). Option values become strings, as ONNX Runtime
    passes them to the provider, so ``{device_id: 0}`` and ``{device_id: "0"}`` are the same setting. ``ValueError``
    (one line) on anything else or a name given twice.
    """
    if providers is None:
        return [{"name": p["name"], "options": dict(p["options"])} for p in DEFAULT_PROVIDERS]
    if isinstance(providers, (str, Mapping)):
        providers = [providers]
    form = ("a list of execution provider names or {name: ..., options: {...}} entries, e.g. "
            "[CPUExecutionProvider] or [{name: OpenVINOExecutionProvider, options: {device_type: CPU}}, "
            "CPUExecutionProvider]")
    if not isinstance(providers, Sequence) or not providers:
        raise ValueError(f"must be {form}; got {providers!r}")
    out: list[dict[str, Any]] = []
    for item in providers:
        if isinstance(item, str):
            name, options = item, {}
        elif isinstance(item, Mapping) and set(item) <= {"name", "options"}:
            name, options = item.get("name"), item.get("options") or {}
        elif isinstance(item, Sequence) and len(item) == 2 and isinstance(item[0], str):
            name, options = item[0], item[1] or {}
        else:
            raise ValueError(f"must be {form}; got the entry {item!r}")
        if not isinstance(name, str) or not name or not isinstance(options, Mapping):
            raise ValueError(f"must be {form}; got the entry {item!r}")
        if any(p["name"] == name for p in out):
            raise ValueError(f"names {name} twice")
        out.append({"name": name, "options": {str(k): str(v) for k, v in options.items()}})
    return out


def is_default_providers(providers: Sequence[Mapping[str, Any]]) -> bool:
    """Whether normalised ``providers`` are :data:`DEFAULT_PROVIDERS` (the CPU provider, no options)."""
    default = [(p["name"], p["options"]) for p in DEFAULT_PROVIDERS]
    return [(p["name"], dict(p["options"])) for p in providers] == default


def missing_providers(providers: Sequence[Mapping[str, Any]], available: Sequence[str]) -> list[str]:
    """The names in ``providers`` that ``available`` (``onnxruntime.get_available_providers()``) lacks. ONNX
    Runtime itself only warns about those and falls back to the CPU, which would measure the wrong device."""
    return [p["name"] for p in providers if p["name"] not in available]


def describe_providers(providers: Sequence[Mapping[str, Any]]) -> str:
    """``OpenVINOExecutionProvider(device_type=CPU), CPUExecutionProvider``: providers on one line."""
    return ", ".join(p["name"] + (f"({', '.join(f'{k}={v}' for k, v in p['options'].items())})" if p["options"]
                                  else "") for p in providers)


def create_session(ort: Any, model: str | bytes, options: Any, providers: Sequence[Mapping[str, Any]]) -> Any:
    """An ``InferenceSession`` of ``model`` on the normalised ``providers`` (names and options, in order)."""
    return ort.InferenceSession(model, options, providers=[p["name"] for p in providers],
                                provider_options=[dict(p["options"]) for p in providers])


def _zero_feeds(session: Any) -> dict[str, np.ndarray]:
    dtypes = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
              "tensor(bool)": np.bool_}
    return {i.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in i.shape],
                             dtype=dtypes.get(i.type, np.float32)) for i in session.get_inputs()}


def node_placement(ort: Any, model: str | bytes, options: Any, providers: Sequence[Mapping[str, Any]]) -> dict:
    """Which execution provider ONNX Runtime assigned each node of ``model`` to, counted.

    Read from ONNX Runtime's session profile (``SessionOptions.enable_profiling``): one run of a separate session
    (same ``options`` and ``providers`` as the measurement, so the graph is partitioned the same way), whose
    ``Node`` events carry each executed node's ``provider`` and ``op_name``. Nodes are those of the optimised,
    partitioned graph (a provider's fused subgraph counts as one node). Returns ``{"first_provider", "nodes",
    "fallback_nodes", "by_provider": {provider: nodes}, "fallback_ops": {op type: nodes}}``; ``fallback_nodes``
    are the nodes not placed on the first requested provider: a partitioned graph copies tensors between devices
    at each border, a latency trap the measurement of small ops hides. The profile file is deleted.
    """
    folder = tempfile.mkdtemp(prefix="spnas-placement-")
    try:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "profile")
        session = create_session(ort, model, options, providers)
        session.run(None, _zero_feeds(session))
        with open(session.end_profiling()) as handle:
            events = json.load(handle)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    nodes: dict[str, tuple[str, str]] = {}
    for event in events if isinstance(events, list) else []:
        name, args = str(event.get("name", "")), event.get("args") or {}
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            nodes[name] = (str(args.get("provider", "unknown")), str(args.get("op_name", "unknown")))
    first = providers[0]["name"]
    by_provider: dict[str, int] = {}
    fallback_ops: dict[str, int] = {}
    for provider, op in nodes.values():
        by_provider[provider] = by_provider.get(provider, 0) + 1
        if provider != first:
            fallback_ops[op] = fallback_ops.get(op, 0) + 1
    return {"first_provider": first, "nodes": len(nodes), "fallback_nodes": sum(fallback_ops.values()),
            "by_provider": dict(sorted(by_provider.items())), "fallback_ops": dict(sorted(fallback_ops.items()))}


def merge_placements(placements: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The sum of several :func:`node_placement` counts (``models``: how many), or ``None`` for none."""
    if not placements:
        return None
    total: dict[str, Any] = {"first_provider": placements[0]["first_provider"], "models": len(placements),
                             "models_with_fallback": 0, "nodes": 0, "fallback_nodes": 0, "by_provider": {},
                             "fallback_ops": {}}
    for placement in placements:
        total["models_with_fallback"] += int(placement["fallback_nodes"] > 0)
        total["nodes"] += placement["nodes"]
        total["fallback_nodes"] += placement["fallback_nodes"]
        for field in ("by_provider", "fallback_ops"):
            for key, count in placement[field].items():
                total[field][key] = total[field].get(key, 0) + count
    for field in ("by_provider", "fallback_ops"):
        total[field] = dict(sorted(total[field].items()))
    return total


def describe_placement(placement: Mapping[str, Any]) -> str:
    """One line: how many nodes the first provider left to others, and which op types."""
    ops = ", ".join(f"{op} x{n}" for op, n in placement["fallback_ops"].items())
    return (f"{placement['fallback_nodes']} of {placement['nodes']} nodes not on {placement['first_provider']}"
            + (f" ({ops}); a partitioned graph copies data between devices, its latency may not be the provider's"
               if placement["fallback_nodes"] else ""))


def session_options(ort: Any, threads: int) -> Any:
    """ONNX Runtime session options of every measurement: ``threads`` intra-op threads, sequential execution,
    all graph optimisations, quiet logging."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


# ---------------------------------------------------------------------------------------------- schedule
def round_counts(repeats: int, rounds: int) -> list[int]:
    """Timed runs per interleaved round: ``repeats`` spread as evenly as possible over ``min(rounds, repeats)``."""
    rounds = max(1, min(rounds, repeats))
    return [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]


def time_interleaved(runs: dict[str, list[Callable[[], object]]], time_calls: Callable[..., list[float]],
                     repeats: int, rounds: int, seed: int = 0,
                     on_round: Callable[[int], None] | None = None) -> dict[str, list[list[float]]]:
    """Timed runs (ms) of every session of every item: ``runs[name]`` holds one callable per session (the same
    model loaded separately), ``time_calls(run, count)`` times ``count`` calls of one.

    ``repeats`` timed runs per session are spread over ``min(rounds, repeats)`` rounds; each round visits every
    session once, in a fresh random order (seeded with ``seed``), with one untimed re-warm call first. Interleaving
    spreads a burst of load on a shared machine over every item instead of the few timed while it lasts; the
    fresh order keeps what runs just before an item (and an item's position in the round) from biasing it the
    same way round after round; several sessions average over where each session's buffers happen to lie in
    memory, which on a shared CPU moved a network's latency by a few percent, its small networks' by up to
    15 % (docs/latency.md). Returns, per item, one list of timed runs per session. ``on_round(r)`` is called
    after round ``r``. Hand-written: no timing library schedules runs across many models this way.
    """
    order = [(name, s) for name, sessions in runs.items() for s in range(len(sessions))]
    samples: dict[str, list[list[float]]] = {name: [[] for _ in sessions] for name, sessions in runs.items()}
    rng = random.Random(seed)
    for r, count in enumerate(round_counts(repeats, rounds)):
        rng.shuffle(order)
        for name, s in order:
            run = runs[name][s]
            run()
            samples[name][s].extend(time_calls(run, count))
        if on_round is not None:
            on_round(r)
    return samples


def summary(times: list[float], statistic: str) -> dict[str, float]:
    """``ms`` (the ``statistic`` of the timed runs), ``iqr_ms`` and ``runs``; the framework's entries use it too."""
    arr = np.asarray(times, dtype=np.float64)
    q1, q3 = np.percentile(arr, [25, 75])
    return {"ms": float(np.percentile(arr, STATISTICS[statistic])), "iqr_ms": float(q3 - q1), "runs": len(times)}


# ---------------------------------------------------------------------------------------------- price
CALIBRATION_TERMS = ("scale", "per_op_ms", "per_se_op_ms", "overhead_ms")


def calibrated_ms(group_sums: Sequence[Number], kept_ops: Number | float, se_ops: Number | float,
                  calibration: Mapping[str, Any]) -> Number:
    """The calibrated price of a network in ms, the one formula of every caller (``nas.cost.lut``, Eq 5.8 with the
    network calibration)::

        R = sum_s scale_s * group_sums[s] + per_op_ms * kept_ops + per_se_op_ms * se_ops + overhead_ms

    ``group_sums[s]`` is the network's (expected) LUT sum in cost group (stage) ``s``
    (``nas.cost.signatures.cost_groups``), ``kept_ops`` its (expected) number of MBConv layers kept (searchable and
    fixed, not stem and head), ``se_ops`` those with SE. ``calibration`` holds ``scale``, ``per_op_ms``,
    ``per_se_op_ms``, ``overhead_ms`` and ``stage_scales`` (a LUT's ``calibration`` or the dict of
    :func:`fit_network_calibration`); ``scale_s`` is ``stage_scales[s]``, or ``scale`` for every group when
    ``stage_scales`` is empty (then ``group_sums`` may be one total). Plain arithmetic only, so torch tensors
    pass through differentiably (``RuntimeModel.forward`` / ``expected``). ``ValueError`` when the LUT has stage
    scales and ``group_sums`` is not one sum per stage.
    """
    stage_scales = calibration.get("stage_scales") or []
    if stage_scales and len(group_sums) != len(stage_scales):
        raise ValueError(f"the calibration has {len(stage_scales)} stage scales but the network has "
                         f"{len(group_sums)} stage sums")
    scale = calibration["scale"]
    total: Any = 0.0
    for g, value in enumerate(group_sums):
        total = total + value * (stage_scales[g] if stage_scales else scale)
    return (total + kept_ops * calibration["per_op_ms"] + se_ops * calibration["per_se_op_ms"]
            + calibration["overhead_ms"])


# ---------------------------------------------------------------------------------------------- calibration fit
def _robust_relative_fit(design: np.ndarray, measured: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Coefficients minimising a Huber loss of the *relative* residuals ``(design @ c - measured) / measured``
    (iteratively reweighted least squares; the Huber threshold is 1.345 robust standard deviations of the
    residuals, at least 0.5 %). Relative: the fit minimises what MAPE measures. Huber: one network that runs
    unlike the rest (a noisy measurement, an op fusion no per-op model sees) cannot tilt the fit for all others.
    """
    x = design / measured[:, None]
    y = np.ones_like(measured)
    weights = np.ones_like(measured)
    coef = np.zeros(design.shape[1])
    for _ in range(iterations):
        root = np.sqrt(weights)
        coef = np.linalg.lstsq(x * root[:, None], y * root, rcond=None)[0]
        residual = np.abs(x @ coef - y)
        scale = 1.4826 * np.median(residual)
        threshold = max(1.345 * scale, 0.005)
        new = np.where(residual <= threshold, 1.0, threshold / np.maximum(residual, 1e-12))
        if np.allclose(new, weights, atol=1e-6):
            break
        weights = new
    return coef


# the per-stage model needs at least this many calibration networks per coefficient (stage scales, per-op,
# per-SE-op, overhead): with fewer its stage scales are not reliably separated from each other, and the fit falls
# back to one scale for all stages
NETWORKS_PER_STAGE_COEFFICIENT = 4


def network_counts(keys: list[str]) -> tuple[int, int]:
    """``(MBConv layers, of them with SE)`` of a network from its LUT keys (``mbconv_..._se0.25_relu``)."""
    layers = [k for k in keys if k.startswith("mbconv_")]
    return len(layers), sum(1 for k in layers if "_se0_" not in k)


def stage_sums(ms: list[float], groups: list[int], count: int) -> list[float]:
    """Per-stage sums of a network's op runtimes ``ms``, ``groups[j]`` the stage (cost group) of op ``j``."""
    out = [0.0] * count
    for value, group in zip(ms, groups):
        out[group] += value
    return out


def _prices_positive(fit: dict[str, Any], group_sums: list[list[float]], kept_ops: np.ndarray,
                     se_ops: np.ndarray) -> bool:
    """Whether ``fit`` prices every calibration network above 0 ms (:func:`calibrated_ms`)."""
    return all(calibrated_ms(groups, float(kept), float(se), fit) > 0
               for groups, kept, se in zip(group_sums, kept_ops, se_ops))


def fit_network_calibration(op_sums: list[float], measured: list[float], kept_ops: list[float] | None = None,
                            se_ops: list[float] | None = None,
                            stage_op_sums: list[list[float]] | None = None) -> dict[str, Any]:
    """``{scale, per_op_ms, per_se_op_ms, overhead_ms, stage_scales}`` with
    ``measured ~ sum_s stage_scales[s] * stage_op_sums[s] + per_op_ms * kept_ops + per_se_op_ms * se_ops +
    overhead`` (per-stage model) or ``measured ~ scale * op_sum + ...`` (one scale, ``stage_scales`` empty).

    ``op_sums`` are the calibration networks' LUT sums, ``kept_ops`` their numbers of MBConv layers kept,
    ``se_ops`` the number of those with SE and ``stage_op_sums`` (optional) each network's LUT sum split by
    stage (cost group, see ``nas.cost.signatures.cost_groups``). A robust fit of the relative error
    (:func:`_robust_relative_fit`). Falls back, in order, when the data cannot support a model or its fit is
    implausible (a scale outside [0.5, 2], or a calibration network predicted at <= 0 ms):

    0. one scale per stage plus the per-op, per-SE-op and overhead terms: >= 2 stages, at least
       :data:`NETWORKS_PER_STAGE_COEFFICIENT` networks per coefficient, and the conditions of 1;
    1. one scale, per-op, per-SE-op and overhead: >= 6 networks, op sums spanning >= 20 %, kept and SE layers
       each spanning >= 2;
    2. without the SE term: >= 5 networks, kept layers spanning >= 2;
    3. scale and overhead: >= 3 networks spanning >= 20 %;
    4. ``scale = 1`` and the median residual as overhead; no networks: the identity.

    With the per-stage model, ``scale`` is the op-sum-weighted mean of the stage scales (a summary; predictions
    use ``stage_scales``). The framework's profiler and the device runner both use this function.
    """
    p = np.asarray(op_sums, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    k = np.zeros_like(p) if kept_ops is None else np.asarray(kept_ops, dtype=np.float64)
    se = np.zeros_like(p) if se_ops is None else np.asarray(se_ops, dtype=np.float64)
    identity: dict[str, Any] = dict.fromkeys(CALIBRATION_TERMS, 0.0) | {"scale": 1.0, "stage_scales": []}
    if len(p) == 0:
        return identity
    spans = len(p) >= 3 and p.max() >= 1.2 * p.min()
    full = spans and len(p) >= 6 and np.ptp(k) >= 2 and np.ptp(se) >= 2
    if stage_op_sums is not None and len(stage_op_sums) == len(p) and full:
        stages = np.asarray(stage_op_sums, dtype=np.float64)
        n_coef = stages.shape[1] + 3
        if stages.shape[1] >= 2 and len(p) >= NETWORKS_PER_STAGE_COEFFICIENT * n_coef:
            design = np.concatenate([stages, np.stack([k, se, np.ones_like(p)], 1)], 1)
            if np.linalg.matrix_rank(design) == n_coef:
                coef = _robust_relative_fit(design, m)
                scales = coef[:-3]
                fit = {"scale": float((stages.sum(0) @ scales) / stages.sum()), "per_op_ms": float(coef[-3]),
                       "per_se_op_ms": float(coef[-2]), "overhead_ms": float(coef[-1]),
                       "stage_scales": [float(s) for s in scales]}
                if ((scales >= 0.5) & (scales <= 2.0)).all() and _prices_positive(fit, stages.tolist(), k, se):
                    return fit
    candidates = []
    if full:
        candidates.append([0, 1, 2, 3])
    if spans and len(p) >= 5 and np.ptp(k) >= 2:
        candidates.append([0, 1, 3])
    if spans:
        candidates.append([0, 3])
    design = np.stack([p, k, se, np.ones_like(p)], 1)
    for used in candidates:
        if np.linalg.matrix_rank(design[:, used]) < len(used):
            continue
        coef = np.zeros(4)
        coef[used] = _robust_relative_fit(design[:, used], m)
        fit = {name: float(c) for name, c in zip(CALIBRATION_TERMS, coef)} | {"stage_scales": []}
        if 0.5 <= coef[0] <= 2.0 and _prices_positive(fit, [[v] for v in p.tolist()], k, se):
            return fit
    return identity | {"overhead_ms": float(np.median(m - p))}

