"""Predictors, search tactics (full, ConcurrentNAS) and PopDB (source 002 §4.3-4.6, §5.4)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from nas.cli import CONFIG_DIR
from nas.errors import ConfigError
from nas.estimation import kendall_tau
from nas.subnet_search.encoding import GenomeCodec
from nas.subnet_search.engine import AlgorithmConfig
from nas.subnet_search.hypervolume import Normalisation
from nas.subnet_search.popdb import build_mask, load_mask, read_history
from nas.subnet_search.predictors import ObjectivePredictor, objective_mape_pct, one_hot
from nas.subnet_search.run import run_subnet_search
from nas.subnet_search.store import ValidationStore
from nas.subnet_search.tactics import PredictorSearch, TacticConfig
from tests.conftest import MICRO_SPACE, ROOT
from tests.test_subnet_search import AdditiveError, Killer, fake_checkpoint, objective_space, subnet_cfg


def conf(group: str, name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / group / f"{name}.yaml").read_text())


def test_one_hot_has_one_column_per_candidate_and_one_one_per_layer(micro_space):
    codec = GenomeCodec(micro_space)
    genes = codec.random(np.random.default_rng(0), 7)
    X = one_hot(codec, genes)
    assert X.shape == (7, int((codec.xu + 1).sum()))
    assert np.all(X.sum(axis=1) == codec.n_var)
    starts = np.concatenate([[0], np.cumsum(codec.xu + 1)[:-1]])
    for row, g in zip(X, genes):
        assert np.all(row[starts + g] == 1.0)


def test_ridge_learns_an_additive_latency_table(tiny_space):
    """The done-when of issue 12 for hardware=macs_proxy: 200 training networks, tau >= 0.98, MAPE <= 1 %."""
    space = objective_space(tiny_space)
    table = space.latency["proxy"]
    rng = np.random.default_rng(0)
    train, test = space.codec.random(rng, 200), space.codec.random(rng, 500)
    model = ObjectivePredictor("latency", space.codec, conf("predictor", "ridge")).fit(train, table(train))
    pred = model.predict(test)
    assert kendall_tau(table(test), pred) >= 0.98
    assert objective_mape_pct("latency", table(test), pred) <= 1.0


@pytest.mark.parametrize("name", ["ridge", "svr", "auto", "mlp", "ridge_structure"])
def test_every_predictor_fits_saves_and_reloads(micro_space, tmp_path, name):
    space = objective_space(micro_space)
    truth = AdditiveError(space.codec, space.latency["proxy"].tables)
    genes = space.codec.random(np.random.default_rng(1), 60)
    model = ObjectivePredictor("error", space.codec, conf("predictor", name), seed=3).fit(genes, truth.of_genes(genes))
    assert model.meta["cv"]["folds"] == 5 and model.meta["n_train"] == 60
    if name == "auto":
        assert "regressor" in model.meta["selected"]  # GridSearchCV chose between ridge and SVR
    path = model.save(tmp_path / "predictors" / "error.joblib")
    again = ObjectivePredictor.load(path, space.codec)
    probe = space.codec.random(np.random.default_rng(2), 20)
    assert np.array_equal(again.predict(probe), model.predict(probe))
    assert again.meta == model.meta


def test_structure_features_learn_a_macs_proxy_latency_from_few_networks(tiny_space):
    """Four numbers per layer (MACs, parameters, kept, SE): a MACs-proportional latency is linear in them."""
    space = objective_space(tiny_space)
    table = space.latency["proxy"]
    rng = np.random.default_rng(0)
    train, test = space.codec.random(rng, 40), space.codec.random(rng, 300)
    model = ObjectivePredictor("latency", space.codec, conf("predictor", "ridge_structure")).fit(train, table(train))
    assert model.meta["features"] == 4 * space.codec.n_var
    assert kendall_tau(table(test), model.predict(test)) >= 0.98


def test_a_predictor_of_another_space_or_mask_is_refused(micro_space, tiny_space, tmp_path):
    codec = GenomeCodec(micro_space)
    genes = codec.random(np.random.default_rng(0), 20)
    path = ObjectivePredictor("error", codec, conf("predictor", "ridge")).fit(genes, genes.sum(1) / 100.0).save(
        tmp_path / "p.joblib")
    with pytest.raises(ConfigError, match="space 'micro'.*space 'tiny'"):
        ObjectivePredictor.load(path, GenomeCodec(tiny_space))
    with pytest.raises(ConfigError, match="features with this search's mask"):
        ObjectivePredictor.load(path, GenomeCodec(micro_space, [[0, 1]] * codec.n_var))


def test_mape_of_an_error_rate_is_taken_of_the_accuracy():
    assert objective_mape_pct("error", np.array([0.0, 0.5]), np.array([0.1, 0.5])) == pytest.approx(5.0)
    with pytest.raises(ConfigError, match="percentage error undefined"):
        objective_mape_pct("latency", np.array([0.0, 1.0]), np.array([0.1, 1.0]))


def test_predictor_bad_inputs_are_one_clear_error(micro_space):
    codec = GenomeCodec(micro_space)
    genes = codec.random(np.random.default_rng(0), 4)
    model = ObjectivePredictor("error", codec, conf("predictor", "auto"))
    with pytest.raises(ConfigError, match=r"fitted on 4 record\(s\) cannot be 5-fold cross-validated"):
        model.fit(genes, np.arange(4) / 10)
    genes = codec.random(np.random.default_rng(0), 10)
    with pytest.raises(ConfigError, match="constant labels"):
        model.fit(genes, np.full(10, 0.25))


# ---------------------------------------------------------------------- tactics
def _tactic(name: str, **override) -> TacticConfig:
    return TacticConfig.from_config({**conf("tactic", name), **override})


def test_concurrent_validates_iterations_times_population_once_each(tiny_space):
    space = objective_space(tiny_space)
    norm = Normalisation.build(space.names, space.bounds("proxy"))
    table = Killer(AdditiveError(space.codec, space.latency["proxy"].tables))
    store = ValidationStore(None, "synthetic", tiny_space.digest, {})
    tactic = _tactic("concurrent", population=10, iterations=4, generations=20, ea_population=30)
    search = PredictorSearch(space, "proxy", table, store, AlgorithmConfig(), 40, 0, norm, tactic=tactic,
                             predictor_config=conf("predictor", "ridge"))
    result = search.run()
    assert result.consumed == table.count == len(store) == 40 == len(set(result.keys))
    assert [h.validations for h in result.history] == [10, 20, 30, 40]
    assert [r["records"] for r in search.rounds] == [10, 20, 30]  # retrained on every validation so far
    hv = [h.hypervolume for h in result.history]
    assert all(b >= a for a, b in zip(hv, hv[1:]))
    # a second run with the same seed over the filled store validates nothing and consumes the same networks
    again = Killer(table.inner)
    rerun = PredictorSearch(space, "proxy", again, store, AlgorithmConfig(), 40, 0, norm, tactic=tactic,
                            predictor_config=conf("predictor", "ridge")).run()
    assert again.count == 0 and rerun.keys == result.keys


def test_full_search_validates_sample_then_the_predicted_population(tiny_space):
    space = objective_space(tiny_space, constraints={"latency_ms": 0.05})
    norm = Normalisation.build(space.names, space.bounds("proxy"))
    table = Killer(AdditiveError(space.codec, space.latency["proxy"].tables))
    store = ValidationStore(None, "synthetic", tiny_space.digest, {})
    tactic = _tactic("full", sample=30, population=10, generations=20, ea_population=30)
    result = PredictorSearch(space, "proxy", table, store, AlgorithmConfig(), 40, 0, norm, tactic=tactic,
                             predictor_config=conf("predictor", "ridge")).run()
    assert [h.validations for h in result.history] == [30, 40] and table.count == 40
    assert max(space.costs_of(g, "proxy")["latency"] for g in result.genes) <= 0.05  # infeasible never validated


def test_concurrent_subnet_search_writes_a_reloadable_predictor(micro_space, micro_ckpt, tmp_path):
    space = objective_space(micro_space)
    table = Killer(AdditiveError(space.codec, space.latency["proxy"].tables))
    out = run_subnet_search(subnet_cfg(tmp_path, micro_ckpt, "tactic=concurrent", "tactic.population=10",
                                       "tactic.iterations=3", "tactic.generations=10", "tactic.ea_population=20"),
                            validator=table)
    assert table.count == 30 and out["summary"]["tactic"] == "concurrent"
    assert len(out["summary"]["predictor_rounds"]["macs_proxy"]) == 2
    path = tmp_path / "run" / out["summary"]["predictors"]["error"]
    model = ObjectivePredictor.load(path, space.codec)
    assert model.meta["n_train"] == 30 and model.meta["predictor"] == "ridge"
    pareto = json.loads((tmp_path / "run" / "pareto.json").read_text())
    assert pareto["tactic"]["name"] == "concurrent" and pareto["predictor"] == "ridge"


@pytest.mark.parametrize("overrides, message", [
    (["tactic=concurrent", "tactic.population=10", "tactic.iterations=4"], r"4 x 10 = 40 validations exceed budget=30"),
    (["tactic=full", "tactic.sample=25", "tactic.population=10"], r"25 \+ 10 = 35 validations exceed budget=30"),
    (["tactic=concurrent", "tactic.iterations=0"], "tactic.iterations as an integer >= 1"),
    (["tactic=full", "tactic.sample=20", "tactic.population=10", "algorithm=random"], "evolutionary algorithm"),
    (["tactic=concurrent", "tactic.population=10", "tactic.iterations=3", "predictor.cv_folds=1"], "cv_folds"),
    (["tactic=concurrent", "tactic.population=10", "tactic.iterations=3",
      "predictor.estimator._target_=sklearn.nope.Ridge"], "cannot be imported"),
])
def test_tactic_bad_inputs_fail_before_any_validation(micro_ckpt, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_subnet_search(subnet_cfg(tmp_path, micro_ckpt, *overrides), validator=Killer(None, limit=0))
    assert not (tmp_path / "run").exists()


@pytest.fixture
def micro_ckpt(micro_space, tmp_path):
    return fake_checkpoint(tmp_path / "supernet.ckpt", micro_space)


# ---------------------------------------------------------------------- PopDB
def _history(space, tmp_path, n=300):
    """A validations.jsonl whose sub-networks crowd around two genomes (an evolutionary search's history)."""
    codec = GenomeCodec(space)
    rng = np.random.default_rng(0)
    centres = codec.random(rng, 2)
    store = ValidationStore(tmp_path / "h.jsonl", "synthetic", space.digest, {})
    for i in range(n):
        g = centres[i % 2].copy()
        flip = rng.random(codec.n_var) < 0.15
        g[flip] = codec.random(rng, 1)[0][flip]
        arch = codec.decode(g)
        if arch.keys and " ".join(arch.keys) not in store:
            store.add({"key": " ".join(arch.keys), "architecture": [c.to_dict() for c in arch.layers],
                       "genes": g.tolist(), "error": 0.1, "ce": 0.2})
    return tmp_path / "h.jsonl", centres


def test_popdb_masks_rare_values_and_never_empties_a_layer(micro_space, tmp_path):
    path, centres = _history(micro_space, tmp_path)
    codec = GenomeCodec(micro_space)
    genes = read_history(path, micro_space, codec)
    doc = build_mask(micro_space, genes, threshold=0.05, min_cluster_size=20, min_samples=5)
    assert doc["size_after"] < doc["size_before"] == codec.size
    for j, layer in enumerate(doc["layers"]):
        for centre in centres:  # the crowded values survive
            assert codec.choices[j][centre[j]].key in layer["allowed"]
    strict = build_mask(micro_space, genes, threshold=0.99, min_cluster_size=20, min_samples=5)
    assert all(len(layer["allowed"]) == 1 and layer["kept_most_frequent_only"] for layer in strict["layers"])
    (tmp_path / "mask.json").write_text(json.dumps(doc))
    allowed = load_mask(tmp_path / "mask.json", micro_space)
    masked = GenomeCodec(micro_space, allowed)
    assert masked.size == doc["size_after"]
    for g in masked.random(np.random.default_rng(0), 50):
        keys = masked.decode(g).keys
        assert all(keys[layer["index"]] in layer["allowed"] for layer in doc["layers"])


def test_a_mask_of_another_space_is_refused(micro_space, tiny_space, micro_ckpt, tmp_path):
    path, _ = _history(micro_space, tmp_path)
    doc = build_mask(micro_space, read_history(path, micro_space, GenomeCodec(micro_space)), 0.05, 20, 5)
    (tmp_path / "mask.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="masks space 'micro'.*this search uses space 'tiny'"):
        load_mask(tmp_path / "mask.json", tiny_space)
    with pytest.raises(ConfigError, match="searched in space digest"):
        read_history(path, tiny_space, GenomeCodec(tiny_space))
    # a masked subnet search validates only allowed candidates, with the unmasked hypervolume bounds
    space = objective_space(micro_space)
    table = Killer(AdditiveError(space.codec, space.latency["proxy"].tables))
    masked = run_subnet_search(subnet_cfg(tmp_path, micro_ckpt, f"search_mask={tmp_path / 'mask.json'}",
                                          out="masked"), validator=table)
    plain = run_subnet_search(subnet_cfg(tmp_path, micro_ckpt, out="plain"), validator=Killer(table.inner))
    for key in masked["results"][0].keys:
        layers = key.split()
        assert all(layers[layer["index"]] in layer["allowed"] for layer in doc["layers"])
    norm = "hypervolume_normalisation"
    assert masked["pareto"]["devices"]["macs_proxy"][norm] == plain["pareto"]["devices"]["macs_proxy"][norm]


def test_popdb_script_prints_the_report_and_fails_in_one_line(micro_space, tmp_path):
    path, _ = _history(micro_space, tmp_path)
    env_cmd = [sys.executable, str(ROOT / "scripts" / "popdb.py"), f"history={path}", "min_cluster_size=20",
               "min_samples=5", "threshold=0.05", f"out={tmp_path / 'mask.json'}", f"hydra.run.dir={tmp_path / 'p'}"]
    micro = _micro_override(tmp_path)
    done = subprocess.run(env_cmd + micro, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "space size:" in done.stdout and (tmp_path / "mask.json").is_file()
    bad = subprocess.run(env_cmd[:2] + [f"history={tmp_path / 'nope.jsonl'}"] + env_cmd[3:] + micro,
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and len(bad.stderr.splitlines()) == 1


def _micro_override(tmp_path):
    """The micro test space as a space config file the scripts can select."""

    folder = tmp_path / "conf" / "space"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "micro.yaml").write_text(yaml.safe_dump(MICRO_SPACE))
    return [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "space=micro"]


def test_evaluate_predictor_reports_mape_and_tau_per_training_size(micro_space, micro_ckpt, tmp_path):
    space = objective_space(micro_space)
    table = Killer(AdditiveError(space.codec, space.latency["proxy"].tables))
    run_subnet_search(subnet_cfg(tmp_path, micro_ckpt, "budget=60", "algorithm=random"), validator=table)
    db = tmp_path / "run" / "validations.jsonl"
    cmd = [sys.executable, str(ROOT / "scripts" / "evaluate_predictor.py"), f"db={db}", "sizes=[10,40]",
           "test_size=20", "trials=3", "progress=false", f"hydra.run.dir={tmp_path / 'ev'}",
           *_micro_override(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "ev" / "evaluate_predictor.json").read_text())
    assert [r["n"] for r in result["table"]] == [10, 40] and result["trials"] == 3
    assert all(np.isfinite(r["mape_pct_mean"]) and -1 <= r["kendall_tau_mean"] <= 1 for r in result["table"])
    assert (tmp_path / "ev" / "mape_vs_n.png").is_file() and (tmp_path / "ev" / "pred_vs_true.png").is_file()
    from nas.cli import compose_config
    from nas.entries.evaluate_predictor import evaluate

    def compose(args):  # the same settings in-process (bad inputs are ConfigErrors; main_guard makes them one line)
        return compose_config("evaluate_predictor", [*args, f"++paths.output_dir={tmp_path / 'ev2'}"])

    args = [a for a in cmd[2:] if not a.startswith("hydra.run.dir")]
    with pytest.raises(ConfigError, match="db has 60 records"):
        evaluate(compose([args[0], "sizes=[100]", *args[2:]]))
    with pytest.raises(ConfigError, match="pass device="):
        evaluate(compose([*args, "predict=latency", "device=nope"]))

    cfg = compose([f"db={db}", "predict=latency", "predictor=svr", "predictor.estimator.C=3.0", "sizes=[200]"])
    assert cfg.predict == "latency" and cfg.predictor.name == "svr" and cfg.predictor.estimator.C == 3.0
    with pytest.raises(ConfigError, match="sizez"):
        compose([f"db={db}", "sizes=[1]", "sizez=[2]"])
    old = subprocess.run([*cmd, "objective=error"], capture_output=True, text=True, cwd=ROOT)
    assert old.returncode == 2 and old.stderr.startswith("error: objective=error: evaluate-predictor's setting is "
                                                         "predict=")
