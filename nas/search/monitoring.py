"""TensorBoard monitoring of a search, shared by every solver (hooked from ``nas.search.solvers.base.SearchModule``).

What a search writes to ``<run>/tb`` (besides the solver's own scalars such as ``train/ce``, ``train/runtime_ms``
- the two terms of Eq 5.7 over steps, thesis Fig 5.6):

* ``arch/Lxx_kernel|expansion|se`` (per epoch, from ``log_architecture``) and the image
  ``arch/decisions_over_time``: per-layer decisions at every validation, as a layers x epochs grid;
* ``superkernel_std/Lxx_k<k>`` scalars: the mean over a kernel shell's positions of the standard deviation of
  the depthwise weights across channels (plain values); the image ``superkernel/std_heatmap``: that standard
  deviation per kernel position in log10 scale (thesis Fig 5.9: an outer shell that is in use varies across
  channels, an unused one stays flat);
* ``arch/final``: the derived architecture drawn as a block diagram, at the end of the fit;
* the hparams plugin (``hparams/*`` metrics): the run's hyperparameters with its final accuracy, predicted
  runtime and objective, so TensorBoard's HPARAMS tab compares runs of a sweep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from nas.space.architecture import Architecture
from nas.space.search_space import SearchSpace
from nas.supernets.superkernel import SuperMBConv


def _experiment(module: Any) -> Any | None:
    """The TensorBoard ``SummaryWriter`` of ``module``'s logger on rank 0, else ``None``."""
    logger = getattr(module, "logger", None)
    experiment = getattr(logger, "experiment", None) if logger is not None else None
    if experiment is None or not hasattr(experiment, "add_figure") or getattr(module, "global_rank", 0) != 0:
        return None
    return experiment


def superkernel_std(layer: SuperMBConv) -> torch.Tensor:
    """``(kmax, kmax)`` standard deviation of the depthwise superkernel across its channels (Fig 5.9)."""
    with torch.no_grad():
        return layer.weight_dw.detach()[:, 0].float().std(dim=0).cpu()


def shell_std(layer: SuperMBConv) -> dict[int, float]:
    """Mean channel-std of each kernel shell: ``{3: core, 5: 5x5 minus 3x3 shell, ...}``."""
    std = superkernel_std(layer)
    masks = layer.kernel_masks.detach().cpu()
    return {k: float((std * masks[j]).sum() / masks[j].sum()) for j, k in enumerate(layer.kernels)}


def searchable_layers(module: torch.nn.Module, space: SearchSpace) -> list[tuple[int, SuperMBConv]]:
    """``(layer index, superkernel layer)`` pairs in ``module`` (empty for solvers without superkernels)."""
    layers = [m for m in module.modules() if isinstance(m, SuperMBConv)]
    by_name = {spec.name: spec.index for spec in space.layers}
    return [(by_name.get(layer.spec.name, i), layer) for i, layer in enumerate(layers)]


def _choice_code(choice: Any, spec: Any) -> int:
    """Index of ``choice`` among the layer's candidate ops (0 = the smallest / skip)."""
    choices = spec.choices()
    try:
        return choices.index(choice)
    except ValueError:
        return -1


def std_heatmap_figure(layers: Sequence[tuple[int, SuperMBConv]]) -> Any:
    """One small log10(std) heatmap per superkernel layer (lighter = smaller, as in Fig 5.9)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = max(1, len(layers))
    fig = Figure(figsize=(1.6 * count + 0.8, 2.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, count, squeeze=False)
    maps = [torch.log10(superkernel_std(layer).clamp_min(1e-8)) for _, layer in layers]
    lo = min((float(m.min()) for m in maps), default=0.0)
    hi = max((float(m.max()) for m in maps), default=1.0)
    image = None
    for ax, (index, _), values in zip(axes[0], layers, maps):
        image = ax.imshow(values.numpy(), cmap="viridis_r", vmin=lo, vmax=hi)
        ax.set_title(f"L{index:02d}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="log10 std")
    return fig


def decisions_figure(space: SearchSpace, history: Sequence[tuple[int, Architecture]]) -> Any:
    """Layers (rows) x validations (columns), coloured by the chosen candidate and labelled with it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    specs = space.searchable_layers
    grid = [[_choice_code(arch.layers[spec.index], spec) for _, arch in history] for spec in specs]
    fig = Figure(figsize=(1.0 + 0.9 * max(1, len(history)), 0.9 + 0.35 * len(specs)))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(grid, cmap="Pastel1", aspect="auto", vmin=0,
              vmax=max(1, max((len(s.choices()) - 1 for s in specs), default=1)))
    for row, spec in enumerate(specs):
        for col, (_, arch) in enumerate(history):
            ax.text(col, row, arch.layers[spec.index].key.replace("_", "\n"), ha="center", va="center",
                    fontsize=5, color="black")
    ax.set_yticks(range(len(specs)), [f"L{s.index:02d}" for s in specs], fontsize=7)
    ax.set_xticks(range(len(history)), [str(step) for step, _ in history], fontsize=7)
    ax.set_xlabel("global step")
    fig.tight_layout()
    return fig


