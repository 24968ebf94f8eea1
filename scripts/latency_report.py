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
from pathlib import Path


def meets(result: dict) -> str:
    cal, floor = result["calibrated"], result["repeatability"]["mape_pct"]
    if cal["mape_pct"] <= 1.5 and cal["max_ape_pct"] <= 5.0:
        return "yes"
    if floor > 1.2 and cal["mape_pct"] <= 1.25 * floor:
        return "yes (floor)"
    return "no"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="validation.json files")
    args = parser.parse_args(argv)
    results = [json.loads(f.read_text()) for f in args.files]
    print("| space | seed | N | sessions | calibrated MAPE | max APE | mean signed | τ | plain-sum MAPE "
          "| floor (halves) | floor τ | load avg | target met |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        c, p, rep = r["calibrated"], r["plain_sum"], r["repeatability"]
        load = r.get("load_average", {})
        loads = f"{load['before'][0]:.1f} → {load['after'][0]:.1f}" if load else "n/a"
        print(f"| {r['space']['name']} | {r['seed']} | {r['n']} | {r['hardware'].get('sessions', 1)} | "
              f"{c['mape_pct']:.2f} % | {c['max_ape_pct']:.2f} % | "
              f"{c['mean_signed_error_pct']:+.2f} % | {c['kendall_tau']:.3f} | {p['mape_pct']:.2f} % | "
              f"{rep['mape_pct']:.2f} % ({rep.get('between', 'runs')}) | {rep['kendall_tau']:.3f} | {loads} | "
              f"{meets(r)} |")
    print()
    print("| space | seed | network | layers (SE) | measured | calibrated | error | plain sum | error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for name, row in r.get("named", {}).items():
            tag = " (calibration net)" if row.get("calibration_network") else ""
            print(f"| {r['space']['name']} | {r['seed']} | {name}{tag} | {row['kept_ops']} ({row['se_ops']}) | "
                  f"{row['measured_ms']:.3f} ms | {row['predicted_ms']:.3f} ms | {row['error_pct']:+.2f} % | "
                  f"{row['predicted_plain_ms']:.3f} ms | {row['plain_error_pct']:+.2f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
