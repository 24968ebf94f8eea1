"""Mid-epoch resume: a search interrupted between checkpoints ends exactly like an uninterrupted one (CPU)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch.utils.data import TensorDataset

from nas.errors import ConfigError
from nas.search.checkpoint import AtomicCheckpointIO, load_checkpoint
from nas.search.data import DigitsDataModule
from nas.search.loaders import EpochSampler, ResumableDataLoader, SeededItems
from nas.search.solvers import SinglePathSearch
from tests.conftest import TEST_SGD, make_solver


def test_sharded_epoch_sampler_reproduces_the_single_process_global_batches():
    dataset = TensorDataset(torch.arange(103))
    single = EpochSampler(dataset, batch_size=8, seed=3, num_replicas=1, rank=0)
    ranks = [EpochSampler(dataset, batch_size=4, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for epoch in (0, 1):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        whole = list(single)
        parts = [list(s) for s in ranks]
        assert len(whole) == 96 and all(len(p) == 48 for p in parts)  # drop_last: 12 global batches of 8
        for k in range(12):
            union = set(parts[0][4 * k:4 * k + 4]) | set(parts[1][4 * k:4 * k + 4])
            assert union == set(whole[8 * k:8 * k + 8])
    single.set_epoch(0)
    epoch0 = list(single)
    single.set_epoch(1)
    assert list(single) != epoch0  # a new order every epoch ...
    single.set_epoch(0)
    assert list(single) == epoch0  # ... that depends on (seed, epoch) only
    single.skip_batches = 5
    assert list(single) == epoch0[40:]  # a resumed epoch starts after the consumed batches, once
    assert list(single) == epoch0


def test_seeded_items_do_not_depend_on_fetch_order_or_touch_the_global_rng():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.rand(3) + i

    items = SeededItems(Noisy(), seed=7)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = [items[k] for k in (3, 4, 13)]  # keys: epoch 0 items 3, 4; epoch 1 item 3
    assert torch.equal(torch.get_rng_state(), state)
    b = [items[k] for k in (13, 4, 3)][::-1]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[2])  # another epoch, another augmentation


def test_loader_state_rejects_a_different_global_batch():
    dataset = TensorDataset(torch.arange(64))
    sampler = EpochSampler(dataset, batch_size=8, num_replicas=1, rank=0)
    loader = ResumableDataLoader(dataset, sampler, progress=lambda: (1, 3))
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["batches_done"] == 3 and state["global_batch"] == 8
    loader.load_state_dict(state)
    assert sampler.epoch == 1 and sampler.skip_batches == 3
    other = ResumableDataLoader(dataset, EpochSampler(dataset, batch_size=16, num_replicas=1, rank=0),
                                progress=lambda: (0, 0))
    with pytest.raises(ConfigError, match="same data.batch_size and number of devices"):
        other.load_state_dict(state)


class Crash(Callback):
    """Simulates the process being killed: raises after ``step`` optimiser steps (before any later save)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError("killed")


def _search(micro_space, micro_lut) -> SinglePathSearch:
    torch.manual_seed(0)  # the same initial weights in every run
    # subset dropout and augmentation stay on: the resumed run must replay their random draws too
    return make_solver("single_path", micro_space, micro_lut, lambda_=0.5, threshold_lr=1.0,
                       subset_dropout={"p": 0.4, "epochs": 2}, runtime_warmup_epochs=1, optimizer=TEST_SGD,
                       bn_calibration_batches=2)


def _fit(module, root, callbacks=(), ckpt_path=None, every=None, max_epochs=3, limit=320) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    if ckpt_path is not None:
        torch.manual_seed(1234)  # a fresh process: the resumed run must get its RNG state from the checkpoint
    dm = DigitsDataModule(image_size=16, batch_size=32, limit=limit, seed=0)
    checkpoint = ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=every)
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root, callbacks=[*callbacks, checkpoint],
                         plugins=[AtomicCheckpointIO()], limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def test_search_killed_mid_epoch_resumes_to_the_uninterrupted_result(micro_space, micro_lut, tmp_path):
    reference = _search(micro_space, micro_lut)
    ref_trainer = _fit(reference, tmp_path / "ref")
    steps_per_epoch = ref_trainer.num_training_batches
    assert steps_per_epoch == 7

    killed = _search(micro_space, micro_lut)
    with pytest.raises(RuntimeError, match="killed"):
        _fit(killed, tmp_path / "run", callbacks=[Crash(step=12)], every=3)
    ckpt = load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert ckpt["global_step"] == 9 and 9 % steps_per_epoch  # the last save lies inside epoch 1
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_done"] == 9 - steps_per_epoch

    resumed = _search(micro_space, micro_lut)
    trainer = _fit(resumed, tmp_path / "run", ckpt_path=str(tmp_path / "run" / "last.ckpt"), every=3)
    assert trainer.global_step == ref_trainer.global_step == 3 * steps_per_epoch
    for a, b in zip(resumed.supernet.threshold_parameters(), reference.supernet.threshold_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for (name, a), b in zip(resumed.supernet.named_parameters(), reference.supernet.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert resumed.derive_architecture().keys == reference.derive_architecture().keys


def test_distilled_supernet_killed_mid_epoch_resumes_to_the_uninterrupted_result(micro_space, micro_lut, tmp_path):
    """solver=supernet with in-place distillation: sampling is a function of (seed, step) and the teacher's logits
    come from the same batch, so a resumed run trains exactly what an uninterrupted one does."""
    def supernet():
        torch.manual_seed(0)
        return make_solver("supernet", micro_space, micro_lut, sampling="sandwich", num_random=1, distill=True,
                           optimizer=TEST_SGD, bn_calibration_batches=2)

    small = {"max_epochs": 2, "limit": 160}  # 3 steps per epoch
    reference = supernet()
    assert _fit(reference, tmp_path / "ref", **small).global_step == 6
    with pytest.raises(RuntimeError, match="killed"):
        _fit(supernet(), tmp_path / "run", callbacks=[Crash(step=5)], every=2, **small)
    assert load_checkpoint(tmp_path / "run" / "last.ckpt")["global_step"] == 4  # inside the second epoch
    resumed = supernet()
    _fit(resumed, tmp_path / "run", ckpt_path=str(tmp_path / "run" / "last.ckpt"), every=2, **small)
    for (name, a), b in zip(resumed.supernet.named_parameters(), reference.supernet.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
