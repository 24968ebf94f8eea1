"""Data modules: the embedded digits set, seeded splits, clear errors for missing datasets."""

from __future__ import annotations

import pytest
import torch

from nas.errors import DataError
from nas.search.data import CIFARDataModule, DigitsDataModule, ImageFolderDataModule


def test_digits_split_is_seeded_disjoint_and_resized():
    a = DigitsDataModule(image_size=24, seed=1, augment=False)
    a.setup()
    b = DigitsDataModule(image_size=24, seed=1, augment=False)
    b.setup()
    sizes = [len(a.train_set), len(a.val_set), len(a.test_set)]
    assert sum(sizes) == 1797 and sizes[1] == sizes[2] == 270
    x, y = next(iter(a.val_dataloader()))
    assert x.shape[1:] == (1, 24, 24) and y.dtype == torch.long
    assert torch.equal(a.val_set.tensors[0], b.val_set.tensors[0])
    parts = [set(a.split_indices[k]) for k in ("train", "val", "test")]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert len(parts[0] | parts[1] | parts[2]) == 1797
    c = DigitsDataModule(image_size=24, seed=2, augment=False)
    c.setup()
    assert not torch.equal(a.val_set.tensors[0], c.val_set.tensors[0])


def test_missing_dataset_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-10 not found: .*cifar-10-batches-py.*data\.download=true"):
        CIFARDataModule(root=str(tmp_path)).setup()
    with pytest.raises(DataError, match=r"ImageFolder training data not found"):
        _ = ImageFolderDataModule(root=str(tmp_path)).num_classes
