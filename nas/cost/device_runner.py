#!/usr/bin/env python3
"""Measure an op export on the target device and write a latency LUT: the device CLI. Needs only onnxruntime and numpy.

``spnas export-ops`` writes the folder with this file and ``measurement_core.py`` in it; copy the whole folder to the
device, then::

    python3 <export folder>/device_runner.py <export folder> --out lut.json [--threads N] [--repeats N]
        [--providers OpenVINOExecutionProvider:device_type=CPU,CPUExecutionProvider] [--precision int8]

and hand ``lut.json`` back to the search: ``python search.py hardware.lut_path=lut.json``. Nothing else leaves
the device, and nothing but the ONNX files and these two files reaches it (no torch, no framework, no data).

This file is the command line, the manifest check and the ONNX Runtime sessions; what the numbers depend on is
``nas.cost.measurement_core``, the module the framework measures, fits and prices with too (imported from the
package, or as the sibling file ``measurement_core.py`` on a device). The measurement: ONNX Runtime on the
manifest's execution providers (``--providers``; default the CPU's), sequential execution, all graph optimisations;
each op loaded in ``sessions`` separate sessions, each session given ``warmup`` untimed runs, then ``repeats`` timed
runs interleaved over ``rounds`` passes through all sessions in a fresh seeded random order each pass
(``time_interleaved``), each timed run after streaming through a ``cache_flush_mb`` buffer; the ``statistic``
(median, p25, p10 or min) of all sessions' runs and their inter-quartile range are kept. The calibration networks of
the export set the LUT's network calibration (``fit_network_calibration``; a network's MBConv layers are its
``mbconv_*`` keys, and the manifest's ``groups`` give each op's stage). The hardware fingerprint is
``cpu_fingerprint``, as ``nas.cost.backends.OnnxRuntimeCPU`` computes it, so a LUT measured here on the search
machine matches it exactly. With providers other than the CPU's, the nodes ONNX Runtime leaves to a provider other
than the first are counted (``meta.node_placement``, a warning).

int8 exports (manifest version 2, ``precision: int8``) hold models quantised by the framework; they are measured
as shipped (nothing is quantised here), and the manifest's precision and quantisation recipe enter the fingerprint
as in the framework's int8 backend. ``--precision`` only checks the export's precision.

Exit status 2 with ``error: ...`` on a missing, corrupt or inconsistent export, an execution provider this
onnxruntime build lacks, or an export of another precision than ``--precision``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

if __package__:  # part of the framework: nas.cost.device_runner
    from nas.cost import measurement_core as core
else:  # a script: the measurement_core.py shipped beside it, even where a (maybe other) spnas is installed
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if not (Path(__file__).resolve().parent / "measurement_core.py").is_file():
        print(f"error: measurement_core.py is missing beside {Path(__file__).name}; copy the whole folder written by "
              "spnas export-ops (it holds both files)", file=sys.stderr)
        sys.exit(2)
    import measurement_core as core  # type: ignore[no-redef]


class ManifestError(Exception):
    """The export folder or its manifest is missing, corrupt or inconsistent."""


# ---------------------------------------------------------------------------------------------- manifest
def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ManifestError(message)


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def load_manifest(folder: Path, verify: bool = True) -> dict[str, Any]:
    """Read and check ``folder/manifest.json``: format, version, fields, and every ONNX file's SHA-256."""
    path = folder / "manifest.json"
    fix = "re-export it with scripts/export_ops.py and copy the whole folder again"
    _require(folder.is_dir(), f"export folder {folder} does not exist")
    _require(path.is_file(), f"{path} not found; point the runner at the folder written by scripts/export_ops.py")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: corrupt manifest, not valid JSON ({err}); {fix}") from None
    _require(isinstance(manifest, dict), f"{path}: expected a JSON object; {fix}")
    _require(manifest.get("format") == core.MANIFEST_FORMAT,
             f"{path}: 'format' is {manifest.get('format')!r}, expected {core.MANIFEST_FORMAT!r}; this is not an op "
             "export of scripts/export_ops.py")
    version = manifest.get("version")
    _require(version in core.MANIFEST_VERSIONS and not isinstance(version, bool),
             f"{path}: manifest version {version!r} is not supported by this runner (it reads "
             f"{', '.join(map(str, core.MANIFEST_VERSIONS))}); use the device_runner.py of the same framework version")
    precision = manifest.get("precision", "fp32")
    _require(precision in core.PRECISIONS, f"{path}: 'precision' must be one of {list(core.PRECISIONS)}, got "
                                           f"{precision!r}; {fix}")
    _require(precision == "fp32" or version >= 2, f"{path}: precision {precision} needs manifest version 2, got "
                                                  f"{version}; {fix}")
    recipe = manifest.get("quantization")
    _require((precision == "fp32" and recipe is None) or (precision != "fp32" and isinstance(recipe, dict) and recipe),
             f"{path}: 'quantization' must be the recipe (an object) of the {precision} models, and only of int8 "
             f"ones; got {recipe!r}; {fix}")
    for field in ("space", "settings", "ops", "in_channels", "num_classes"):
        _require(field in manifest, f"{path}: missing field {field!r}; {fix}")
    settings = manifest["settings"]
    _require(isinstance(settings, dict), f"{path}: 'settings' must be an object; {fix}")
    for name, low in (("threads", 1), ("batch_size", 1), ("warmup", 0), ("repeats", 1), ("rounds", 1)):
        _require(_is_int(settings.get(name), low), f"{path}: settings.{name} must be an integer >= {low}, got "
                                                   f"{settings.get(name)!r}; {fix}")
    _require(_is_int(settings.get("sessions", 1), 1), f"{path}: settings.sessions must be an integer >= 1, got "
                                                      f"{settings.get('sessions')!r}; {fix}")
    try:
        core.normalize_providers(settings.get("providers"))
    except ValueError as err:
        raise ManifestError(f"{path}: settings.providers {err}; {fix}") from None
    ops = manifest["ops"]
    _require(isinstance(ops, list) and ops, f"{path}: 'ops' must be a non-empty list; {fix}")
    networks = manifest.get("networks") or []
    _require(isinstance(networks, list), f"{path}: 'networks' must be a list; {fix}")
    keys = set()
    for where, items, id_field in (("ops", ops, "key"), ("networks", networks, "name")):
        for i, item in enumerate(items):
            at = f"{path}: {where}[{i}]"
            _require(isinstance(item, dict), f"{at} must be an object; {fix}")
            for field in (id_field, "file", "input_shape", "sha256"):
                _require(field in item, f"{at}: missing field {field!r}; {fix}")
            shape = item["input_shape"]
            _require(isinstance(shape, list) and len(shape) == 4 and all(_is_int(v, 1) for v in shape),
                     f"{at}: input_shape must be 4 positive integers (N, C, H, W), got {shape!r}; {fix}")
            file = folder / str(item["file"])
            _require(file.is_file(), f"{at}: file {file} is missing; copy the whole export folder")
            if verify:
                digest = hashlib.sha256(file.read_bytes()).hexdigest()
                _require(digest == item["sha256"], f"{at}: {file} is corrupt (SHA-256 {digest[:12]}... does not "
                                                   f"match the manifest's {str(item['sha256'])[:12]}...); {fix}")
            if where == "ops":
                _require(item["key"] not in keys, f"{at}: duplicate key {item['key']!r}; {fix}")
                keys.add(item["key"])
    for i, net in enumerate(networks):
        missing = [k for k in net.get("ops") or [] if k not in keys]
        _require(isinstance(net.get("ops"), list) and net["ops"] and not missing,
                 f"{path}: networks[{i}] must list the op keys it is made of, all present in 'ops' "
                 f"(missing: {missing[:3]}); {fix}")
        groups = net.get("groups")
        _require(groups is None or (isinstance(groups, list) and len(groups) == len(net["ops"])
                                    and all(_is_int(g, 0) for g in groups)),
                 f"{path}: networks[{i}].groups must list one stage index (integer >= 0) per op; {fix}")
    return manifest



