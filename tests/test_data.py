"""Data modules: the embedded digits set, seeded splits, clear errors for missing datasets."""

from __future__ import annotations

import pytest
import torch

from nas.errors import DataError
from nas.search.data import CIFARDataModule, DigitsDataModule, ImageFolderDataModule
from tests.conftest import make_idx_set, write_idx


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


# --- IDX files (Fashion-MNIST / MNIST format), written by the tests themselves -------------------------------

@pytest.mark.parametrize("compress", [True, False])
def test_idx_module_reads_splits_pads_and_standardises(tmp_path, compress):
    from nas.search.data import IDXDataModule

    root = make_idx_set(tmp_path / "fm", compress=compress)
    dm = IDXDataModule(root=str(root), image_size=32, val_size=20, seed=3, augment=False)
    dm.check_available()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (100, 20, 30)
    x, y = dm.val_set.tensors
    assert x.shape == (20, 1, 32, 32) and y.dtype == torch.long
    train_x = dm.train_set.tensors[0]
    assert abs(float(train_x.mean())) < 1e-4 and abs(float(train_x.std()) - 1) < 1e-3
    # padded, not resized: the 2-pixel border holds the background (raw 0) in every image
    background = float(train_x[:, :, 0, 0].min())
    assert torch.all(x[:, :, :2, :] == background) and torch.all(x[:, :, :, -2:] == background)
    # the same seed gives the same split, another seed another one, and the parts are disjoint
    again = IDXDataModule(root=str(root), image_size=32, val_size=20, seed=3, augment=False)
    again.setup()
    assert torch.equal(again.val_set.tensors[0], x)
    other = IDXDataModule(root=str(root), image_size=32, val_size=20, seed=4, augment=False)
    other.setup()
    assert other.split_indices["val"] != dm.split_indices["val"]
    assert not set(dm.split_indices["train"]) & set(dm.split_indices["val"])


def test_idx_module_resizes_limits_and_augments(tmp_path):
    from nas.search.data import IDXDataModule

    root = make_idx_set(tmp_path / "fm")
    dm = IDXDataModule(root=str(root), image_size=16, val_size=20, limit=60, hflip=True, seed=0)
    dm.setup()
    # limit keeps the first 60 training and test images; validation shrinks in proportion (20 * 60 / 120)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50, 10, 30)
    x, _ = dm.train_set[0]
    assert x.shape == (1, 16, 16)
    # augmentation draws differ between items' seeds but one seed gives one image
    torch.manual_seed(0)
    a = dm.train_set[0][0]
    torch.manual_seed(0)
    assert torch.equal(a, dm.train_set[0][0])
    batch, labels = next(iter(dm.val_dataloader()))
    assert batch.shape == (10, 1, 16, 16) and labels.shape == (10,)


def test_idx_module_random_erasing_sets_a_rectangle_to_the_mean(tmp_path):
    from nas.errors import DataError
    from nas.search.data import IDXDataModule

    root = make_idx_set(tmp_path / "fm")
    plain = IDXDataModule(root=str(root), image_size=28, val_size=20, crop_padding=0, seed=0)
    erased = IDXDataModule(root=str(root), image_size=28, val_size=20, crop_padding=0, erasing=1.0, seed=0)
    plain.setup()
    erased.setup()
    torch.manual_seed(0)
    changed = 0
    for i in range(10):
        original, x = plain.train_set[i][0], erased.train_set[i][0]
        diff = original != x
        if diff.any():
            changed += 1
            assert torch.all(x[diff] == 0)  # erased pixels hold the mean (0 after standardisation)
            rows, cols = diff[0].any(dim=1).nonzero(), diff[0].any(dim=0).nonzero()
            assert int(rows.max() - rows.min() + 1) * int(cols.max() - cols.min() + 1) <= 0.4 * 28 * 28 + 28
    assert changed >= 8  # p=1: every image is erased (an erased area can coincide with zero pixels)
    with pytest.raises(DataError, match="data.erasing is a probability"):
        IDXDataModule(root=str(root), erasing=1.5)


@pytest.mark.parametrize("defect, message", [
    ("no folder", "does not exist"),
    ("missing file", "has no t10k-labels-idx1-ubyte"),
    ("truncated gzip", "is corrupt: it is incomplete"),
    ("truncated plain", "is corrupt: it is incomplete"),
    ("bad magic", "bad magic number"),
    ("count mismatch", "the train files do not match"),
])
def test_idx_defects_name_the_folder_and_both_fixes(tmp_path, defect, message):
    import numpy as np

    from nas.search.data import IDXDataModule

    root = tmp_path / "fm"
    if defect != "no folder":
        make_idx_set(root, compress=defect != "truncated plain")
    stem = "train-images-idx3-ubyte"
    if defect == "missing file":
        (root / "t10k-labels-idx1-ubyte.gz").unlink()
    elif defect == "truncated gzip":
        data = (root / f"{stem}.gz").read_bytes()
        (root / f"{stem}.gz").write_bytes(data[: len(data) // 2])
    elif defect == "truncated plain":
        data = (root / stem).read_bytes()
        (root / stem).write_bytes(data[:-100])
    elif defect == "bad magic":
        (root / f"{stem}.gz").unlink()
        (root / stem).write_bytes(b"\x89PNG" + bytes(100))
    elif defect == "count mismatch":
        (root / "train-labels-idx1-ubyte.gz").unlink()
        write_idx(root / "train-labels-idx1-ubyte", np.zeros(7), compress=False)
    dm = IDXDataModule(root=str(root), install="apt-get install dataset-fashion-mnist")
    with pytest.raises(DataError) as info:
        dm.check_available()
    text = str(info.value)
    assert message in text and str(root) in text
    assert "apt-get install dataset-fashion-mnist" in text and "data.root=" in text


def test_idx_corrupt_gzip_body_is_a_data_error_at_load(tmp_path):
    from nas.search.data import IDXDataModule

    root = make_idx_set(tmp_path / "fm")
    path = root / "train-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    for i in range(40, len(data) - 20, 7):  # damage the deflate stream, keep header and trailer
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    dm = IDXDataModule(root=str(root), val_size=20)
    with pytest.raises(DataError, match="is corrupt"):
        dm.check_available()
        dm.setup()


REAL_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not __import__("os").path.isdir(REAL_FASHION_MNIST),
                    reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)")
def test_real_fashion_mnist_files_have_the_published_sizes():
    from nas.search.data import IDXDataModule

    dm = IDXDataModule(root=REAL_FASHION_MNIST, image_size=32, augment=False)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50000, 10000, 10000)
    counts = torch.bincount(dm.test_set.tensors[1], minlength=10)
    assert counts.tolist() == [1000] * 10  # the official test split is balanced