def architecture_figure(space: SearchSpace, arch: Architecture, title: str = "") -> Any:
    """The architecture as a row of blocks: width ~ expansion, colour ~ kernel, label k/e/se; skips hatched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(1.0 + 0.75 * len(space.layers), 2.4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = 0.0
    colours = {3: "#4c72b0", 5: "#dd8452", 7: "#c44e52"}
    for spec, choice in zip(space.layers, arch.layers):
        width = 0.35 + 0.1 * (choice.expansion if not choice.is_skip else 1.0)
        if choice.is_skip:
            ax.add_patch(Rectangle((x, 0.2), width, 0.6, fill=False, hatch="//", edgecolor="grey"))
            label = "skip"
        else:
            ax.add_patch(Rectangle((x, 0.2), width, 0.6, color=colours.get(choice.kernel, "#55a868")))
            label = f"k{choice.kernel}\ne{choice.expansion:g}\nse{choice.se_ratio:g}"
        ax.text(x + width / 2, 0.5, label, ha="center", va="center", fontsize=6)
        ax.text(x + width / 2, 0.05, f"L{spec.index:02d}\nc{spec.out_channels}/s{spec.stride}", ha="center",
                va="center", fontsize=5)
        x += width + 0.1
    ax.set_xlim(-0.1, x)
    ax.set_ylim(-0.1, 1.0)
    ax.axis("off")
    ax.set_title(title or f"space '{space.name}'", fontsize=8)
    fig.tight_layout()
    return fig


class SearchMonitor:
    """Collects per-validation decisions and writes the figures/scalars above for one SearchModule."""

    def __init__(self) -> None:
        self.history: list[tuple[int, Architecture]] = []

    def on_architecture(self, module: Any, arch: Architecture) -> None:
        """Called at every logged architecture (each validation): std scalars, std heatmap, decision grid."""
        space: SearchSpace = module.space
        step = int(module.global_step)
        if self.history and self.history[-1][0] == step:
            self.history[-1] = (step, arch)
        else:
            self.history.append((step, arch))
        layers = searchable_layers(module, space)
        for index, layer in layers:
            for kernel, value in shell_std(layer).items():
                module.log(f"superkernel_std/L{index:02d}_k{kernel}", value, on_epoch=True, sync_dist=False)
        experiment = _experiment(module)
        if experiment is None:
            return
        if layers:
            experiment.add_figure("superkernel/std_heatmap", std_heatmap_figure(layers), step, close=True)
        experiment.add_figure("arch/decisions_over_time", decisions_figure(space, self.history), step, close=True)

    def on_fit_end(self, module: Any, arch: Architecture, runtime_ms: float) -> None:
        experiment = _experiment(module)
        if experiment is None:
            return
        title = f"derived architecture: {runtime_ms:.4g} ms predicted"
        experiment.add_figure("arch/final", architecture_figure(module.space, arch, title), int(module.global_step),
                              close=True)
        experiment.flush()


def log_final_hparams(logger: Any, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """Write the hparams plugin entry: ``params`` with the run's final ``metrics`` (``hparams/<name>``)."""
    if logger is None or not hasattr(logger, "log_hyperparams"):
        return
    finite = {f"hparams/{k}": float(v) for k, v in metrics.items()
              if isinstance(v, (int, float)) and math.isfinite(float(v))}
    try:  # TensorBoard's hparams plugin takes the final metrics with the parameters
        logger.log_hyperparams(dict(params), metrics=finite)
    except TypeError:  # other loggers (CSV, MLflow, W&B): parameters and metrics separately
        logger.log_hyperparams(dict(params))
        logger.log_metrics(finite)
    logger.finalize("success")


def build_logger(cfg: Any) -> Any:
    """The ``logger=`` group's Lightning logger of a run's config ``cfg`` (TensorBoard by default), or ``False``
    without one (``~logger``).

    A logger whose package is missing (MLflow, W&B) is a :class:`ConfigError` naming the package to install.
    """
    node = cfg.get("logger")
    if not node:
        return False
    from hydra.utils import instantiate

    from nas.errors import ConfigError

    try:
        return instantiate(node)
    except Exception as err:  # noqa: BLE001 - Lightning raises ModuleNotFoundError/RuntimeError for a missing package
        cause = err.__cause__ or err
        if isinstance(cause, (ImportError, ModuleNotFoundError)) or "not installed" in str(cause).lower() or \
                "not available" in str(cause).lower():
            raise ConfigError(f"the logger {node._target_} needs a package that is not installed ({cause}); install "
                              "it, or choose logger=tensorboard or logger=csv") from None
        raise