def hardware_record(threads: int, batch_size: int, warmup: int, repeats: int, cache_flush_mb: float,
                    statistic: str, sessions: int = 1, providers: list[dict[str, Any]] | None = None,
                    precision: str = "fp32", quantization: dict[str, Any] | None = None) -> dict:
    """The LUT's ``hardware`` block; the fingerprint equals ``OnnxRuntimeCPU.fingerprint()`` on this machine (same
    settings, providers, precision and quantisation recipe)."""
    import onnxruntime

    providers = core.normalize_providers(providers)
    fingerprint = core.cpu_fingerprint(core.BACKEND, threads, batch_size, cache_flush_mb, statistic,
                                       {"onnxruntime": onnxruntime.__version__}, providers, precision, quantization)
    fingerprint_id_ = core.fingerprint_id(fingerprint)
    return {"backend": core.BACKEND, "threads": threads, "batch_size": batch_size, "warmup": warmup, "repeats": repeats,
            "sessions": sessions, "cache_flush_mb": float(cache_flush_mb), "statistic": statistic,
            "fingerprint": fingerprint,
            "fingerprint_id": fingerprint_id_,
            "providers": providers,
            **({} if precision == "fp32" else {"precision": precision}),
            "measured_by": "device_runner.py"}


def parse_providers(text: str) -> list[dict[str, Any]]:
    """``--providers``: comma-separated names, each optionally followed by ``:key=value`` options
    (``OpenVINOExecutionProvider:device_type=CPU,CPUExecutionProvider``), or the JSON list of the config form
    (``[{"name": ..., "options": {...}}, ...]``). ``ManifestError`` on a malformed value."""
    try:
        if text.lstrip().startswith("["):
            return core.normalize_providers(json.loads(text))
        providers = []
        for entry in text.split(","):
            name, *pairs = entry.strip().split(":")
            _require(all("=" in pair for pair in pairs), f"--providers: option {pairs} of {name} is not key=value")
            providers.append({"name": name, "options": dict(pair.split("=", 1) for pair in pairs)})
        return core.normalize_providers(providers)
    except (ValueError, json.JSONDecodeError) as err:
        raise ManifestError(f"--providers {err}") from None


