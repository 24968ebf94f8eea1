"""A GPU check for whoever has one: the parts of spnas that need a CUDA GPU, run and reported in < 10 min.

    spnas gpu-check                                       # the four steps (python scripts/gpu_check.py alike)
    spnas gpu-check steps=[cuda_runtime_model,nvml_power]
    CUDA_VISIBLE_DEVICES=1 spnas gpu-check steps=[cuda_runtime_model] cuda_runtime_model.budget_s=400 \\
        "cuda_runtime_model.overrides=['hardware=cuda','space=cifar','n=100']"    # the full-size validation

The steps (``nas/conf/gpu_check.yaml``), each with a time budget (``<step>.budget_s``; 8.5 min in all):

=====================  ==========================================================================================
``cuda_runtime_model``  ``spnas validate-runtime-model hardware=cuda`` in joint mode (cifar space, n=30): the
                        calibrated runtime model's MAPE, max APE and the noise floor (repeatability MAPE)
``ort_cuda``            ``spnas profile-lut``, then ``validate-runtime-model`` with that LUT, on ONNX Runtime's
                        ``CUDAExecutionProvider`` (tiny space): node placement counts and MAPE; *unavailable*
                        where the onnxruntime build lacks the provider (``pip install onnxruntime-gpu``)
``gpu_search``          ``spnas search trainer=gpu``, 2 epochs of 10 batches: wall time, steps, architecture
``nvml_power``          HyperPower's NVML power (:func:`nas.hyperpower.measure.power_nvml_w`) of a few networks
                        of ``space`` and of the idle GPU, in W; *unavailable* without pynvml or NVML
=====================  ==========================================================================================

The first three run as child processes (their run folders ``<step>/`` under this run's, their output in
``<step>.log``), stopped when they overrun their budget; ``nvml_power`` runs in this process and skips the networks
left when its budget is spent. A step's failure is its row (``failed: <one line>``), never the end of the check.
After every step ``gpu_check.json`` is rewritten atomically (machine info: GPUs, driver, CUDA, cuDNN, torch,
onnxruntime; one row per step; ``complete: false`` until the end); the run shell writes the final one. A table is
printed at the end. Exit status 0, or 1 when a step failed. Without a CUDA GPU (``torch.cuda.is_available()``
false) the command is one ``error:`` line, exit 2, before anything is run or written.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nas.cli import entry_command, hydra_command, hydra_entry, main_guard, one_line
from nas.errors import ConfigError
from nas.io import atomic_write_json, null_non_finite
from nas.run_shell import Task

FORMAT = "spnas-gpu-check"
VERSION = 1
CUDA_PROVIDER = "CUDAExecutionProvider"
#: how the end of a step's row reads: ok, failed: <why>, unavailable: <why>
STATUSES = ("ok", "failed", "unavailable")


class Unavailable(Exception):
    """This machine lacks what the step needs (a package, a provider, NVML): reported, not a failure."""


class StepFailed(Exception):
    """A step failed for a reason that is already one line (a child's ``error:`` line, an overrun budget)."""


# ------------------------------------------------------------------------------------------------ the GPU gate
def require_cuda() -> None:
    """:class:`ConfigError` (one line) unless torch sees a CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    build = f"CUDA build {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    needs = "an NVIDIA GPU and its driver" + ("" if torch.version.cuda else " and a CUDA build of PyTorch")
    raise ConfigError(
        f"no CUDA GPU is visible: torch.cuda.is_available() is False (torch {torch.__version__}, {build}{hidden}); "
        f"spnas gpu-check checks the parts of spnas that need a GPU: run it on a machine with {needs} (spnas "
        "gpu-check, or python scripts/gpu_check.py; pip install 'spnas[gpu]' onnxruntime-gpu for its power and "
        "ONNX Runtime steps)")


def machine_info() -> dict[str, Any]:
    """The GPUs torch sees, the driver, CUDA, cuDNN, torch, onnxruntime (version, providers), pynvml, spnas."""
    import platform

    import torch

    from nas.run_shell import spnas_version

    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append({"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                     "memory_gib": round(props.total_memory / 2**30, 1)})
    try:
        import onnxruntime as ort

        onnx = {"onnxruntime": ort.__version__, "onnxruntime_providers": list(ort.get_available_providers())}
    except ImportError:
        onnx = {"onnxruntime": None, "onnxruntime_providers": []}
    return {"gpus": gpus, "driver": nvidia_driver(), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "torch": torch.__version__, **onnx,
            "pynvml": package_version("nvidia-ml-py"), "python": platform.python_version(),
            "spnas": spnas_version(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def package_version(name: str) -> str | None:
    """The installed distribution's version, or ``None``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version: from NVML, else ``nvidia-smi``, else ``None``."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return driver.decode() if isinstance(driver, bytes) else str(driver)
    except Exception:  # noqa: BLE001 - no pynvml or no NVML: ask nvidia-smi
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.split()
        return out[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------------------ child commands
def run_child(argv: Sequence[str], log_path: Path, budget_s: float, grace_s: float = 10.0) -> None:
    """Run ``argv`` with its output appended to ``log_path``; :class:`StepFailed` with one line when it exits
    non-zero (its last ``error:`` line, else its last line) or runs past ``budget_s`` (then SIGTERM to its process
    group, SIGKILL after ``grace_s``)."""
    from nas.threads import child_environment, waiting_on_children

    if budget_s <= 0:
        raise StepFailed("its budget was spent before this command could start")
    env = {**child_environment(1), "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, waiting_on_children():
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            stop(proc, grace_s)
            raise StepFailed(f"ran past its budget: stopped after {budget_s:.0f} s (see {log_path.name})") \
                from None
        except BaseException:  # Ctrl-C or SIGTERM of this process: the child (its own session) goes too
            stop(proc, grace_s)
            raise
    if code != 0:
        raise StepFailed(f"{last_error(log_path)} (exit status {code}; see {log_path.name})")


def stop(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to ``proc``'s process group, SIGKILL after ``grace_s`` if it is still there."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def last_error(log_path: Path) -> str:
    """The last ``error:`` line of a log (without the prefix), else its last non-empty line, shortened."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line[len("error:"):].strip() for line in lines if line.startswith("error:")]
    text = errors[-1] if errors else (lines[-1] if lines else "no output")
    return text if len(text) <= 300 else text[:297] + "..."


def child(cfg: DictConfig, command: str, args: Sequence[str], run_dir: Path, log_path: Path,
          deadline: float) -> Path:
    """Run ``spnas <command> <args>`` with its run folder ``run_dir`` and this check's seed, until ``deadline``
    (:func:`time.monotonic`); returns ``run_dir``."""
    argv = [*entry_command(command), *map(str, args), f"seed={int(cfg.seed)}", "progress=false",
            f"hydra.run.dir={run_dir}"]
    run_child(argv, log_path, deadline - time.monotonic(), float(cfg.grace_s))
    return run_dir


def read_summary(path: Path) -> dict[str, Any]:
    """The JSON summary a child command wrote; :class:`StepFailed` if it wrote none."""
    if not path.is_file():
        raise StepFailed(f"the command ended without writing {path.name}")
    return json.loads(path.read_text())


def overrides(node: Any) -> list[str]:
    """A config list of overrides as strings (``None``: none)."""
    return [str(v) for v in (OmegaConf.to_container(node, resolve=True) if node is not None else [])]


def pct(value: Any) -> str:
    """A percentage for the table (``n/a`` where the metric does not exist)."""
    return "n/a" if value is None else f"{float(value):.2f} %"


# ------------------------------------------------------------------------------------------------ the steps
def cuda_runtime_model(cfg: DictConfig, out: Path, deadline: float) -> dict[str, Any]:
    """``validate-runtime-model`` (joint mode) on the cuda backend: MAPE, max APE, floor."""
    step = cfg.cuda_runtime_model
    run_dir = child(cfg, "validate_runtime_model", overrides(step.overrides), out / "cuda_runtime_model",
                    out / "cuda_runtime_model.log", deadline)
    return validation_result(read_summary(run_dir / "validation.json"), run_dir)


def validation_result(v: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """The row's result from a ``validation.json``: calibrated MAPE, max APE, floor, tau, plain-sum MAPE."""
    cal, plain, rep = v["calibrated"], v["plain_sum"], v["repeatability"]
    device = (v["hardware"].get("fingerprint") or {}).get("device")
    result = {"backend": v["hardware"]["backend"], "device": device, "space": v["space"]["name"], "n": v["n"],
              "mode": v["mode"], "calibrated_mape_pct": cal["mape_pct"], "calibrated_max_ape_pct": cal["max_ape_pct"],
              "kendall_tau": cal["kendall_tau"], "plain_sum_mape_pct": plain["mape_pct"],
              "floor_mape_pct": rep["mape_pct"], "measured_range_ms": cal.get("measured_range_ms"),
              "validation_wall_time_s": v.get("wall_time_s"), "run_dir": str(run_dir)}
    tau = "n/a" if cal["kendall_tau"] is None else f"{cal['kendall_tau']:.3f}"
    result["summary"] = (f"calibrated MAPE {pct(cal['mape_pct'])}, max APE {pct(cal['max_ape_pct'])}, floor "
                         f"{pct(rep['mape_pct'])}, tau {tau} (plain sum MAPE "
                         f"{pct(plain['mape_pct'])}; {result['backend']}, space {result['space']}, n={v['n']})")
    return result


def ort_cuda(cfg: DictConfig, out: Path, deadline: float) -> dict[str, Any]:
    """``profile-lut`` and ``validate-runtime-model`` on ONNX Runtime's CUDA execution provider."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise Unavailable("onnxruntime is not installed (pip install onnxruntime-gpu)") from None
    if CUDA_PROVIDER not in ort.get_available_providers():
        raise Unavailable(f"onnxruntime build lacks {CUDA_PROVIDER} (pip install onnxruntime-gpu)")
    step, folder = cfg.ort_cuda, out / "ort_cuda"
    shared, log = overrides(step.overrides), out / "ort_cuda.log"
    lut_path = folder / "lut.json"
    child(cfg, "profile_lut", [*shared, "in_channels=3", "num_classes=10", f"out={lut_path}",
                               f"paths.cache_dir={folder / 'cache'}"], folder / "profile", log, deadline)
    if not lut_path.is_file():
        raise StepFailed("profile-lut ended without writing lut.json")
    placement = json.loads(lut_path.read_text()).get("meta", {}).get("node_placement")
    where = None
    if placement:
        on_cuda = placement["by_provider"].get(CUDA_PROVIDER, 0)
        counts = ", ".join(f"{name} {n}" for name, n in placement["by_provider"].items())
        if not on_cuda:  # nothing ran on the GPU: no point in validating the CPU's latency here
            raise StepFailed(f"{CUDA_PROVIDER} took none of the {placement['nodes']} nodes of the "
                             f"{placement['models']} profiled models ({counts}): onnxruntime fell back, e.g. for "
                             "want of the CUDA / cuDNN libraries onnxruntime-gpu needs (see ort_cuda.log)")
        where = (f"{on_cuda} of {placement['nodes']} nodes of {placement['models']} models on CUDA "
                 f"({placement['models_with_fallback']} models partly elsewhere)")
    run_dir = child(cfg, "validate_runtime_model", [*shared, f"hardware.lut_path={lut_path}",
                                                    *overrides(step.validate)], folder / "validate", log, deadline)
    result = validation_result(read_summary(run_dir / "validation.json"), run_dir)
    result["node_placement"] = placement
    if where:
        result["summary"] += f"; {where}"
    return result


def gpu_search(cfg: DictConfig, out: Path, deadline: float) -> dict[str, Any]:
    """A short ``search`` with ``trainer=gpu``: wall time, steps, architecture."""
    log = out / "gpu_search.log"
    run_dir = child(cfg, "search", [*overrides(cfg.gpu_search.overrides), f"paths.cache_dir={cfg.paths.cache_dir}"],
                    out / "gpu_search", log, deadline)
    s = read_summary(run_dir / "summary.json")
    used = re.findall(r"GPU available: \w+.*?, used: (True|False)", log.read_text(errors="replace"))
    gpu_used = None if not used else used[-1] == "True"  # Lightning's start-up line, where it was logged
    if gpu_used is False:
        raise StepFailed("Lightning ran the search without the GPU (its log: 'used: False'; see gpu_search.log)")
    result = {key: s.get(key) for key in ("wall_time_s", "steps", "epochs", "val_acc", "timm", "architecture",
                                          "predicted_latency_ms", "hardware")}
    result.update({"gpu_used": gpu_used, "run_dir": str(run_dir)})
    acc = "n/a" if s.get("val_acc") is None else f"{s['val_acc']:.3f}"
    result["summary"] = (f"{s.get('steps')} steps ({s.get('epochs')} epochs) in {s.get('wall_time_s')} s, val acc "
                         f"{acc}; arch {s.get('timm')}")
    return result


def nvml_power(cfg: DictConfig, out: Path, deadline: float) -> dict[str, Any]:
    """HyperPower's NVML power of a few networks of ``space`` (W), and of the idle GPU first."""
    try:
        import pynvml
    except ImportError:
        raise Unavailable("pynvml is not installed: pip install nvidia-ml-py (spnas' 'gpu' extra)") from None
    import random

    from nas.hyperpower.measure import power_nvml_w
    from nas.space.networks import build_child
    from nas.space.references import load_architecture
    from nas.space.search_space import SearchSpace

    step = cfg.nvml_power
    try:
        idle = idle_power_w(pynvml, float(step.idle_s))
    except pynvml.NVMLError as err:
        raise Unavailable(f"NVML: {err}") from None
    space = SearchSpace.from_config(cfg.space)
    in_channels, num_classes, batch = int(step.in_channels), int(step.num_classes), int(step.batch_size)
    networks = {str(ref): load_architecture(str(ref), space, in_channels, num_classes) for ref in step.networks}
    rng = random.Random(int(cfg.seed))
    networks.update({f"random_{i}": space.sample(rng) for i in range(int(step.random))})
    watts: dict[str, float] = {}
    skipped = []
    for name, arch in networks.items():
        if time.monotonic() + float(step.seconds) + 5 > deadline:
            skipped.append(name)
            continue
        net = build_child(space, arch, in_channels, num_classes)
        watts[name] = power_nvml_w(net, (batch, in_channels, space.resolution, space.resolution),
                                   seconds=float(step.seconds))
    if not watts:
        raise StepFailed(f"its budget of {float(step.budget_s):.0f} s left no time for a network")
    shown = ", ".join(f"{name} {w:.1f} W" for name, w in watts.items())
    note = f"; skipped for time: {', '.join(skipped)}" if skipped else ""
    return {"idle_w": idle, "power_w": watts, "skipped": skipped, "space": space.name, "batch_size": batch,
            "seconds": float(step.seconds),
            "summary": f"{shown} (idle {idle:.1f} W; space {space.name}, batch {batch}){note}"}


def idle_power_w(pynvml: Any, seconds: float, device: int = 0, interval_s: float = 0.05) -> float:
    """Mean NVML board power (W) of GPU ``device`` over ``seconds`` while this process runs nothing on it."""
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(device)
        samples = []
        end = time.monotonic() + seconds
        while True:
            samples.append(pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)  # mW -> W
            if time.monotonic() >= end:
                break
            time.sleep(interval_s)
    finally:
        pynvml.nvmlShutdown()
    return sum(samples) / len(samples)


#: the steps, in their default order: function(cfg, run folder, deadline) -> result (with a one-line "summary")
STEPS: dict[str, Callable[[DictConfig, Path, float], dict[str, Any]]] = {
    "cuda_runtime_model": cuda_runtime_model, "ort_cuda": ort_cuda, "gpu_search": gpu_search,
    "nvml_power": nvml_power}


# ------------------------------------------------------------------------------------------------ rows and report
def run_step(name: str, budget_s: float, run: Callable[[float], dict[str, Any]]) -> dict[str, Any]:
    """One row: ``run(deadline)``'s result, or its failure (``failed``: one line) or ``unavailable``."""
    start = time.monotonic()
    row: dict[str, Any] = {"step": name, "status": "ok", "reason": None, "summary": None, "result": None}
    try:
        result = dict(run(start + budget_s))
        row["summary"] = result.pop("summary", None)
        row["result"] = result
    except Unavailable as err:
        row.update(status="unavailable", reason=one_line(str(err)))
    except StepFailed as err:
        row.update(status="failed", reason=one_line(str(err)))
    except Exception as err:  # noqa: BLE001 - any failure is the step's row: the other steps still run
        message = one_line(str(err))
        row.update(status="failed", reason=f"{type(err).__name__}: {message}" if message else type(err).__name__)
    row.update(seconds=round(time.monotonic() - start, 1), budget_s=budget_s)
    return row


def write_report(path: Path, report: Mapping[str, Any]) -> Path:
    """Atomically write ``report`` as strict JSON (non-finite numbers as ``null``)."""
    return atomic_write_json(path, null_non_finite(dict(report)))


def status_text(row: Mapping[str, Any]) -> str:
    """``ok: <summary>``, ``failed: <reason>`` or ``unavailable: <reason>``."""
    text = row["summary"] if row["status"] == "ok" else row["reason"]
    return f"{row['status']}: {text}" if text else row["status"]


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per step: name, seconds (of its budget), status and result."""
    width = max([len("step"), *(len(r["step"]) for r in rows)])
    lines = [f"{'step':<{width}}  {'time (of budget)':>16}  result"]
    lines += [f"{r['step']:<{width}}  {r['seconds']:>6.1f} of {r['budget_s']:>4.0f} s  {status_text(r)}" for r in rows]
    return "\n".join(lines)


def format_machine(info: Mapping[str, Any]) -> str:
    """The machine info on one line."""
    gpus = "; ".join(f"{g['index']}: {g['name']} ({g['capability']}, {g['memory_gib']} GiB)"
                     for g in info.get("gpus", [])) or "none"
    return (f"GPU {gpus}; driver {info.get('driver')}, CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')}, torch "
            f"{info.get('torch')}, onnxruntime {info.get('onnxruntime')} "
            f"({', '.join(info.get('onnxruntime_providers') or []) or 'no providers'}), "
            f"pynvml {info.get('pynvml') or 'not installed'}")


def check_settings(cfg: DictConfig) -> list[str]:
    """The step names of ``cfg.steps`` (known, no repeats) and positive budgets; :class:`ConfigError` if not."""
    steps = [str(s) for s in (cfg.steps or [])]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps or len(set(steps)) != len(steps):
        raise ConfigError(f"steps must name each of these at most once: {', '.join(STEPS)}; got {steps}")
    for name in steps:
        budget = cfg[name].get("budget_s")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
            raise ConfigError(f"{name}.budget_s must be a positive number of seconds, got {budget!r}")
    return steps


def gpu_check(cfg: DictConfig) -> dict[str, Any]:
    """Run the steps of ``cfg.steps``, each into its row; rewrite ``gpu_check.json`` after each; print the table."""
    require_cuda()
    steps = check_settings(cfg)
    out = Path(cfg.paths.output_dir)
    path = out / "gpu_check.json"
    report: dict[str, Any] = {"format": FORMAT, "version": VERSION, "complete": False, "machine": machine_info(),
                              "steps": []}
    print(format_machine(report["machine"]))
    write_report(path, report)
    for i, name in enumerate(steps, 1):
        budget = float(cfg[name].budget_s)
        print(f"[{i}/{len(steps)}] {name} (budget {budget:.0f} s) ...", flush=True)
        row = run_step(name, budget, lambda deadline, name=name: STEPS[name](cfg, out, deadline))
        report["steps"].append(row)
        print(f"[{i}/{len(steps)}] {name}: {status_text(row)} ({row['seconds']} s)", flush=True)
        write_report(path, report)
    report.update({status: sum(r["status"] == status for r in report["steps"]) for status in STATUSES})
    report["complete"] = True
    print(format_table(report["steps"]))
    print(f"{report['ok']} ok, {report['failed']} failed, {report['unavailable']} unavailable; written to {path}")
    return report


def exit_status(report: Mapping[str, Any]) -> None:
    """What the app returns: nothing; a check with a failed step exits 1 here, after the run shell wrote
    ``gpu_check.json``."""
    if report.get("failed"):
        sys.exit(1)


TASK = Task(gpu_check, summary="gpu_check.json", returns=exit_status)
app, _ = hydra_command(TASK, "gpu_check")


def main() -> object:
    """``spnas gpu-check``: without a CUDA GPU one ``error:`` line (exit 2) before Hydra creates a run folder, then
    the Hydra app. Command lines with flags (``--help``, ``--cfg``, ``-m``) go to Hydra as they are."""
    if not any(arg.startswith("-") for arg in sys.argv[1:]):
        main_guard(require_cuda)
    return app()


main.task = TASK  # type: ignore[attr-defined]  # what it runs (tests check every command has one)


def run_command() -> None:
    """``python scripts/gpu_check.py [overrides]``: the command line checked, then :func:`main`."""
    hydra_entry(main, "gpu_check")

