"""Baseline solvers: each runs, derives a valid architecture, and its defining mechanism is real."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from models.blocks import MBConv
from nas.cli import CONFIG_DIR
from nas.cost.runtime_model import RuntimeModel, level_probabilities
from nas.entries.hydra_apps import SEARCH
from nas.errors import ConfigError
from nas.run_shell import run_task
from nas.search.checkpoint import load_checkpoint
from nas.search.data import DigitsDataModule
from nas.search.solvers import (
    MultiPathSearch,
    ProxylessSearch,
    SinglePathSoftmaxSearch,
    SinglePathSTESearch,
)
from nas.search.solvers.multi_path import gumbel_temperature
from nas.search.solvers.random_search import sample_under_target
from nas.search.solvers.single_path_variants import indicators_from_levels
from nas.space.architecture import Architecture
from nas.supernets.multi_path_supernet import MixedLayer, MultiPathSupernet
from nas.supernets.superkernel import SuperMBConv
from tests.conftest import TEST_SGD, make_solver

FAST = {"optimizer": TEST_SGD, "bn_calibration_batches": 2}


def fit(module, space, epochs=1, limit=96, tmp_path=None, seed=0, callbacks=(), **trainer_kwargs) -> pl.Trainer:
    pl.seed_everything(seed, verbose=False)
    dm = DigitsDataModule(image_size=space.resolution, batch_size=32, limit=limit, seed=seed)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=list(callbacks), **trainer_kwargs)
    trainer.fit(module, datamodule=dm)
    return trainer


def searchable_mixed_layer(space) -> MixedLayer:
    spec = next(s for s in space.searchable_layers if s.can_skip)
    return MixedLayer(spec, space.act)


def count_path_calls(net: torch.nn.Module) -> dict[int, int]:
    """Forward-call counter on every candidate path (MBConv) of every mixed layer, keyed by id(module)."""
    calls: dict[int, int] = {}
    for layer in net.modules():
        if isinstance(layer, MixedLayer):
            for path in layer.paths:
                calls[id(path)] = 0
                path.register_forward_hook(lambda m, i, o: calls.__setitem__(id(m), calls[id(m)] + 1))
    return calls


# ---------------------------------------------------------------------- multi-path
def test_multi_path_layer_output_is_the_weighted_sum_of_every_path(micro_space):
    torch.manual_seed(0)
    layer = searchable_mixed_layer(micro_space).eval()
    spec = layer.spec
    x = torch.randn(2, spec.in_channels, spec.input_resolution, spec.input_resolution)
    n = len(layer)
    assert n == len(spec.choices()) and layer.choices[0].is_skip
    path_outputs = [layer.forward_weighted(x, torch.eye(n)[j]) for j in range(n)]
    assert torch.equal(path_outputs[0], x)  # the skip path is the identity
    for j in range(1, n):  # one-hot weights give exactly that candidate's MBConv
        block = layer.paths[layer.path_of_choice[j]]
        assert isinstance(block, MBConv) and torch.allclose(path_outputs[j], block(x))
        assert not torch.allclose(path_outputs[j], path_outputs[0])
    weights = torch.softmax(torch.randn(n), 0)
    mixed = layer.forward_weighted(x, weights)
    expected = sum(w * o for w, o in zip(weights, path_outputs))
    assert torch.allclose(mixed, expected, atol=1e-5)


def test_multi_path_runs_every_path_and_derives_the_argmax(micro_space, micro_lut, tmp_path):
    module = make_solver("multi_path", micro_space, micro_lut, lambda_=0.5, arch_warmup_epochs=0, **FAST)
    calls = count_path_calls(module.supernet)
    alpha_before = [a.detach().clone() for a in module.supernet.arch_parameters()]
    trainer = fit(module, micro_space, epochs=1, limit=64, tmp_path=tmp_path)
    steps = trainer.num_training_batches
    paths = [p for layer in module.supernet.mixed_layers() for p in layer.paths]
    # every path ran in every arch step and every weight step (plus evaluation/BN calibration of the argmax)
    assert min(calls[id(p)] for p in paths) >= 2 * steps
    assert len(trainer.optimizers) == 2 and module.arch_steps_taken == steps
    assert any(not torch.equal(a, b) for a, b in zip(module.supernet.arch_parameters(), alpha_before))
    arch = module.derive_architecture().validate(micro_space)
    expected = module.supernet.architecture([int(a.argmax()) for a in module.supernet.arch_parameters()])
    assert arch == expected and arch.meta["solver"] == "multi_path"


def test_expected_runtime_is_the_lut_sum_at_one_hot_probabilities(micro_space, micro_lut):
    exact = RuntimeModel(micro_space, micro_lut, 1, 10)
    net = MultiPathSupernet(micro_space, 1, 10)
    for seed in range(3):
        arch = micro_space.sample(__import__("random").Random(seed))
        idx = [layer.choices.index(arch.layers[layer.spec.index]) for layer in net.mixed_layers()]
        one_hot = [torch.eye(len(layer))[i] for layer, i in zip(net.mixed_layers(), idx)]
        assert float(exact.expected(one_hot)) == pytest.approx(exact.predict(arch), rel=1e-5)
    # uniform probabilities: the mean over each layer's candidates (skip costs 0)
    uniform = [torch.full((len(layer),), 1.0 / len(layer)) for layer in net.mixed_layers()]
    means = sum(float(getattr(exact, f"choice_ms_{i}").mean()) for i in exact.searchable)
    assert float(exact.expected(uniform)) == pytest.approx(float(exact.constant_ms) + means, rel=1e-5)


def test_gumbel_temperature_follows_its_schedule(micro_space, micro_lut, tmp_path):
    schedule = {"initial": 4.0, "decay": 0.5, "min": 1.5}
    module = make_solver("multi_path", micro_space, micro_lut, weighting="gumbel", temperature=schedule,
                             arch_warmup_epochs=0, bn_calibration_batches=0, lambda_=0.0)
    seen: list[tuple[int, float]] = []

    class Record(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append((trainer.current_epoch, pl_module.temperature()))

    fit(module, micro_space, epochs=3, limit=40, tmp_path=tmp_path, callbacks=[Record()], limit_train_batches=1,
        limit_val_batches=0)
    assert [t for _, t in seen] == [4.0, 2.0, 1.5]  # 4 * 0.5^epoch, clamped at min
    assert [gumbel_temperature(e, 4.0, 0.5, 1.5) for e, _ in seen] == [t for _, t in seen]
    # Gumbel weights are random samples on the simplex, sharper at low temperature
    a, b = module.path_weights(), module.path_weights()
    assert all(torch.allclose(w.sum(), torch.tensor(1.0)) for w in a)
    assert any(not torch.allclose(u, v) for u, v in zip(a, b))
    torch.manual_seed(0)
    alpha = torch.zeros(13)
    hot = torch.stack([torch.nn.functional.gumbel_softmax(alpha, tau=0.05) for _ in range(200)]).max(1).values
    warm = torch.stack([torch.nn.functional.gumbel_softmax(alpha, tau=5.0) for _ in range(200)]).max(1).values
    assert hot.mean() > 0.9 > 0.3 > warm.mean()


# ---------------------------------------------------------------------- ProxylessNAS
def test_proxyless_computes_only_sampled_paths_and_gets_arch_gradients(micro_space, micro_lut):
    torch.manual_seed(0)
    module = make_solver("proxyless", micro_space, micro_lut, lambda_=0.0)
    calls = count_path_calls(module.supernet)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))

    loss, _, _ = module.arch_loss(x, y)
    loss.backward()
    for layer, alpha, pair in zip(module.supernet.mixed_layers(), module.supernet.arch_parameters(), module._pairs):
        sampled = {int(j) for j in pair}
        assert len(sampled) == 2
        ran = {j for j in range(len(layer)) if layer.path_of_choice[j] is not None
               and calls[id(layer.paths[layer.path_of_choice[j]])] > 0}
        assert ran == {j for j in sampled if layer.path_of_choice[j] is not None}  # only the sampled paths ran
        grad = alpha.grad
        assert all(grad[j] != 0 for j in sampled)  # non-zero arch gradient on the sampled pair ...
        assert all(grad[j] == 0 for j in range(len(layer)) if j not in sampled)  # ... and nothing else (lambda=0)
        with_grad = [p for p in layer.paths if any(q.grad is not None for q in p.parameters())]
        assert len(with_grad) <= 1  # only the active path keeps an autograd graph

    for key in calls:
        calls[key] = 0
    module.weight_loss(x, y)[0].backward()
    for layer in module.supernet.mixed_layers():
        assert sum(calls[id(p)] for p in layer.paths) <= 1  # weight step: one path per layer


def test_proxyless_gradient_is_the_binary_gate_estimator(micro_space, micro_lut):
    module = make_solver("proxyless", micro_space, micro_lut, lambda_=0.0).eval()
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
    torch.manual_seed(3)
    module.arch_loss(x, y)[0].backward()
    torch.manual_seed(3)
    active, inactive, _ = module.sample_gates()
    gates = [torch.tensor([1.0, 0.0], requires_grad=True) for _ in active]
    loss = module.cross_entropy(module.supernet.forward_choices(x, active, gates, inactive), y)
    dgates = torch.autograd.grad(loss, gates)
    for alpha, a, b, dg in zip(module.supernet.arch_parameters(), active, inactive, dgates):
        p = torch.softmax(alpha.detach()[[a, b]], 0)
        expected = [sum(dg[j] * p[j] * (float(i == j) - p[i]) for j in range(2)) for i in range(2)]
        assert float(alpha.grad[a]) == pytest.approx(float(expected[0]), rel=1e-4, abs=1e-9)
        assert float(alpha.grad[b]) == pytest.approx(float(expected[1]), rel=1e-4, abs=1e-9)


def test_proxyless_search_keeps_unsampled_probabilities_and_derives(micro_space, micro_lut, tmp_path):
    module = make_solver("proxyless", micro_space, micro_lut, lambda_=0.3, arch_warmup_epochs=0, **FAST)
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
    before = [a.detach().clone() for a in module.supernet.arch_parameters()]
    module.arch_loss(x, y)
    with torch.no_grad():
        for a in module.supernet.arch_parameters():
            a.add_(torch.randn_like(a))  # any update; the rescaling restores the pair's log-sum-exp
    module.after_arch_step()
    for a, old, pair in zip(module.supernet.arch_parameters(), before, module._pairs):
        new_lse, old_lse = torch.logsumexp(a.detach()[pair], 0), torch.logsumexp(old[pair], 0)
        assert float(new_lse) == pytest.approx(float(old_lse), abs=1e-5)
    fit(module, micro_space, epochs=1, limit=96, tmp_path=tmp_path)
    arch = module.derive_architecture().validate(micro_space)
    assert arch.meta["solver"] == "proxyless" and module.arch_steps_taken > 0


# ---------------------------------------------------------------------- single-path variants
def test_ste_passes_the_gradient_straight_through(micro_space, micro_lut):
    ste = make_solver("single_path_ste", micro_space, micro_lut)
    sig = make_solver("single_path", micro_space, micro_lut)
    sig.load_state_dict(ste.state_dict())
    assert all(layer.relaxation == "ste" for layer in ste.supernet.super_layers())
    coefficients = None
    grads = {}
    for name, module in (("ste", ste), ("sigmoid", sig)):
        # expansion and SE indicators feed nothing else, so d loss / d threshold is the indicator's own gradient
        decisions = [d for d in module.supernet.decisions() if d is not None]
        flat = torch.cat([torch.cat([d.expansion, d.se]) for d in decisions])
        if coefficients is None:
            coefficients = torch.randn(flat.numel(), generator=torch.Generator().manual_seed(0))
        (flat * coefficients).sum().backward()
        grads[name] = torch.cat([torch.cat([layer.t_expansion.grad, layer.t_se.grad])
                                 for layer in module.supernet.super_layers()])
    # indicator = 1(norm - t > 0): STE's d indicator / d t is exactly -1; the sigmoid's is -sigmoid'(.) <= 1/4
    assert torch.allclose(grads["ste"], -coefficients)
    assert (grads["sigmoid"].abs() <= coefficients.abs() / 4 + 1e-7).all()
    assert not torch.allclose(grads["sigmoid"], grads["ste"])
    with pytest.raises(ConfigError, match="single_path_ste uses relaxation 'ste'"):
        make_solver("single_path_ste", micro_space, micro_lut, relaxation="sigmoid")


def test_softmax_over_subsets_is_eq_6_1_and_prices_the_expected_runtime(micro_space, micro_lut):
    p = torch.softmax(torch.randn(3), 0)
    assert torch.allclose(level_probabilities(indicators_from_levels(p)), p, atol=1e-6)
    module = make_solver("single_path_softmax", micro_space, micro_lut)
    layer: SuperMBConv = module.supernet.super_layers()[0]
    pk = torch.softmax(torch.tensor([0.3, -0.2]), 0)
    w = layer.weight_dw
    w3, w5 = w * layer.kernel_masks[0], w * layer.kernel_masks[1]
    # Eq 6.1: w_k = p3 * w3x3 + p5 * (w3x3 + w5x5\3x3)
    assert torch.allclose(layer.kernel_weight(indicators_from_levels(pk)), pk[0] * w3 + pk[1] * (w3 + w5), atol=1e-6)
    # logits far apart: E[R] is the LUT runtime of the derived architecture
    with torch.no_grad():
        for tau in module.tau.values():
            tau.copy_(torch.randn(tau.numel()) * 30)
    arch = module.derive_architecture()
    assert float(module.expected_runtime_ms()) == pytest.approx(module.predicted_latency_ms(arch), rel=1e-3)
    assert not any(t.requires_grad for t in module.supernet.threshold_parameters())


def test_softmax_alternates_arch_steps_on_the_validation_split(micro_space, micro_lut, tmp_path):
    module = make_solver("single_path_softmax", micro_space, micro_lut, arch_warmup_epochs=1, lambda_=0.5, **FAST)
    arch_batches = []
    original = module.next_arch_batch
    module.next_arch_batch = lambda batch: arch_batches.append(original(batch)) or arch_batches[-1]
    tau_before = [t.detach().clone() for t in module.tau.values()]
    trainer = fit(module, micro_space, epochs=2, limit=128, tmp_path=tmp_path)
    assert len(trainer.optimizers) == 2
    assert [g["name"] for g in trainer.optimizers[1].param_groups] == ["arch"]
    assert module.arch_steps_taken == trainer.num_training_batches  # epoch 0 is weight-only warm-up
    assert any(not torch.equal(a, b) for a, b in zip(module.tau.values(), tau_before))
    val_x = trainer.datamodule.val_set.tensors[0].flatten(1)
    for x, _ in arch_batches:  # every architecture batch comes from the validation split
        assert all((val_x == row).all(1).any() for row in x.flatten(1))
    assert module.derive_architecture().validate(micro_space).meta["solver"] == "single_path_softmax"


# ---------------------------------------------------------------------- random search
def test_random_search_respects_the_target_and_keeps_the_best(micro_space, micro_lut, tmp_path):
    model = RuntimeModel(micro_space, micro_lut, 1, 10)
    lo = model.predict(micro_space.smallest())
    rng = __import__("random").Random(0)
    latencies = sorted(model.predict(micro_space.sample(rng)) for _ in range(200))
    low, target = latencies[60], latencies[100]  # a window holding about a fifth of the uniform samples
    samples = sample_under_target(micro_space, model.predict, target, 20, seed=1, max_tries=2000)
    assert len({tuple(a.keys) for a in samples}) == 20 and all(model.predict(a) <= target for a in samples)
    window = sample_under_target(micro_space, model.predict, target, 5, seed=1, min_ms=low, max_tries=2000)
    assert all(low <= model.predict(a) <= target for a in window)

    module = make_solver("random", micro_space, micro_lut, target_ms=target, num_samples=2, seed=3,
                          optimizer=FAST["optimizer"])
    fit(module, micro_space, epochs=2, limit=96, tmp_path=tmp_path)  # 2 epochs / 2 samples = 1 epoch each
    acc = module.sample_val_acc.tolist()
    assert all(0 <= a <= 1 for a in acc)
    arch = module.derive_architecture()
    assert arch == module.samples[max(range(2), key=lambda i: (acc[i], -model.predict(module.samples[i])))]
    assert module.predicted_latency_ms(arch) <= target and arch.meta["solver"] == "random"

    with pytest.raises(ConfigError, match="raise hardware.target_ms"):
        make_solver("random", micro_space, micro_lut, target_ms=0.5 * lo, max_tries=200)
    with pytest.raises(ConfigError, match="set hardware.target_ms"):
        make_solver("random", micro_space, micro_lut)


# ---------------------------------------------------------------------- through the pipeline
def compose_search(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="search", overrides=list(overrides))


@pytest.mark.parametrize("solver, extra", [
    ("single_path_ste", []),
    ("single_path_softmax", ["solver.arch_warmup_epochs=0"]),
    ("multi_path", ["solver.weighting=gumbel", "solver.arch_warmup_epochs=0"]),
    ("proxyless", ["solver.arch_warmup_epochs=0"]),
    ("random", ["hardware.target_ms=1.0", "solver.num_samples=1"]),
])
def test_each_solver_writes_the_same_output_files(solver, extra, tmp_path):
    out = tmp_path / "run"
    cfg = compose_search(f"solver={solver}", "hardware=macs_proxy", "progress=false", "data.limit=100",
                         "data.batch_size=32", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                         "trainer.limit_val_batches=1",
                         "solver.bn_calibration_batches=1" if solver != "random" else "seed=0",
                         f"paths.output_dir={out}", f"paths.cache_dir={tmp_path}/cache", *extra)
    result = run_task(SEARCH, cfg)  # as spnas search runs it: the run shell writes summary.json
    for name in ("arch.json", "arch_timm.txt", "lut.json", "summary.json", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    expected = "multi_path_gumbel" if solver == "multi_path" else solver
    assert summary["solver"] == result["solver"] == expected
    run = summary["run"]  # the run shell's block: how to run it again, and how long it took
    assert run["format"] == "spnas-run" and run["seed"] == cfg.seed and run["wall_time_s"] >= summary["wall_time_s"]
    arch = Architecture.load(out / "arch.json")
    assert arch.keys == summary["architecture"] and arch.meta["predicted_latency_ms"] > 0
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["spnas"]["architecture"]["layers"] == arch.to_dict()["layers"]


def test_solver_configs_instantiate_the_right_classes():
    for solver, cls in [("single_path_ste", SinglePathSTESearch), ("single_path_softmax", SinglePathSoftmaxSearch),
                        ("multi_path", MultiPathSearch), ("proxyless", ProxylessSearch)]:
        cfg = compose_search(f"solver={solver}")
        assert instantiate(cfg.solver, _partial_=True).func is cls
    assert compose_search("solver=single_path_ste").solver.relaxation == "ste"
    assert compose_search("solver=random", "hardware.target_ms=2.5").solver.target_ms == 2.5