def check_providers(providers: list[dict[str, Any]]) -> None:
    """``ManifestError`` (one line, listing the build's providers) when this onnxruntime lacks one of them."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    missing = core.missing_providers(providers, available)
    _require(not missing, f"execution provider(s) {', '.join(missing)} not in this onnxruntime "
                          f"{onnxruntime.__version__} build; it has: {', '.join(available)}")


# ---------------------------------------------------------------------------------------------- measurement
class Runner:
    """ONNX Runtime sessions for every file, timed in interleaved rounds after a cache flush."""

    def __init__(self, threads: int, cache_flush_mb: float, providers: list[dict[str, Any]] | None = None) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.threads = threads
        self.providers = core.normalize_providers(providers)
        self.placements: list[dict[str, Any]] = []
        self.scratch = np.zeros(max(1, int(cache_flush_mb * 2**20) // 8)) if cache_flush_mb > 0 else None

    def prepare(self, path: Path, shape: list[int], check_placement: bool = False):  # noqa: ANN201
        options = core.session_options(self.ort, self.threads)
        try:
            session = core.create_session(self.ort, str(path), options, self.providers)
            if check_placement and not core.is_default_providers(self.providers):
                self.placements.append(core.node_placement(self.ort, str(path),
                                                           core.session_options(self.ort, self.threads),
                                                           self.providers))
        except Exception as err:  # onnxruntime raises its own exception types
            raise ManifestError(f"{path}: ONNX Runtime cannot load it on {core.describe_providers(self.providers)} "
                                f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); re-export the folder, "
                                "or check --providers") from None
        feeds = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        return lambda: session.run(None, feeds)

    def time_calls(self, run, count: int) -> list[float]:  # noqa: ANN001
        times = []
        for _ in range(count):
            if self.scratch is not None:
                np.add(self.scratch, 1.0, out=self.scratch)
            start = time.perf_counter_ns()
            run()
            times.append((time.perf_counter_ns() - start) / 1e6)
        return times



def measure(folder: Path, manifest: dict[str, Any], threads: int, warmup: int, repeats: int, rounds: int,
            cache_flush_mb: float, statistic: str = "median", progress: bool = True,
            sessions: int = 1, providers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Time every op and calibration network of the export (:func:`measurement_core.time_interleaved`); return the
    LUT as a JSON-ready dict."""
    start = time.perf_counter()
    runner = Runner(threads, cache_flush_mb, providers)
    items = [(op["key"], op) for op in manifest["ops"]] + [(n["name"], n) for n in manifest.get("networks") or []]
    runs = {}
    for i, (name, item) in enumerate(items):
        runs[name] = [runner.prepare(folder / item["file"], item["input_shape"], check_placement=s == 0)
                      for s in range(sessions)]
        for run in runs[name]:
            runner.time_calls(run, warmup)
        if progress:
            print(f"\rpreparing {i + 1}/{len(items)}", end="", file=sys.stderr, flush=True)

    def report(r: int) -> None:
        if progress:
            print(f"\rmeasuring: round {r + 1}/{min(rounds, repeats)} of {len(runs)} files x {sessions} session(s)",
                  end="", file=sys.stderr, flush=True)

    by_session = core.time_interleaved(runs, runner.time_calls, repeats, rounds, on_round=report)
    samples = {name: [t for session in times for t in session] for name, times in by_session.items()}
    if progress:
        print(file=sys.stderr)
    entries = {op["key"]: core.summary(samples[op["key"]], statistic) for op in manifest["ops"]}
    networks = manifest.get("networks") or []
    # rounded as recorded in the LUT's meta, so that the fit can be reproduced from the file exactly
    sums = [round(sum(entries[k]["ms"] for k in n["ops"]), 6) for n in networks]
    kept, se_ops = (list(c) for c in zip(*(core.network_counts(n["ops"]) for n in networks))) if networks else ([], [])
    measured = [round(core.summary(samples[n["name"]], statistic)["ms"], 6) for n in networks]
    # per-stage sums where the export names each op's stage (cost group); older exports: one scale
    by_stage = None
    if networks and all(isinstance(n.get("groups"), list) and len(n["groups"]) == len(n["ops"]) for n in networks):
        count = 1 + max(max(n["groups"]) for n in networks)
        by_stage = [[round(v, 6) for v in core.stage_sums([entries[k]["ms"] for k in n["ops"]], n["groups"], count)]
                    for n in networks]
    calibration = core.fit_network_calibration(sums, measured, kept, se_ops, by_stage)
    batch = int(manifest["settings"]["batch_size"])
    placement = core.merge_placements(runner.placements)
    if placement is not None and placement["fallback_nodes"]:
        print(f"warning: {placement['models_with_fallback']} of the {placement['models']} models run partly off "
              f"{placement['first_provider']}: {core.describe_placement(placement)}", file=sys.stderr)
    return {
        "format": core.LUT_FORMAT,
        "version": core.LUT_VERSION,
        "unit": "ms",
        "space": manifest["space"],
        "hardware": hardware_record(threads, batch, warmup, repeats, cache_flush_mb, statistic, sessions,
                                    runner.providers, manifest.get("precision", "fp32"),
                                    manifest.get("quantization")),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "meta": {"in_channels": manifest["in_channels"], "num_classes": manifest["num_classes"],
                 "profiled_ops": len(entries), "profile_seconds": round(time.perf_counter() - start, 2),
                 "calibration": {"networks": len(networks), "op_sum_ms": sums, "kept_ops": kept,
                                 "se_ops": se_ops, "measured_ms": measured, "stage_op_sum_ms": by_stage},
                 **({"node_placement": placement} if placement is not None else {})},
        **calibration,
        "entries": dict(sorted(entries.items())),
    }


