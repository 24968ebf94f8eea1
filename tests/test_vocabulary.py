"""One cost vocabulary (nas.cost.vocabulary): every cost name a config, record or report uses is canonical, with
its unit in one table."""

from __future__ import annotations

import yaml

from nas.cli import CONFIG_DIR
from nas.cost.vocabulary import OBJECTIVE_COSTS, UNITS, unit
from nas.hyperpower.measure import METRICS
from nas.search.objectives import COSTS, Measurements
from nas.subnet_search.report import OUTPUT_NAMES
from nas.subnet_search.search_objectives import CONSTRAINTS
from nas.subnet_search.search_objectives import COSTS as SUBNET_COSTS
from nas.subnet_search.search_objectives import UNITS as SUBNET_UNITS


def test_every_cost_name_is_canonical_and_ends_in_its_unit():
    suffix = {"ms": "_ms", "mJ": "_mj", "W": "_w", "MB": "_mb", "MMACs": "_m", "M": "_m"}
    assert all(name.endswith(suffix[u]) for name, u in UNITS.items())
    hyperpower = yaml.safe_load((CONFIG_DIR / "hyperpower.yaml").read_text())["hyperpower"]["constraints"]
    assert set(METRICS) == set(hyperpower) <= set(UNITS)
    assert set(COSTS) <= set(UNITS) and set(COSTS) <= {f.name for f in Measurements.__dataclass_fields__.values()}
    for path in (CONFIG_DIR / "objective").glob("*.yaml"):
        cost = yaml.safe_load(path.read_text()).get("cost")
        assert cost is None or cost in COSTS, path


def test_the_subnet_search_names_its_cost_objectives_without_the_unit_and_reports_them_with_it():
    assert set(SUBNET_COSTS) == set(OBJECTIVE_COSTS)
    assert {OUTPUT_NAMES[n] for n in SUBNET_COSTS} == set(OBJECTIVE_COSTS.values()) <= set(UNITS)
    assert {n: SUBNET_UNITS[n] for n in SUBNET_COSTS} == {"latency": "ms", "macs": "MMACs", "params": "M"}
    assert unit("latency") == unit("latency_ms") == "ms"
    subnet = yaml.safe_load((CONFIG_DIR / "subnet_search.yaml").read_text())["constraints"]
    assert set(subnet) == set(CONSTRAINTS) and all(CONSTRAINTS[k] in SUBNET_COSTS for k in subnet)
