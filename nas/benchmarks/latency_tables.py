"""Summarise runs of scripts/validate_runtime_model.py as the tables of docs/latency.md.

    python scripts/latency_report.py outputs/validate/*/*/validation.json

Prints, per run, N, the sessions per network, calibrated MAPE / max APE / mean signed error / Kendall's τ, the
plain sum's MAPE and the repeatability floor measured in the same run (between sessions, or between runs for a run
with one session), whether it meets the target (MAPE <= 1.5 % and max APE <= 5 %,
or MAPE <= 1.25 x the floor where the floor is above 1.2 %), then every named network (held-out designs,
extremes, published networks) with its predicted and measured latency.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from nas.benchmarks import benchmark_command, command_parser
from nas.errors import ConfigError


def meets(result: dict) -> str:
    """Whether a validation run meets the accuracy target: ``yes``, ``yes (floor)`` or ``no``."""
    cal, floor = result["calibrated"], result["repeatability"]["mape_pct"]
    if cal["mape_pct"] <= 1.5 and cal["max_ape_pct"] <= 5.0:
        return "yes"
    if floor > 1.2 and cal["mape_pct"] <= 1.25 * floor:
        return "yes (floor)"
    return "no"


def tables(results: list[dict]) -> str:
    """The two Markdown tables: one row per run, then one per named network of every run."""
    lines = ["| space | seed | N | sessions | calibrated MAPE | max APE | mean signed | τ | plain-sum MAPE "
             "| floor (halves) | floor τ | load avg | target met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, p, rep = r["calibrated"], r["plain_sum"], r["repeatability"]
        load = r.get("load_average", {})
        loads = f"{load['before'][0]:.1f} → {load['after'][0]:.1f}" if load else "n/a"
        lines.append(f"| {r['space']['name']} | {r['seed']} | {r['n']} | {r['hardware'].get('sessions', 1)} | "
                     f"{c['mape_pct']:.2f} % | {c['max_ape_pct']:.2f} % | "
                     f"{c['mean_signed_error_pct']:+.2f} % | {c['kendall_tau']:.3f} | {p['mape_pct']:.2f} % | "
                     f"{rep['mape_pct']:.2f} % ({rep.get('between', 'runs')}) | {rep['kendall_tau']:.3f} | {loads} | "
                     f"{meets(r)} |")
    lines += ["", "| space | seed | network | layers (SE) | measured | calibrated | error | plain sum | error |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name, row in r.get("named", {}).items():
            tag = " (calibration net)" if row.get("calibration_network") else ""
            lines.append(f"| {r['space']['name']} | {r['seed']} | {name}{tag} | {row['kept_ops']} ({row['se_ops']}) | "
                         f"{row['measured_ms']:.3f} ms | {row['predicted_ms']:.3f} ms | {row['error_pct']:+.2f} % | "
                         f"{row['predicted_plain_ms']:.3f} ms | {row['plain_error_pct']:+.2f} % |")
    return "\n".join(lines)


def report(files: Sequence[Path]) -> str:
    """Read the ``validation.json`` files and print their tables; returns them."""
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise ConfigError(f"{missing[0]} does not exist; pass validation.json files of validate-runtime-model runs")
    text = tables([json.loads(Path(f).read_text()) for f in files])
    print(text)
    return text


def parser() -> argparse.ArgumentParser:
    ap = command_parser(__doc__, full=False)
    ap.add_argument("files", nargs="+", type=Path, help="validation.json files")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/latency_report.py <validation.json> ...``; exit status 0."""
    benchmark_command(parser(), lambda args: report(args.files), argv)
    return 0
