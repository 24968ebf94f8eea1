"""One cost vocabulary: the canonical name and unit of every hardware cost spnas measures, predicts, constrains or
reports.

A canonical name ends in its unit (``latency_ms``, ``memory_mb``), so a number in a config, a record or a report
says what it is counted in: HyperPower's constraints and measurements (``hyperpower.constraints.*``), the costs of
``objective=`` (``cost: latency_ms``), the sub-network search's records (``validations.jsonl``) and its
``pareto.json``. The sub-network search's cost *objectives* (``objectives=[error, latency]``) are named without the
unit; :data:`OBJECTIVE_COSTS` maps them to the canonical names its records and reports use.
"""

from __future__ import annotations

UNITS: dict[str, str] = {
    "latency_ms": "ms",       # inference latency of the whole network (a hardware= backend, or the LUT runtime model)
    "energy_mj": "mJ",        # inference energy (measured, or latency_ms x device_power_w: ms x W = mJ)
    "power_w": "W",           # mean board power during inference (NVML)
    "memory_mb": "MB",        # peak CPU inference memory (parameters + peak allocations), MB of 2^20 bytes
    "cuda_memory_mb": "MB",   # torch.cuda.max_memory_allocated over one inference, MB of 2^20 bytes
    "macs_m": "MMACs",        # multiply-accumulates of one inference, millions
    "params_m": "M",          # parameters, millions
}
# the sub-network search's cost objectives (nas.subnet_search.search_objectives) -> canonical names
OBJECTIVE_COSTS: dict[str, str] = {"latency": "latency_ms", "macs": "macs_m", "params": "params_m"}


def unit(name: str) -> str:
    """The unit of a cost, by canonical name (``latency_ms``) or sub-network objective name (``latency``)."""
    return UNITS[OBJECTIVE_COSTS.get(name, name)]
