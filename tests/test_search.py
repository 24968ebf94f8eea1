"""The single-path Lightning search: one gradient step for weights and thresholds, lambda trades runtime."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from nas.search.checkpoint import AtomicCheckpointIO, load_checkpoint
from nas.search.data import DigitsDataModule
from nas.search.solvers import SinglePathSearch
from tests.conftest import TEST_SGD, make_solver


def make_search(space, lut, **kwargs) -> SinglePathSearch:
    settings = dict(lambda_=0.0, threshold_lr=1.0, subset_dropout={"p": 0.0, "epochs": 0}, optimizer=TEST_SGD)
    settings.update(kwargs)
    return make_solver("single_path", space, lut, **settings)


def fit(module, space, epochs=3, limit=384, tmp_path=None, seed=0) -> pl.Trainer:
    pl.seed_everything(seed, verbose=False)
    dm = DigitsDataModule(image_size=space.resolution, batch_size=32, limit=limit, seed=seed)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         plugins=[AtomicCheckpointIO()])
    trainer.fit(module, datamodule=dm)
    return trainer


def test_thresholds_and_weights_are_separate_groups_of_one_optimizer(micro_space, micro_lut, tmp_path):
    module = make_search(micro_space, micro_lut, threshold_lr=0.7)
    trainer = fit(module, micro_space, epochs=1, limit=64, tmp_path=tmp_path)
    assert len(trainer.optimizers) == 1
    groups = trainer.optimizers[0].param_groups
    assert [g["name"] for g in groups] == ["weights", "thresholds"]
    thresholds = {id(p) for p in module.supernet.threshold_parameters()}
    assert {id(p) for p in groups[1]["params"]} == thresholds and thresholds
    assert not thresholds & {id(p) for p in groups[0]["params"]}
    # the cosine schedule has annealed "lr" to 0 by the end of fit; the base rate is "initial_lr"
    assert groups[1]["initial_lr"] == 0.7 and groups[1]["weight_decay"] == 0.0
    assert groups[1]["lr"] < 0.7
    n_params = sum(1 for _ in module.supernet.parameters())
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == n_params


def test_one_step_updates_weights_and_thresholds_together(micro_space, micro_lut, tmp_path):
    module = make_search(micro_space, micro_lut, lambda_=0.5)
    before_t = [t.detach().clone() for t in module.supernet.threshold_parameters()]
    before_w = module.supernet.layers[1].weight_dw.detach().clone()
    pl.seed_everything(0, verbose=False)
    dm = DigitsDataModule(image_size=16, batch_size=16, limit=64)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    after_t = module.supernet.threshold_parameters()
    assert all(not torch.equal(a, b) for a, b in zip(after_t, before_t) if a.numel())
    assert not torch.equal(module.supernet.layers[1].weight_dw, before_w)


def test_large_lambda_derives_a_faster_architecture(micro_space, micro_lut, tmp_path):
    results = {}
    for lam in (0.0, 2.0):
        module = make_search(micro_space, micro_lut, lambda_=lam)
        fit(module, micro_space, epochs=3, tmp_path=tmp_path, seed=0)
        arch = module.derive_architecture()
        results[lam] = module.predicted_latency_ms(arch)
    assert results[2.0] < results[0.0], results
    largest = module.predicted_latency_ms(micro_space.largest())
    assert results[2.0] < 0.9 * largest


def test_checkpoint_carries_thresholds_and_loads_weights_only(micro_space, micro_lut, tmp_path):
    module = make_search(micro_space, micro_lut, lambda_=1.0)
    trainer = fit(module, micro_space, epochs=1, limit=128, tmp_path=tmp_path)
    path = tmp_path / "search.ckpt"
    trainer.save_checkpoint(path)
    ckpt = load_checkpoint(path)  # weights_only=True
    state = ckpt["state_dict"]
    for name, param in module.supernet.named_parameters():
        if name.split(".")[-1].startswith("t_"):
            assert torch.equal(state[f"supernet.{name}"], param.detach())
    arch = module.derive_architecture()
    assert ckpt["spnas"]["architecture"]["layers"] == arch.to_dict()["layers"]
    assert ckpt["spnas"]["predicted_latency_ms"] == module.predicted_latency_ms(arch)

    restored = make_search(micro_space, micro_lut)
    restored.on_load_checkpoint(ckpt)
    restored.load_state_dict(state)
    assert restored.derive_architecture() == arch


def test_search_runs_in_float64_with_bn_calibration(micro_space, micro_lut, tmp_path):
    # BN calibration feeds its own batches to the network: they must follow the trainer's precision
    module = make_search(micro_space, micro_lut, bn_calibration_batches=2)
    pl.seed_everything(0, verbose=False)
    dm = DigitsDataModule(image_size=micro_space.resolution, batch_size=32, limit=96, seed=0)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", precision="64-true", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert next(module.parameters()).dtype == torch.float64
    # the logged accuracy is the derived network's on the validation split (BN statistics as calibrated)
    images, labels = dm.val_set.tensors
    module.eval()
    with torch.no_grad():
        correct = int((module.eval_logits(images.double()).argmax(1) == labels).sum())
    # torchmetrics reports the fraction in float32: equal up to float32 rounding (eps 1.2e-7) of a value <= 1
    assert float(trainer.callback_metrics["val/acc"]) == pytest.approx(correct / len(labels), abs=1e-6)
