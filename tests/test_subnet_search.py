"""Sub-network search over a trained supernet (subnet_search.py, solver=supernet; source 002 §3-4)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from nas.cli import CONFIG_DIR
from nas.cost.backends import MacsProxy
from nas.cost.profiler import profile_space
from nas.entries.hydra_apps import SUBNET_SEARCH
from nas.errors import ConfigError
from nas.run_shell import run_task
from nas.search.solvers.supernet_training import sample_step_architectures
from nas.search.training import load_architecture
from nas.space.architecture import Architecture
from nas.subnet_search.encoding import GenomeCodec
from nas.subnet_search.engine import AlgorithmConfig, BudgetedSearch
from nas.subnet_search.evaluation import SupernetEvaluator
from nas.subnet_search.hypervolume import Normalisation, front_2d
from nas.subnet_search.run import run_subnet_search
from nas.subnet_search.search_objectives import ObjectiveSpace, Target
from nas.subnet_search.store import ValidationStore
from nas.supernets.bn_calibration import reestimate_batchnorm
from nas.supernets.single_path_supernet import SinglePathSupernet
from tests.conftest import MICRO_SPACE, ROOT, make_solver, proxy_lut


# ---------------------------------------------------------------------- helpers
class AdditiveError:
    """A synthetic validated objective: error = base + sum of per-layer, per-candidate contributions.

    Larger candidates lower the error (with seeded noise), so error and latency conflict and the exact front of a
    whole space can be enumerated with numpy.
    """

    def __init__(self, codec: GenomeCodec, latency_tables: list[np.ndarray], seed: int = 123) -> None:
        rng = np.random.default_rng(seed)
        self.codec = codec
        self.tables = []
        for tab in latency_tables:
            rel = (tab - tab.min()) / (tab.max() - tab.min())
            self.tables.append(-0.08 * np.sqrt(rel) + rng.uniform(0.0, 0.03, len(tab)))
        self.calls: list[str] = []

    def of_genes(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(X)
        return 0.5 + sum(tab[X[:, j]] for j, tab in enumerate(self.tables))

    def validate(self, arch: Architecture) -> dict[str, float]:
        self.calls.append(" ".join(arch.keys))
        e = float(self.of_genes(self.codec.encode(arch))[0])
        return {"error": e, "ce": 2 * e}


def objective_space(space, names=("error", "latency"), constraints=None, luts=None):
    codec = GenomeCodec(space)
    luts = luts or {"proxy": proxy_lut(space)}
    targets = [Target.from_lut(name, space, lut, 1, 10) for name, lut in luts.items()]
    return ObjectiveSpace.build(codec, list(names), targets, 1, 10, constraints)


def fake_checkpoint(path: Path, space, seed: int = 0) -> Path:
    """A checkpoint of an (untrained) supernet in the format search.py writes."""
    torch.manual_seed(seed)
    net = SinglePathSupernet(space, 1, 10)
    torch.save({"state_dict": {f"supernet.{k}": v for k, v in net.state_dict().items()},
                "spnas": {"format_version": 1, "space": space.name, "space_digest": space.digest},
                "hyper_parameters": {"solver": "supernet"}, "pytorch-lightning_version": "2.6.0"}, path)
    return path


def subnet_cfg(tmp: Path, ckpt: Path, *overrides: str, out: str = "run"):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("subnet_search", overrides=[f"supernet={ckpt}", "hardware=macs_proxy", "data.limit=200",
                                                  "progress=false", f"paths.output_dir={tmp / out}",
                                                  f"paths.cache_dir={tmp / 'cache'}", "algorithm.population=10",
                                                  "budget=30", "eval.bn_batches=1", *overrides])
    with open_dict(cfg):
        cfg.space = OmegaConf.create(MICRO_SPACE)
    return cfg


@pytest.fixture
def micro_ckpt(micro_space, tmp_path):
    return fake_checkpoint(tmp_path / "supernet.ckpt", micro_space)


# ---------------------------------------------------------------------- supernet = child
def test_fixed_decisions_give_the_extracted_childs_logits(micro_space):
    torch.manual_seed(0)
    net = SinglePathSupernet(micro_space, 1, 10)
    calibration = [torch.randn(16, 1, 16, 16) * 2 + 0.5 for _ in range(2)]
    evaluator = SupernetEvaluator(net, calibration, [(torch.randn(4, 1, 16, 16), torch.zeros(4, dtype=torch.long))])
    rng = random.Random(0)
    archs = [micro_space.largest(), micro_space.smallest()] + [micro_space.sample(rng) for _ in range(4)]
    x = torch.randn(8, 1, 16, 16)
    for arch in archs:
        evaluator.recalibrate(arch)  # BN statistics of this sub-network, then copied into the child
        child = net.extract_child(arch).eval()
        with torch.no_grad():
            expected = child(x)
        got = evaluator.logits(arch, x)
        assert torch.allclose(got, expected, atol=1e-5, rtol=0), (arch.keys, (got - expected).abs().max())
    # the statistics really are per sub-network: two architectures leave different running means
    bn = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    evaluator.recalibrate(archs[0])
    mean_largest = bn.running_mean.clone()
    evaluator.recalibrate(archs[1])
    assert not torch.allclose(bn.running_mean, mean_largest)
    # validating through the extracted child (eval.via=child) measures the same numbers
    val = [(torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,)))]
    by_supernet = SupernetEvaluator(net, calibration, val, via="supernet")
    by_child = SupernetEvaluator(net, calibration, val, via="child")
    for arch in archs[:4]:
        a, b = by_supernet.validate(arch), by_child.validate(arch)
        assert a["error"] == b["error"] and a["ce"] == pytest.approx(b["ce"], abs=1e-5)


# ---------------------------------------------------------------------- solver=supernet
def test_a_validation_assembles_its_child_from_kept_blocks_with_the_numbers_of_a_fresh_extraction(micro_space):
    torch.manual_seed(0)
    net = SinglePathSupernet(micro_space, 1, 10)
    calibration = [torch.randn(16, 1, 16, 16) for _ in range(2)]
    val = [(torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,)))]
    evaluator = SupernetEvaluator(net, calibration, val, via="child")
    rng = random.Random(3)
    archs = [micro_space.sample(rng) for _ in range(6)] + [micro_space.largest(), micro_space.smallest()]
    for arch in archs + archs[:3]:  # blocks kept from earlier sub-networks, their BN statistics overwritten since
        child = net.extract_child(arch)
        reestimate_batchnorm(child, child, calibration)
        with torch.no_grad():
            out = child.eval()(val[0][0])
        expected = {"error": float((out.argmax(1) != val[0][1]).float().mean()),
                    "ce": float(torch.nn.functional.cross_entropy(out.double(), val[0][1]))}
        assert evaluator.validate(arch) == pytest.approx(expected, abs=0, rel=0), arch.keys
    distinct = {(i, c.key) for a in archs for i, c in enumerate(a.layers) if not c.is_skip}
    assert len(evaluator._parts) == len(distinct) + 2  # one extraction per layer choice, plus stem and head


def test_supernet_solver_samples_deterministically_and_learns_no_thresholds(micro_space, micro_lut):
    steps = [sample_step_architectures(micro_space, "sandwich", 2, seed=3, step=s) for s in range(4)]
    assert all(a[0] == micro_space.largest() and a[1] == micro_space.smallest() and len(a) == 4 for a in steps)
    assert steps == [sample_step_architectures(micro_space, "sandwich", 2, seed=3, step=s) for s in range(4)]
    assert len({tuple(a[2].keys) for a in steps}) > 1  # random members change from step to step
    module = make_solver("supernet", micro_space, micro_lut, sampling="uniform", num_random=2)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    module.training_step((x, y), 0).backward()
    assert all(p.grad is None for p in module.supernet.threshold_parameters())
    assert module.supernet.stem[0].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="num_random"):
        make_solver("supernet", micro_space, micro_lut, sampling="uniform", num_random=0)


def test_distilled_step_teaches_the_other_subnets_with_the_largest_ones_detached_logits(micro_space, micro_lut):
    """In-place distillation (BigNAS): the step loss is (CE(largest, labels) + Σ T²·KL(largest ‖ other)) / n, computed
    by hand; the labels reach the loss only through the largest network; no gradient flows into the teacher
    through its soft target."""
    import torch.nn.functional as F

    temperature = 2.0
    module = make_solver("supernet", micro_space, micro_lut, sampling="sandwich", num_random=1, distill=True,
                         distill_temperature=temperature)
    net = module.supernet
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    archs = sample_step_architectures(micro_space, "sandwich", 1, seed=module.seed, step=0)
    assert archs[0] == micro_space.largest() and len(archs) == 3

    def by_hand(labels: torch.Tensor, detach: bool = True) -> torch.Tensor:
        teacher = net(x, net.fixed_decisions(archs[0]))
        soft = teacher.detach() if detach else teacher
        log_t = F.log_softmax(soft / temperature, 1)
        kd = [temperature ** 2 * (log_t.exp() * (log_t - F.log_softmax(net(x, net.fixed_decisions(a)) / temperature,
                                                                       1))).sum(1).mean() for a in archs[1:]]
        return (F.cross_entropy(teacher, labels, label_smoothing=module.label_smoothing) + sum(kd)) / len(archs)

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        net.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in net.weight_parameters() if p.grad is not None]

    logged: dict[str, torch.Tensor] = {}
    module.log_dict = lambda values, **kw: logged.update(values)  # no trainer: catch the step's logs
    step = module.training_step((x, y), 0)
    assert float(step.detach()) == pytest.approx(float(by_hand(y).detach()), rel=1e-5)
    # the distillation loss is logged: the mean over the students, the step loss less the teacher's share
    # (a difference of float32 losses: its error is relative to the step loss, not to the small difference)
    assert float(logged["train/distill"]) == pytest.approx(float(3 * step - logged["train/ce_largest"]) / 2,
                                                           abs=1e-5 * (1 + float(step)))
    # other labels change the loss by the teacher's cross-entropy only: the students never see the labels
    y2 = (y + 1) % 10
    teacher = net(x, net.fixed_decisions(archs[0]))
    delta = (F.cross_entropy(teacher, y2, label_smoothing=0.1) - F.cross_entropy(teacher, y, label_smoothing=0.1)) / 3
    assert float(module.training_step((x, y2), 0) - step) == pytest.approx(float(delta), rel=1e-4, abs=1e-6)
    # gradients: those of the hand-made loss with the teacher's soft target detached, not without the detach
    got = grads(module.training_step((x, y), 0))
    detached, attached = grads(by_hand(y)), grads(by_hand(y, detach=False))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, detached))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, attached))
    # without distillation every sub-network learns from the labels (the step loss differs)
    plain = make_solver("supernet", micro_space, micro_lut, sampling="sandwich", num_random=1)
    plain.supernet.load_state_dict(net.state_dict())
    assert float(plain.training_step((x, y), 0)) != pytest.approx(float(step), rel=1e-3)


@pytest.mark.parametrize("settings, message", [
    ({"sampling": "uniform", "num_random": 2, "distill": True}, "solver.distill=true needs solver.sampling=sandwich"),
    ({"distill": True, "distill_temperature": 0.0}, "distill_temperature must be a finite number > 0"),
    ({"distill": "yes"}, "solver.distill must be true or false"),
])
def test_bad_distillation_settings_are_config_errors(micro_space, micro_lut, settings, message):
    with pytest.raises(ConfigError, match=message):
        make_solver("supernet", micro_space, micro_lut, **settings)


def test_solver_supernet_checkpoint_feeds_subnet_search(tmp_path):
    from nas.search.pipeline import run_search

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("search", overrides=["solver=supernet", "hardware=macs_proxy", "trainer.max_epochs=1",
                                           "data.limit=160", "progress=false", "trainer.enable_progress_bar=false",
                                           f"paths.output_dir={tmp_path / 'train'}",
                                           f"paths.cache_dir={tmp_path / 'cache'}"])
    with open_dict(cfg):
        cfg.space = OmegaConf.create(MICRO_SPACE)
    result = run_search(cfg)
    assert result["solver"] == "supernet"
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    out = run_subnet_search(subnet_cfg(tmp_path, ckpt, "budget=12", "algorithm.population=6"))
    records = (tmp_path / "run" / "validations.jsonl").read_text().splitlines()
    assert len(records) == 12 and out["summary"]["supernet_evaluations"] == 12
    for line in records:
        rec = json.loads(line)
        assert 0 <= rec["error"] <= 1 and math.isfinite(rec["ce"]) and rec["latency_ms"]["macs_proxy"] > 0


# ---------------------------------------------------------------------- cost model
def test_additive_cost_tables_equal_the_runtime_model(tiny_space):
    space = objective_space(tiny_space)
    target = space.targets[0]
    rng = random.Random(1)
    for _ in range(20):
        arch = tiny_space.sample(rng)
        genes = space.codec.encode(arch)
        assert space.codec.decode(genes) == arch
        assert space.costs_of(genes, "proxy")["latency"] == pytest.approx(target.runtime.predict(arch), rel=1e-12)
    lo, hi = space.latency["proxy"].bounds()
    assert lo == pytest.approx(target.runtime.predict(tiny_space.smallest()))  # proxy LUT is monotone
    assert hi == pytest.approx(target.runtime.predict(tiny_space.largest()))
    assert space.codec.size == tiny_space.num_architectures() == 292_032


# ---------------------------------------------------------------------- search quality
def test_nsga2_reaches_98_percent_of_the_exact_front_hypervolume(tiny_space):
    space = objective_space(tiny_space)
    table = AdditiveError(space.codec, space.latency["proxy"].tables)
    X = space.codec.enumerate_all()
    F = np.stack([table.of_genes(X), space.latency["proxy"](X)], axis=1)
    norm = Normalisation.build(space.names, space.bounds("proxy"))
    exact = norm.hypervolume(F[front_2d(F)])
    algorithm = AlgorithmConfig(name="nsga2", population=50, max_generations=40)
    store = ValidationStore(None, "synthetic", tiny_space.digest, {})
    result = BudgetedSearch(space, "proxy", table, store, algorithm, 10**6, seed=0, normalisation=norm).run()
    assert len(result.history) == 40
    found = result.history[-1].hypervolume
    assert found >= 0.98 * exact, (found, exact)
    # the per-generation hypervolume never decreases (it is over everything validated so far)
    hv = [h.hypervolume for h in result.history]
    assert all(b >= a for a, b in zip(hv, hv[1:]))


def test_budget_is_exact_and_nothing_is_validated_twice(tiny_space):
    space = objective_space(tiny_space)
    norm = Normalisation.build(space.names, space.bounds("proxy"))
    names = ["nsga2", "random"] + (["agemoea"] if importlib.util.find_spec("numba") else [])
    for name in names:
        table = AdditiveError(space.codec, space.latency["proxy"].tables)
        store = ValidationStore(None, "synthetic", tiny_space.digest, {})
        result = BudgetedSearch(space, "proxy", table, store, AlgorithmConfig(name=name, population=20), 137,
                                seed=0, normalisation=norm).run()
        assert len(table.calls) == 137 == len(set(table.calls)) == result.consumed == len(store), name
        assert result.history[-1].validations == 137


def test_constraints_are_hard_and_infeasible_networks_are_never_validated(tiny_space):
    space = objective_space(tiny_space, names=["error"], constraints={"latency_ms": 0.05})
    norm = Normalisation.build(space.names, space.bounds("proxy"))
    table = AdditiveError(space.codec, space.latency["proxy"].tables)
    store = ValidationStore(None, "synthetic", tiny_space.digest, {})
    result = BudgetedSearch(space, "proxy", table, store, AlgorithmConfig(name="ga", population=20), 100, seed=0,
                            normalisation=norm).run()
    assert result.consumed == 100
    latencies = [space.costs_of(g, "proxy")["latency"] for g in result.genes]
    assert max(latencies) <= 0.05 < space.latency["proxy"].bounds()[1]
    assert set(table.calls) == set(result.keys)  # every validated network is feasible


# ---------------------------------------------------------------------- runs, outputs, resume
def test_same_seed_gives_an_identical_pareto_json_and_members_load_in_train_py(micro_space, micro_ckpt, tmp_path):
    first = run_task(SUBNET_SEARCH, subnet_cfg(tmp_path, micro_ckpt, "budget=20", out="a"))  # + summary.json
    run_subnet_search(subnet_cfg(tmp_path, micro_ckpt, "budget=20", out="b"))
    a, b = (tmp_path / "a" / "pareto.json").read_bytes(), (tmp_path / "b" / "pareto.json").read_bytes()
    assert a == b
    other = run_subnet_search(subnet_cfg(tmp_path, micro_ckpt, "budget=20", "seed=1", out="c"))
    assert other["pareto"] != first["pareto"]
    doc = json.loads(a)
    assert doc["format"] == "spnas-pareto" and doc["version"] == 1
    members = doc["devices"]["macs_proxy"]["members"]
    assert members and all(set(m["objectives"]) == {"error", "latency_ms"} for m in members)
    lat = [m["objectives"]["latency_ms"] for m in members]
    err = [m["objectives"]["error"] for m in members]
    assert lat == sorted(lat) and err == sorted(err, reverse=True)  # a front: faster means less accurate
    for m in members:
        arch = load_architecture(str(tmp_path / "a" / m["arch_file"]), micro_space)
        assert " ".join(arch.keys) == m["key"]
    for name in ("hv.csv", "pareto_front.png", "hv_vs_validations.png", "summary.json"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    hv_lines = (tmp_path / "a" / "hv.csv").read_text().splitlines()
    assert any("reference_point=[1.0, 1.0]" in line for line in hv_lines if line.startswith("#"))
    assert list((tmp_path / "a" / "tb").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (tmp_path / "a" / "validations.jsonl").read_text().splitlines()]
    assert len(records) == 20 == len({r["key"] for r in records})
    assert {r["supernet_digest"] for r in records} == {doc["supernet"]["digest"]}
    assert all(r["lut_fingerprints"]["macs_proxy"] == doc["devices"]["macs_proxy"]["lut_fingerprint"]
               for r in records)


class Killer:
    """Validates like ``inner`` but raises after ``limit`` validations (a killed process)."""

    def __init__(self, inner, limit=None):
        self.inner, self.limit, self.count = inner, limit, 0

    def validate(self, arch):
        if self.limit is not None and self.count >= self.limit:
            raise KeyboardInterrupt
        self.count += 1
        return self.inner.validate(arch)


def test_a_killed_search_resumes_from_validations_jsonl_without_revalidating(micro_space, micro_ckpt, tmp_path):
    space = objective_space(micro_space)
    table = AdditiveError(space.codec, space.latency["proxy"].tables)
    full = Killer(table)
    run_subnet_search(subnet_cfg(tmp_path, micro_ckpt, "budget=40", out="full"), validator=full)
    killed = Killer(table, limit=17)
    with pytest.raises(KeyboardInterrupt):
        run_subnet_search(subnet_cfg(tmp_path, micro_ckpt, "budget=40", out="part"), validator=killed)
    path = tmp_path / "part" / "validations.jsonl"
    assert len(path.read_text().splitlines()) == 17
    with open(path, "a") as handle:
        handle.write('{"format": "spnas-subnet-validation", "vers')  # torn record of the kill
    resumed = Killer(table)
    run_subnet_search(subnet_cfg(tmp_path, micro_ckpt, "budget=40", f"resume={tmp_path / 'part'}", out="x"),
                      validator=resumed)
    assert full.count == 40 and resumed.count == 40 - 17
    assert (tmp_path / "part" / "pareto.json").read_bytes() == (tmp_path / "full" / "pareto.json").read_bytes()
    assert len(path.read_text().splitlines()) == 40


def test_resume_refuses_records_of_another_checkpoint_or_lut(micro_space, micro_ckpt, tmp_path):
    store = ValidationStore(tmp_path / "v.jsonl", "aaaa", micro_space.digest, {"dev": "lut1"})
    store.add({"key": "k", "error": 0.5, "ce": 1.0, "lut_fingerprints": {"dev": "lut1"}})
    assert len(ValidationStore(tmp_path / "v.jsonl", "aaaa", micro_space.digest, {"dev": "lut1"})) == 1
    with pytest.raises(ConfigError, match="aaaa.*bbbb"):
        ValidationStore(tmp_path / "v.jsonl", "bbbb", micro_space.digest, {"dev": "lut1"})
    with pytest.raises(ConfigError, match="lut1.*lut2"):
        ValidationStore(tmp_path / "v.jsonl", "aaaa", micro_space.digest, {"dev": "lut2"})
    with pytest.raises(ConfigError, match="NaN/inf"):
        store.add({"key": "n", "error": float("nan"), "ce": 1.0})
    assert len((tmp_path / "v.jsonl").read_text().splitlines()) == 1


def test_several_devices_share_validations_and_match_standalone_runs(micro_space, micro_ckpt, tmp_path):
    slow = {"name": "slow_proxy", "backend": {"_target_": "nas.cost.backends.MacsProxy", "ms_per_mmac": 0.05,
                                              "overhead_ms": 0.0}}
    space = objective_space(micro_space)
    both = Killer(AdditiveError(space.codec, space.latency["proxy"].tables))
    multi = run_subnet_search(_with_devices(subnet_cfg(tmp_path, micro_ckpt, out="multi"), ["macs_proxy", slow]),
                              validator=both)
    alone = Killer(AdditiveError(space.codec, space.latency["proxy"].tables))
    single = run_subnet_search(_with_devices(subnet_cfg(tmp_path, micro_ckpt, out="single"), [slow]),
                               validator=alone)
    assert set(multi["pareto"]["devices"]) == {"macs_proxy", "slow_proxy"}
    assert both.count < 2 * 30 and alone.count == 30  # shared validations: fewer supernet evaluations
    assert multi["pareto"]["devices"]["slow_proxy"]["members"] == single["pareto"]["devices"]["slow_proxy"]["members"]
    assert multi["pareto"]["devices"]["slow_proxy"]["validations"] == 30


def _with_devices(cfg, devices):
    with open_dict(cfg):
        cfg.devices = devices
    return cfg


def test_warm_start_seeds_the_first_population(micro_space, micro_ckpt, tmp_path):
    space = objective_space(micro_space)
    table = AdditiveError(space.codec, space.latency["proxy"].tables)
    first = run_subnet_search(subnet_cfg(tmp_path, micro_ckpt, out="a"), validator=Killer(table))
    keys = {m["key"] for m in first["pareto"]["devices"]["macs_proxy"]["members"]}
    second = Killer(table)
    out = run_subnet_search(subnet_cfg(tmp_path, micro_ckpt, "seed=5", f"warm_start={tmp_path / 'a' / 'pareto.json'}",
                                       out="b"), validator=second)
    initial = set(out["results"][0].keys[:10])  # the first population (population 10)
    assert len(keys & initial) == min(len(keys), 10)  # as many front members as fit, spread over the front


# ---------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("overrides, message", [
    (["objectives=[error,flops]"], "unknown objective"),
    (["algorithm.population=1"], "population must be an integer >= 2"),
    (["budget=5"], "smaller than one population"),
    (["hv.reference=[0.0,1.0]"], "not dominated by any sub-network"),
    (["constraints.latency_ms=0.000001"], "below the smallest possible value.*has [0-9.]+ ms"),
    (["algorithm=ga"], "single-objective but 2 objectives"),
    (["eval.device=gpu"], "eval.device must be 'cpu' or 'cuda'"),
])
def test_bad_inputs_fail_before_any_work_and_write_nothing(micro_ckpt, tmp_path, overrides, message):
    cfg = subnet_cfg(tmp_path, micro_ckpt, *overrides)
    with pytest.raises(ConfigError, match=message):
        run_subnet_search(cfg, validator=Killer(None, limit=0))
    assert not (tmp_path / "run").exists()


def test_checkpoint_and_warm_start_of_another_space_name_both_digests(micro_space, tiny_space, micro_ckpt, tmp_path):
    other = fake_checkpoint(tmp_path / "tiny.ckpt", tiny_space)
    with pytest.raises(ConfigError, match=f"{tiny_space.digest}.*{micro_space.digest}"):
        run_subnet_search(subnet_cfg(tmp_path, other))
    pareto = tmp_path / "pareto.json"
    pareto.write_text(json.dumps({"format": "spnas-pareto", "version": 1, "space": "tiny",
                                  "space_digest": tiny_space.digest, "devices": {}}))
    with pytest.raises(ConfigError, match=f"{tiny_space.digest}.*{micro_space.digest}"):
        run_subnet_search(subnet_cfg(tmp_path, micro_ckpt, f"warm_start={pareto}"))
    assert not (tmp_path / "run").exists()


def test_non_finite_objective_names_the_subnetwork(micro_ckpt, tmp_path):
    class NaNAfter:
        count = 0

        def validate(self, arch):
            self.count += 1
            return {"error": float("nan") if self.count == 3 else 0.5, "ce": 1.0}

    with pytest.raises(ConfigError, match=r"sub-network \[k3_e1_se0 .*\].*non-finite"):
        run_subnet_search(subnet_cfg(tmp_path, micro_ckpt), validator=NaNAfter())
    text = (tmp_path / "run" / "validations.jsonl").read_text()
    assert len(text.splitlines()) == 2 and "NaN" not in text


def test_cli_prints_one_error_line_and_exits_2(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "subnet_search.py"), f"supernet={tmp_path / 'none.ckpt'}",
                           "hardware=macs_proxy", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: supernet checkpoint") and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "validations.jsonl").exists()


def test_macs_proxy_luts_differ_per_device(micro_space):
    a = profile_space(micro_space, MacsProxy(), 1, 10, progress=False)
    b = profile_space(micro_space, MacsProxy(ms_per_mmac=0.05, overhead_ms=0.0), 1, 10, progress=False)
    space = objective_space(micro_space, luts={"a": a, "b": b})
    assert space.targets[0].fingerprint != space.targets[1].fingerprint


def test_sigterm_says_what_is_saved_and_how_to_resume(tmp_path):
    """SIGTERM mid-search: exit 143 with a word on what is safe and the command that resumes it."""
    import signal
    import time

    from tests.conftest import load_space

    ckpt = fake_checkpoint(tmp_path / "supernet.ckpt", load_space("tiny"))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "subnet_search.py"), f"supernet={ckpt}", "hardware=macs_proxy",
                             "budget=100000", "data.limit=200", "eval.bn_batches=1", "eval.val_batches=1",
                             "progress=false", f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = run_dir / "validations.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if records.is_file() and len(records.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM after" in err and f"safe in {records}" in err and "Traceback" not in err
    hint = next(line for line in err.splitlines() if line.startswith("resume with: "))
    assert hint.endswith(f"resume={run_dir}") and "budget=100000" in hint and "subnet_search.py" in hint
    saved = len(records.read_text().splitlines())
    assert saved >= 3 and not (run_dir / "pareto.json").exists()


def test_hardware_overrides_reach_every_device_of_devices(tmp_path):
    """devices=[...] composes each device through Hydra: a hardware.* override applies to all of them."""
    from nas.cost.runtime_model import RuntimeModel
    from tests.conftest import load_space

    space = load_space("tiny")
    ckpt = fake_checkpoint(tmp_path / "supernet.ckpt", space)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "subnet_search.py"), f"supernet={ckpt}",
                           "hardware=macs_proxy", "devices=[macs_proxy]", "hardware.backend.ms_per_mmac=0.05",
                           "budget=8", "algorithm.population=4", "data.limit=200", "eval.bn_batches=1",
                           "eval.val_batches=1", "progress=false", f"hydra.run.dir={run_dir}",
                           f"paths.cache_dir={tmp_path}/cache"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    members = json.loads((run_dir / "pareto.json").read_text())["devices"]["macs_proxy"]["members"]
    # priced with the overridden 0.05 ms per MMAC, not the file's 0.01
    overridden = RuntimeModel(space, profile_space(space, MacsProxy(ms_per_mmac=0.05), 1, 10, progress=False), 1, 10)
    default = RuntimeModel(space, profile_space(space, MacsProxy(), 1, 10, progress=False), 1, 10)
    assert members
    for m in members:
        arch = Architecture.from_dict(m["architecture"])
        assert m["objectives"]["latency_ms"] == pytest.approx(overridden.predict(arch), rel=1e-6)
        assert m["objectives"]["latency_ms"] > default.predict(arch)
