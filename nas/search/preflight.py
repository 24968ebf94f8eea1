"""Checks of a run's settings that fail fast, before any data is loaded, any op is profiled or a Trainer is built.

Each raises :class:`~nas.errors.ConfigError` (or :class:`~nas.errors.DataError`) with one message naming the
setting and the fix; the entry points print it as one ``error:`` line and exit 2.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import zipfile
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from nas.errors import ConfigError

log = logging.getLogger(__name__)


def check_trainer_config(trainer_cfg: Any) -> None:
    """Reject trainer settings that cannot run on this machine, naming the fix."""
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} but PyTorch sees no CUDA GPU (torch "
                          f"{torch.__version__}); use trainer=cpu or trainer=ddp_cpu, or install a CUDA build of torch")
    if accelerator == "tpu" and importlib.util.find_spec("torch_xla") is None:
        raise ConfigError("trainer=tpu needs torch_xla (Lightning's XLA accelerator); on a TPU VM install "
                          f"torch_xla matching torch {torch.__version__.split('+')[0]}, or choose trainer=cpu/gpu")


def resolve_config(cfg: DictConfig) -> dict[str, Any]:
    """Resolve every interpolation of ``cfg``; a mandatory value left unset (``???``) is a :class:`ConfigError`."""
    from nas.cli import describe_config_error, missing_value_message

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as err:
        raise ConfigError(missing_value_message(str(err.full_key))) from None
    except OmegaConfBaseException as err:
        raise ConfigError(describe_config_error(err)) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _got(value: Any) -> str:
    return f"got {value!r} ({type(value).__name__})" if isinstance(value, str) else f"got {value!r}"


def require_number(key: str, value: Any, example: str, *, minimum: float | None = None,
                   above: float | None = None, integer: bool = False, optional: bool = False) -> None:
    """Raise a :class:`ConfigError` naming ``key`` and an example unless ``value`` is a finite number in range."""
    if value is None and optional:
        return
    kind = "an integer" if integer else "a finite number"
    bounds = (f" >= {minimum:g}" if minimum is not None else "") + (f" > {above:g}" if above is not None else "")
    ok = (_is_int(value) if integer else _is_number(value)) and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum) and (above is None or value > above)
    if not ok:
        null = " or null" if optional else ""
        raise ConfigError(f"{key} must be {kind}{bounds}{null}, {_got(value)}; e.g. {key}={example}")


def check_search_config(cfg: DictConfig) -> dict[str, Any]:
    """All checks of ``search.py``'s settings that need no data, no LUT and no Trainer; returns the resolved config.

    Types and ranges of the values a user commonly overrides, the epoch budget against the solver's warm-up,
    and the checkpoint to resume from.
    """
    values = resolve_config(cfg)
    trainer, data, solver = values.get("trainer", {}), values.get("data", {}), values.get("solver", {})
    require_number("seed", values.get("seed"), "0", integer=True)
    require_number("data.batch_size", data.get("batch_size"), "64", minimum=1, integer=True)
    if "lambda_" in solver:
        require_number("solver.lambda_", solver["lambda_"], "0.2", minimum=0)
    if "label_smoothing" in solver:
        require_number("solver.label_smoothing", solver["label_smoothing"], "0.1", minimum=0)
    require_number("hardware.target_ms", values.get("hardware", {}).get("target_ms"), "0.8", above=0, optional=True)
    require_number("checkpoint.every_n_train_steps", (values.get("checkpoint") or {}).get("every_n_train_steps"),
                   "50", minimum=1, integer=True, optional=True)
    if "target_ms" in solver and solver["target_ms"] is None and str(solver.get("_target_", "")).endswith("Random"
                                                                                                     "Search"):
        raise ConfigError("solver=random needs a runtime target: set hardware.target_ms=<ms> (or solver.target_ms)")
    if str(solver.get("_target_", "")).endswith("SupernetTraining"):
        from nas.search.solvers.supernet_training import check_sampling_settings

        check_sampling_settings(solver.get("sampling"), solver.get("num_random"), solver.get("distill", False),
                                solver.get("distill_temperature", 1.0))
    check_optimization(solver, "solver")
    check_epoch_budget(trainer, solver)
    ckpt = values.get("ckpt_path")
    if ckpt is not None:
        check_checkpoint_file(str(ckpt))
    return values


def check_epoch_budget(trainer: dict[str, Any], solver: dict[str, Any]) -> None:
    """Refuse a budget that trains nothing or takes no architecture step; warn when the runtime term never acts."""
    if trainer.get("fast_dev_run"):
        return  # Lightning's smoke test: one batch, no checkpoints; no result is expected from it
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    if _is_int(max_steps) and max_steps > 0 and max_epochs in (None, -1):
        return  # a step budget
    require_number("trainer.max_epochs", max_epochs, "10", minimum=1, integer=True)
    limit = trainer.get("limit_train_batches", 1.0)
    if limit is not None:
        require_number("trainer.limit_train_batches", limit, "1.0", above=0)
    warmup = solver.get("arch_warmup_epochs")
    if _is_int(warmup) and max_epochs <= warmup:
        raise ConfigError(
            f"trainer.max_epochs={max_epochs} but the solver trains weights only during its first "
            f"solver.arch_warmup_epochs={warmup} epochs: the search would take no architecture step and report the "
            f"untrained initial architecture. Set trainer.max_epochs>{warmup} or solver.arch_warmup_epochs<"
            f"{max_epochs}")
    runtime_warmup = solver.get("runtime_warmup_epochs")
    if "runtime_warmup_epochs" in solver and runtime_warmup is None:
        runtime_warmup = (solver.get("subset_dropout") or {}).get("epochs")
    lambda_ = solver.get("lambda_", 0)
    if _is_int(runtime_warmup) and max_epochs <= runtime_warmup and _is_number(lambda_) and lambda_ > 0:
        log.warning("trainer.max_epochs=%d <= the runtime warm-up of %d epochs (solver.runtime_warmup_epochs, "
                    "default solver.subset_dropout.epochs): lambda stays 0, so this search optimises accuracy "
                    "only and ignores latency. Set trainer.max_epochs>%d or solver.runtime_warmup_epochs<%d for a "
                    "hardware-aware search.", max_epochs, runtime_warmup, runtime_warmup, max_epochs)


OPTIMIZER_KEYS = ("optimizer", "arch_optimizer")


def check_optimization(settings: dict[str, Any], prefix: str) -> None:
    """The ``_partial_`` optimisers and schedule of ``settings`` import, and each optimiser accepts its options
    (built once on a dummy parameter: torch checks them in the constructor)."""
    from hydra.utils import get_object, instantiate

    for key in (*OPTIMIZER_KEYS, "lr_scheduler"):
        node = settings.get(key)
        if not isinstance(node, dict) or "_target_" not in node:
            continue
        hydra_log = logging.getLogger("hydra.utils")  # get_object logs a multi-line ERROR before it raises
        level, hydra_log.level = hydra_log.level, logging.CRITICAL
        try:
            get_object(str(node["_target_"]))
        except Exception:  # noqa: BLE001 - Hydra raises ImportError, AttributeError or ValueError here
            example = "torch.optim.SGD" if key in OPTIMIZER_KEYS else "nas.search.optimization.warmup_cosine"
            raise ConfigError(f"{prefix}.{key}._target_={node['_target_']!r} cannot be imported; give a class or "
                              f"function path such as {example}") from None
        finally:
            hydra_log.setLevel(level)
        if key in OPTIMIZER_KEYS:
            try:
                instantiate(node)([torch.nn.Parameter(torch.zeros(1))])
            except Exception as err:  # noqa: BLE001 - torch raises TypeError/ValueError for a bad option
                cause = err.__cause__ or err
                raise ConfigError(f"{prefix}.{key}: {node['_target_']} rejects its settings ({cause}); fix "
                                  f"{prefix}.{key}.*") from None


def check_checkpoint_file(path: str) -> None:
    """A checkpoint to resume from must be a complete file written by ``torch.save`` (a zip archive)."""
    fix = "pass ckpt_path=<run dir>/checkpoints/last.ckpt of the run to resume, or drop ckpt_path to start anew"
    if not os.path.exists(path):
        raise ConfigError(f"ckpt_path={path} does not exist; {fix}")
    if not os.path.isfile(path):
        raise ConfigError(f"ckpt_path={path} is not a file; {fix}")
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as archive:
            complete = any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        complete = False
    if not complete:
        raise ConfigError(f"ckpt_path={path} is not a complete checkpoint ({size} bytes; truncated, or not written by "
                          "torch.save); resume from another checkpoint of the run (checkpoints/*.ckpt), or drop "
                          "ckpt_path to start anew")


def check_train_config(cfg: DictConfig) -> dict[str, Any]:
    """The checks of ``train.py``'s settings that need no data: resolution, types and ranges, the checkpoint."""
    values = resolve_config(cfg)
    require_number("seed", values.get("seed"), "0", integer=True)
    require_number("data.batch_size", values.get("data", {}).get("batch_size"), "64", minimum=1, integer=True)
    check_optimization(values.get("train", {}), "train")
    check_epoch_budget(values.get("trainer", {}), {})
    ckpt = values.get("ckpt_path")
    if ckpt is not None:
        check_checkpoint_file(str(ckpt))
    return values
