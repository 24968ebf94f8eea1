"""The ``spnas`` command: ``spnas <command> [overrides]`` (also ``python -m nas.command <command> ...``).

Each command is a function of :mod:`nas.entries`, imported only when it runs (``spnas --help`` stays fast and
needs no optional extra); a Hydra command's command line is checked (:func:`nas.cli.hydra_entry`) before its module
is imported. The command's name is taken off ``sys.argv`` before it runs, so a Hydra app sees its
overrides exactly as ``python search.py <overrides>`` would; ``spnas <command> --help`` is the command's own help.
A command that does not exist is one ``error:`` line naming the valid ones, exit status 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from nas.cli import fail, hydra_entry

#: command -> (module of nas.entries, function, Hydra config name or None (parses its own arguments), one line of
#: help). A Hydra command's module is imported after its command line is checked: a bad one fails in a second.
COMMANDS: dict[str, tuple[str, str, str | None, str]] = {
    "search": ("hydra_apps", "search_main", "search",
               "hardware-aware architecture search of a supernet; writes arch.json"),
    "train": ("hydra_apps", "train_main", "train", "train a searched architecture from scratch (arch=<run>/arch.json)"),
    "subnet-search": ("hydra_apps", "subnet_search_main", "subnet_search",
                      "Pareto fronts of the sub-networks of a trained supernet, per device (supernet=<ckpt>)"),
    "hyperpower": ("hydra_apps", "hyperpower_main", "hyperpower",
                   "HyperPower: constrained Bayesian optimisation of a network's structure (power/memory limits)"),
    "profile-lut": ("profile_lut", "main", "profile",
                    "profile a space's latency LUT on a hardware backend and cache it"),
    "export-ops": ("export_ops", "main", "export_ops",
                   "export a space's candidate ops as ONNX files for a remote device"),
    "validate-runtime-model": ("validate_runtime_model", "main", "validate",
                               "predicted vs measured latency of random networks (MAPE, Kendall tau)"),
    "latency": ("latency", "main", "latency", "predicted and measured latency of one network (arch=...)"),
    "popdb": ("popdb_mask", "main", "popdb", "PopDB: mask rarely explored candidates from a search's history"),
    "evaluate-predictor": ("evaluate_predictor", "run_command", None,
                           "test error and rank agreement of a predictor vs the number of training records"),
    "study-solvers": ("study_solvers", "main", None,
                      "Study A: solvers vs a cloud of random networks, every network retrained (resumable)"),
    "study-anchors": ("study_anchors", "main", None,
                      "Study B: Study A's best searched network retrained longer vs published results"),
    "study-truth": ("study_truth", "main", None,
                    "truth study: supernet-measured vs retrained error of Study A's networks, per supernet variant"),
    "gpu-check": ("gpu_check", "main", "gpu_check",
                  "on a CUDA GPU: the cuda backend, ONNX Runtime's CUDA provider, a trainer=gpu search, NVML power"),
}


def usage() -> str:
    """The text of ``spnas --help``: one line per command."""
    width = max(map(len, COMMANDS))
    lines = ["usage: spnas <command> [key=value overrides ...]   (spnas <command> --help: that command's help)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (*_, text) in COMMANDS.items()]
    lines += ["", "Configs: the nas/conf folder of the installed package (spnas <command> --cfg job prints one); "
              "runs write to outputs/<command>/<date>/<time> under the current folder."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``spnas <command> [args]``; ``argv`` defaults to ``sys.argv[1:]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    names = ", ".join(COMMANDS)
    if not args:
        fail(f"no command given; usage: spnas <command> [overrides], with a command of: {names} (spnas --help)")
    name, rest = args[0], args[1:]
    if name in ("-h", "--help", "help"):
        print(usage())
        return
    if name == "--version":
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"spnas {version('spnas')}")
        except PackageNotFoundError:
            print("spnas (not installed: running from a source checkout)")
        return
    if name not in COMMANDS:
        fail(f"unknown command {name!r}; choose one of: {names} (spnas --help)")
    module, function, config_name, _ = COMMANDS[name]

    def run() -> object:
        return getattr(importlib.import_module(f"nas.entries.{module}"), function)()

    sys.argv = [f"spnas {name}", *rest]  # what Hydra and the hand-parsed commands read
    if config_name is None:
        run()
    else:
        hydra_entry(run, config_name, rest)


if __name__ == "__main__":
    main()
