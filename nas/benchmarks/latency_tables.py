"""Summarise runs of scripts/validate_runtime_model.py as the tables of docs/latency.md.

    python scripts/latency_report.py outputs/validate/*/*/validation.json

Prints, per run, its precision, N, the sessions per network, calibrated MAPE / max APE / share within ±10 % / mean
signed error / Kendall's τ, the plain sum's MAPE and the repeatability floor measured in the same run (between
sessions, or between runs for a run with one session), whether it meets the target (fp32: MAPE <= 1.5 % and max
APE <= 5 %, or MAPE <= 1.25 x the floor where the floor is above 1.2 %; int8: MAPE <= max(1.5 %, 1.25 x the floor),
max APE <= 5 % and >= 99 % of networks within ±10 %), then every named network (held-out designs, extremes,
published networks) with its predicted and measured latency. Runs of both precisions on the same networks (same
space, seed and N) are compared: Kendall's τ and Spearman's ρ between their measured latencies, and the int8/fp32
ratio's median and range.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nas.benchmarks import benchmark_command, command_parser
from nas.cost.validation import runtime_model_metrics
from nas.errors import ConfigError
from nas.estimation import kendall_tau


def precision(result: dict) -> str:
    """The precision a validation run measured (``fp32`` for runs from before precisions existed)."""
    return str(result["hardware"].get("precision") or result["hardware"].get("fingerprint", {}).get("precision")
               or "fp32")


def within_10(result: dict) -> float | None:
    """The share (%) of a run's held-out networks whose calibrated prediction is within ±10 % of the measurement
    (from its rows, so runs that did not record ``within_10_pct`` are scored too)."""
    rows = result.get("rows") or []
    if not rows:
        return result["calibrated"].get("within_10_pct")
    return runtime_model_metrics(np.array([r["predicted_ms"] for r in rows]),
                                 np.array([r["measured_ms"] for r in rows]))["within_10_pct"]


def meets(result: dict) -> str:
    """Whether a validation run meets the accuracy target of its precision: ``yes``, ``yes (floor)`` or ``no``."""
    cal, floor = result["calibrated"], result["repeatability"]["mape_pct"]
    if precision(result) == "int8":
        share = within_10(result)
        ok = (cal["mape_pct"] <= max(1.5, 1.25 * floor) and cal["max_ape_pct"] <= 5.0
              and share is not None and share >= 99.0)
        return ("yes (floor)" if cal["mape_pct"] > 1.5 else "yes") if ok else "no"
    if cal["mape_pct"] <= 1.5 and cal["max_ape_pct"] <= 5.0:
        return "yes"
    if floor > 1.2 and cal["mape_pct"] <= 1.25 * floor:
        return "yes (floor)"
    return "no"


def tables(results: list[dict]) -> str:
    """The two Markdown tables: one row per run, then one per named network of every run."""
    lines = ["| space | precision | seed | N | sessions x runs | calibrated MAPE | max APE | within ±10 % "
             "| mean signed | τ | plain-sum MAPE | floor (halves) | floor τ | load avg | target met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, p, rep = r["calibrated"], r["plain_sum"], r["repeatability"]
        load = r.get("load_average", {})
        loads = f"{load['before'][0]:.1f} → {load['after'][0]:.1f}" if load else "n/a"
        share = within_10(r)
        lines.append(f"| {r['space']['name']} | {precision(r)} | {r['seed']} | {r['n']} | "
                     f"{r['hardware'].get('sessions', 1)} x {r['hardware'].get('repeats', '?')} | "
                     f"{c['mape_pct']:.2f} % | {c['max_ape_pct']:.2f} % | "
                     f"{'n/a' if share is None else f'{share:.0f} %'} | "
                     f"{c['mean_signed_error_pct']:+.2f} % | {c['kendall_tau']:.3f} | {p['mape_pct']:.2f} % | "
                     f"{rep['mape_pct']:.2f} % ({rep.get('between', 'runs')}) | {rep['kendall_tau']:.3f} | {loads} | "
                     f"{meets(r)} |")
    lines += ["", "| space | precision | seed | network | layers (SE) | measured | calibrated | error | plain sum "
              "| error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name, row in r.get("named", {}).items():
            tag = " (calibration net)" if row.get("calibration_network") else ""
            lines.append(f"| {r['space']['name']} | {precision(r)} | {r['seed']} | {name}{tag} | "
                         f"{row['kept_ops']} ({row['se_ops']}) | "
                         f"{row['measured_ms']:.3f} ms | {row['predicted_ms']:.3f} ms | {row['error_pct']:+.2f} % | "
                         f"{row['predicted_plain_ms']:.3f} ms | {row['plain_error_pct']:+.2f} % |")
    comparisons = precision_comparisons(results)
    if comparisons:
        lines += ["", "| space | seed | N | τ fp32 vs int8 | ρ | int8 / fp32 median | range | int8 faster |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in comparisons:
            lines.append(f"| {c['space']} | {c['seed']} | {c['n']} | {c['kendall_tau']:.3f} | {c['spearman_rho']:.3f} "
                         f"| {c['ratio_median']:.3f} | {c['ratio_min']:.3f}-{c['ratio_max']:.3f} | "
                         f"{c['int8_faster_pct']:.0f} % |")
    return "\n".join(lines)


def precision_comparisons(results: list[dict]) -> list[dict]:
    """Per pair of an fp32 and an int8 run on the same networks (space, seed, N and architectures equal): Kendall's
    τ and Spearman's ρ between their measured latencies, and the int8 / fp32 ratio (median, range, share < 1)."""
    from scipy.stats import spearmanr

    out = []
    by_precision: dict[str, list[dict]] = {"fp32": [], "int8": []}
    for r in results:
        by_precision.setdefault(precision(r), []).append(r)
    for a in by_precision["fp32"]:
        for b in by_precision["int8"]:
            if (a["space"], a["seed"], a["n"]) != (b["space"], b["seed"], b["n"]) or \
                    [r["architecture"] for r in a["rows"]] != [r["architecture"] for r in b["rows"]]:
                continue
            fp32 = np.array([r["measured_ms"] for r in a["rows"]])
            int8 = np.array([r["measured_ms"] for r in b["rows"]])
            ratio = int8 / fp32
            out.append({"space": a["space"]["name"], "seed": a["seed"], "n": a["n"],
                        "kendall_tau": kendall_tau(fp32, int8), "spearman_rho": float(spearmanr(fp32, int8).statistic),
                        "ratio_median": float(np.median(ratio)), "ratio_min": float(ratio.min()),
                        "ratio_max": float(ratio.max()), "int8_faster_pct": float(100 * np.mean(ratio < 1))})
    return out


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