def write_json_atomically(path: Path, obj: Any) -> None:
    """``nas.io.atomic_write_json``'s write (temporary file, fsync, ``os.replace``, the umask's permissions), kept
    here because this file must run on a device without the framework (it may import nothing from ``nas``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mask = os.umask(0o022)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # mkstemp's 0600 would hide the LUT from teammates
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(obj, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="the export folder (holds manifest.json)")
    parser.add_argument("--out", type=Path, default=Path("lut.json"), help="LUT file to write (default lut.json)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: the manifest's)")
    parser.add_argument("--warmup", type=int, help="untimed runs per op (default: the manifest's)")
    parser.add_argument("--repeats", type=int, help="timed runs per op (default: the manifest's)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default: the manifest's)")
    parser.add_argument("--sessions", type=int, help="sessions each file is loaded in (default: the manifest's)")
    parser.add_argument("--cache-flush-mb", type=float, help="buffer streamed before each timed run (0: off)")
    parser.add_argument("--statistic", choices=sorted(core.STATISTICS),
                        help="per-op statistic (default: the manifest's)")
    parser.add_argument("--providers", help="ONNX Runtime execution providers in order of preference: names, each "
                        "optionally with :key=value options, comma-separated (e.g. "
                        "OpenVINOExecutionProvider:device_type=CPU,CPUExecutionProvider), or a JSON list "
                        "(default: the manifest's, else CPUExecutionProvider)")
    parser.add_argument("--precision", choices=core.PRECISIONS,
                        help="the precision the export must have (a check: the runner measures the shipped models "
                             "as they are and quantises nothing; default: the manifest's)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        manifest = load_manifest(args.folder)
        settings = manifest["settings"]
        precision = manifest.get("precision", "fp32")
        _require(args.precision in (None, precision),
                 f"--precision {args.precision}: {args.folder} holds {precision} models (manifest precision), and "
                 f"the runner quantises nothing; export {args.precision} models (spnas export-ops "
                 f"hardware.backend.precision={args.precision}) or drop --precision")
        chosen = {name: getattr(args, name) if getattr(args, name) is not None else settings.get(name, 1)
                  for name in ("threads", "warmup", "repeats", "rounds", "sessions")}
        for name, low in (("threads", 1), ("warmup", 0), ("repeats", 1), ("rounds", 1), ("sessions", 1)):
            _require(_is_int(chosen[name], low), f"--{name} must be an integer >= {low}, got {chosen[name]!r}")
        flush = args.cache_flush_mb if args.cache_flush_mb is not None else float(settings.get("cache_flush_mb", 0))
        _require(0 <= flush <= 1024, f"--cache-flush-mb must be in [0, 1024], got {flush}")
        statistic = args.statistic or settings.get("statistic", "median")
        _require(statistic in core.STATISTICS, f"{args.folder}/manifest.json: settings.statistic must be one of "
                                          f"{sorted(core.STATISTICS)}, got {statistic!r}")
        providers = (parse_providers(args.providers) if args.providers is not None
                     else core.normalize_providers(settings.get("providers")))
        check_providers(providers)
        lut = measure(args.folder, manifest, cache_flush_mb=flush, statistic=statistic,
                      progress=not args.no_progress, providers=providers, **chosen)
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_json_atomically(args.out, lut)
    print(f"measured {len(lut['entries'])} ops and {lut['meta']['calibration']['networks']} calibration networks "
          f"in {lut['meta']['profile_seconds']} s (threads={chosen['threads']}, {precision}, providers "
          f"{core.describe_providers(lut['hardware']['providers'])}, calibration "
          f"{lut['scale']:.3f}*sum{lut['per_op_ms']:+.4f}*ops{lut['per_se_op_ms']:+.4f}*se_ops"
          f"{lut['overhead_ms']:+.4f} ms"
          + (f", stage scales {', '.join(f'{v:.3f}' for v in lut['stage_scales'])}" if lut["stage_scales"] else "")
          + ", fingerprint "
          f"{lut['hardware']['fingerprint_id']}); "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
