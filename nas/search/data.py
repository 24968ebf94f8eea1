"""LightningDataModules: scikit-learn digits (embedded default), Fashion-MNIST / MNIST (IDX files), CIFAR-10/100
and ImageFolder/ImageNet.

Every module exposes ``in_channels`` and ``num_classes``, splits its training data into train/validation with a
seeded permutation (the search trains on ``train`` and reports on ``val``), and keeps a separate ``test`` set.
Nothing is downloaded unless the user sets ``download=true``.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, random_split
from torchvision.transforms.v2 import Compose, RandomCrop, RandomErasing, RandomHorizontalFlip

from nas.errors import DataError
from nas.search.loaders import resumable_loader, trainer_progress


def seeded_split(n: int, fractions: tuple[float, ...], seed: int) -> list[list[int]]:
    """Disjoint index lists of ``range(n)``: the remainder first, then ``round(f * n)`` for each fraction
    (torch's ``random_split`` with a generator seeded by ``seed``)."""
    sizes = [int(round(f * n)) for f in fractions]
    first = n - sum(sizes)
    if first <= 0 or any(s <= 0 for s in sizes):
        raise DataError(f"cannot split {n} samples into fractions {fractions}; use smaller fractions")
    parts = random_split(range(n), [first, *sizes], generator=torch.Generator().manual_seed(seed))
    return [list(part.indices) for part in parts]


class TransformedImages(Dataset):
    """``(transform(x), y)`` for the items of a dataset of tensors (torchvision transforms on in-memory images)."""

    def __init__(self, base: Dataset, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[index]
        return self.transform(x), y


class _SplitDataModule(pl.LightningDataModule):
    """Shared loaders and validation of batch settings."""

    in_channels = 3
    num_classes = 10

    def __init__(self, batch_size: int = 64, eval_batch_size: int | None = None, num_workers: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise DataError(f"data.batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def check_available(self) -> None:
        """Raise :class:`DataError` naming the fix if the data cannot be read (cheap: no images are loaded).

        The search calls it before profiling a LUT or building a Trainer.
        """

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            self.setup("fit")
            dataset = self.train_set if train else self.val_set
        return DataLoader(dataset, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train,
                          drop_last=train and len(dataset) > self.batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """Seeded, rank-sharded and resumable mid-epoch (see :mod:`nas.search.loaders`)."""
        if self.train_set is None:
            self.setup("fit")
        assert self.train_set is not None
        return resumable_loader(self.train_set, self.batch_size, self.seed,
                                progress=lambda: trainer_progress(self.trainer),
                                drop_last=len(self.train_set) > self.batch_size, num_workers=self.num_workers,
                                persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            self.setup("test")
        return DataLoader(self.test_set, batch_size=self.eval_batch_size, num_workers=self.num_workers)


class DigitsDataModule(_SplitDataModule):
    """scikit-learn's handwritten digits (1,797 real 8x8 images shipped with scikit-learn), upsampled.

    Images are scaled to [0, 1], bilinearly resized to ``image_size`` and standardised with the training
    split's mean and std; train/val/test are a seeded 70/15/15 split.
    """

    in_channels = 1
    num_classes = 10

    def __init__(self, image_size: int = 32, batch_size: int = 64, eval_batch_size: int | None = 256,
                 val_fraction: float = 0.15, test_fraction: float = 0.15, augment: bool = True,
                 num_workers: int = 0, seed: int = 0, limit: int | None = None) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed)
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.augment = augment
        self.limit = limit

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        if self.limit:
            x, y = x[: self.limit], y[: self.limit]
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        train_idx, val_idx, test_idx = seeded_split(len(y), (self.val_fraction, self.test_fraction), self.seed)
        self.split_indices = {"train": train_idx, "val": val_idx, "test": test_idx}
        mean, std = x[train_idx].mean(), x[train_idx].std()
        x = (x - mean) / std
        train = TensorDataset(x[train_idx], y[train_idx])
        shift = max(1, self.image_size // 16) if self.augment else 0
        # random translation by up to `shift` pixels (zero padding); each item's draw is seeded (nas.search.loaders)
        self.train_set = TransformedImages(train, RandomCrop(self.image_size, padding=shift)) if shift else train
        self.val_set = TensorDataset(x[val_idx], y[val_idx])
        self.test_set = TensorDataset(x[test_idx], y[test_idx])


def _require_dir(path: Path, what: str, fix: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} not found: {path} does not exist. {fix}")


IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
# what reading a damaged file raises: gzip's BadGzipFile (an OSError), zlib.error, EOFError, our ValueError
_CORRUPT = (OSError, ValueError, EOFError, zlib.error)
_IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes (the only one MNIST-format files use)


def _idx_path(root: Path, stem: str) -> Path | None:
    """``root/stem`` or ``root/stem.gz`` (the plain file first); ``None`` if neither exists."""
    for path in (root / stem, root / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def _open_idx(path: Path):  # noqa: ANN202
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx_header(path: Path) -> tuple[int, ...]:
    """The dimensions an IDX file declares (``(n,)`` for labels, ``(n, rows, cols)`` for images).

    Checks the magic number and, without decompressing the file, that it holds as many bytes as declared (for a
    gzip file, the uncompressed size its trailer records). Raises :class:`ValueError` describing the defect.
    """
    with _open_idx(path) as stream:
        head = stream.read(4)
        if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != _IDX_UBYTE or head[3] not in (1, 3):
            raise ValueError("not an IDX file of unsigned bytes (bad magic number)")
        raw = stream.read(4 * head[3])
        if len(raw) < 4 * head[3]:
            raise ValueError("its header is cut short")
        dims = struct.unpack(f">{head[3]}I", raw)
    expected = 4 + 4 * len(dims) + int(np.prod(dims))
    if path.suffix == ".gz":
        with open(path, "rb") as raw_file:  # gzip's ISIZE trailer: the uncompressed size modulo 2**32
            raw_file.seek(-4, os.SEEK_END)
            size = struct.unpack("<I", raw_file.read(4))[0]
        if size != expected % 2**32:
            raise ValueError(f"it is incomplete: the header declares {expected} bytes, the gzip trailer {size}")
    elif path.stat().st_size != expected:
        raise ValueError(f"it is incomplete: the header declares {expected} bytes, the file has {path.stat().st_size}")
    return dims


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes as a uint8 array of its declared shape (gzip or plain)."""
    dims = read_idx_header(path)
    with _open_idx(path) as stream:
        data = stream.read()
    offset = 4 + 4 * len(dims)
    if len(data) != offset + int(np.prod(dims)):
        raise ValueError(f"it holds {len(data) - offset} data bytes, not the {int(np.prod(dims))} declared")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def fit_images(x: torch.Tensor, size: int, fit: str) -> torch.Tensor:
    """``(N, 1, h, w)`` images to ``size`` x ``size``: ``pad`` (centred, zeros: the MNIST background), ``resize``
    (bilinear) or ``auto`` (pad when ``size`` is at most 8 pixels larger, resize otherwise)."""
    height = x.shape[-1]
    if fit == "auto":
        fit = "pad" if 0 <= size - height <= 8 else "resize"
    if size == height:
        return x
    if fit == "pad":
        if size < height:
            raise DataError(f"data.fit=pad cannot shrink {height} px images to {size} px; use data.fit=resize")
        before = (size - height) // 2
        return F.pad(x, (before, size - height - before, before, size - height - before))
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < height)


class IDXDataModule(_SplitDataModule):
    """MNIST-format IDX files: Fashion-MNIST (``data=fashion_mnist``) and MNIST (``data=mnist``).

    Reads the four files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each plain or ``.gz``) from ``root``. A seeded ``val_size`` of the training images is
    held out for validation (what the search reports on); the official test images are the test split. Images
    are scaled to [0, 1], padded or resized to ``image_size`` (``fit``) and standardised with the training split's
    mean and std. Augmentation (training split only): a random translation by up to ``crop_padding`` pixels and,
    with ``hflip``, a horizontal flip, and with probability ``erasing`` a random erased rectangle; each item's draw
    is seeded (:mod:`nas.search.loaders`).
    ``limit`` keeps the first N images of the training file and of the test file (quick runs); the validation
    split then shrinks in proportion.
    """

    in_channels = 1
    num_classes = 10

    def __init__(self, root: str, name: str = "Fashion-MNIST", install: str | None = None, image_size: int = 32,
                 fit: str = "auto", batch_size: int = 128, eval_batch_size: int | None = 1000,
                 val_size: int = 10000, augment: bool = True, crop_padding: int = 2, hflip: bool = False,
                 erasing: float = 0.0, limit: int | None = None, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed)
        if fit not in ("auto", "pad", "resize"):
            raise DataError(f"data.fit must be auto, pad or resize, got {fit!r}")
        if not isinstance(val_size, int) or val_size < 1:
            raise DataError(f"data.val_size must be an integer >= 1, got {val_size!r}; e.g. data.val_size=10000")
        if limit is not None and (not isinstance(limit, int) or limit < 2):
            raise DataError(f"data.limit must be an integer >= 2 or null, got {limit!r}; e.g. data.limit=5000")
        if isinstance(erasing, bool) or not isinstance(erasing, int | float) or not 0.0 <= erasing <= 1.0:
            raise DataError(f"data.erasing is a probability in [0, 1], got {erasing!r}; e.g. data.erasing=0.5")
        self.root = Path(os.path.expanduser(str(root)))
        self.name = name
        self.install = install
        self.image_size = image_size
        self.fit = fit
        self.val_size = val_size
        self.augment = augment
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.erasing = float(erasing)
        self.limit = limit

    def _fix(self) -> str:
        fixes = [f"install it ({self.install})"] if self.install else []
        fixes.append("set data.root=<folder with the four files " + ", ".join(IDX_FILES.values()) + " (or .gz)>")
        return "; ".join(fixes)

    def check_available(self) -> None:
        """The four files exist, are IDX files of the declared size, and their counts and shapes agree."""
        if not self.root.is_dir():
            raise DataError(f"{self.name} not found: {self.root} does not exist; {self._fix()}")
        dims: dict[str, tuple[int, ...]] = {}
        for key, stem in IDX_FILES.items():
            path = _idx_path(self.root, stem)
            if path is None:
                raise DataError(f"{self.name} incomplete: {self.root} has no {stem} (nor {stem}.gz); {self._fix()}")
            try:
                dims[key] = read_idx_header(path)
            except _CORRUPT as err:
                raise DataError(f"{self.name} file {path} is corrupt: {err}; {self._fix()}") from None
        for split in ("train", "test"):
            images, labels = dims[f"{split}_images"], dims[f"{split}_labels"]
            if len(images) != 3 or len(labels) != 1 or images[0] != labels[0] or images[1] != images[2]:
                raise DataError(f"{self.name} in {self.root}: the {split} files do not match (images {images}, "
                                f"labels {labels}); {self._fix()}")
        self._train_count = int(dims["train_images"][0])
        if dims["train_images"][1:] != dims["test_images"][1:]:
            raise DataError(f"{self.name} in {self.root}: training images are {dims['train_images'][1:]} px, test "
                            f"images {dims['test_images'][1:]} px; {self._fix()}")

    def _load(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = []
        for kind in ("images", "labels"):
            path = _idx_path(self.root, IDX_FILES[f"{split}_{kind}"])
            assert path is not None  # check_available ran
            try:
                arrays.append(read_idx(path))
            except _CORRUPT as err:
                raise DataError(f"{self.name} file {path} is corrupt: {err}; {self._fix()}") from None
        images, labels = arrays
        if self.limit:
            images, labels = images[: self.limit], labels[: self.limit]
        if labels.size and int(labels.max()) >= self.num_classes:
            raise DataError(f"{self.name} {split} labels go up to {int(labels.max())}, expected classes 0-"
                            f"{self.num_classes - 1}; {self._fix()}")
        x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
        return fit_images(x, self.image_size, self.fit), torch.from_numpy(labels.astype(np.int64))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.check_available()
        x, y = self._load("train")
        x_test, y_test = self._load("test")
        in_file = self._train_count
        val = self.val_size if len(y) == in_file else max(1, round(self.val_size * len(y) / in_file))
        if val >= len(y):
            raise DataError(f"data.val_size={self.val_size} leaves no training images of the {len(y)} in "
                            f"{self.root}; choose a smaller data.val_size")
        train_idx, val_idx = seeded_split(len(y), (val / len(y),), self.seed)
        self.split_indices = {"train": train_idx, "val": val_idx}
        mean, std = x[train_idx].mean(), x[train_idx].std()
        x, x_test = (x - mean) / std, (x_test - mean) / std
        train = TensorDataset(x[train_idx], y[train_idx])
        steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
        if self.augment and self.crop_padding > 0:
            # the background after standardisation is (0 - mean) / std: pad with it, not with 0
            steps.append(RandomCrop(self.image_size, padding=self.crop_padding, fill=float(-mean / std)))
        if self.augment and self.hflip:
            steps.append(RandomHorizontalFlip())
        if self.augment and self.erasing > 0:
            # Random Erasing (Zhong et al., AAAI 2020, Alg. 1): a rectangle of 2-40 % of the image, aspect 0.3-3.3,
            # set to 0, which after standardisation is the training mean
            steps.append(RandomErasing(p=self.erasing, value=0.0))
        self.train_set = TransformedImages(train, Compose(steps)) if steps else train
        self.val_set = TensorDataset(x[val_idx], y[val_idx])
        self.test_set = TensorDataset(x_test, y_test)


class CIFARDataModule(_SplitDataModule):
    """CIFAR-10 / CIFAR-100 from ``root`` (torchvision layout), validation split held out of the train set."""

    in_channels = 3

    def __init__(self, root: str, variant: int = 10, image_size: int = 32, batch_size: int = 128,
                 eval_batch_size: int | None = 512, val_fraction: float = 0.1, download: bool = False,
                 num_workers: int = 2, seed: int = 0) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed)
        if variant not in (10, 100):
            raise DataError(f"data.variant must be 10 or 100, got {variant}")
        self.root = Path(os.path.expanduser(str(root)))
        self.variant = variant
        self.num_classes = variant
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.download = download

    def check_available(self) -> None:
        if self.download:
            return
        folder = "cifar-10-batches-py" if self.variant == 10 else "cifar-100-python"
        _require_dir(self.root / folder, f"CIFAR-{self.variant}",
                     f"Put the python version of CIFAR-{self.variant} under data.root={self.root} "
                     f"(it must contain {folder}/), or add data.download=true to fetch it.")

    def _dataset_cls(self):  # noqa: ANN202
        from torchvision import datasets

        return datasets.CIFAR10 if self.variant == 10 else datasets.CIFAR100

    def prepare_data(self) -> None:
        if self.download:
            cls = self._dataset_cls()
            cls(self.root, train=True, download=True)
            cls(self.root, train=False, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from torchvision import transforms as T

        self.check_available()
        mean, std = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
        resize = [T.Resize(self.image_size)] if self.image_size != 32 else []
        train_tf = T.Compose([*resize, T.RandomCrop(self.image_size, padding=self.image_size // 8),
                              T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
        eval_tf = T.Compose([*resize, T.ToTensor(), T.Normalize(mean, std)])
        cls = self._dataset_cls()
        train_full = cls(self.root, train=True, transform=train_tf)
        eval_full = cls(self.root, train=True, transform=eval_tf)
        train_idx, val_idx = seeded_split(len(train_full), (self.val_fraction,), self.seed)
        self.train_set = Subset(train_full, train_idx)
        self.val_set = Subset(eval_full, val_idx)
        self.test_set = cls(self.root, train=False, transform=eval_tf)


class ImageFolderDataModule(_SplitDataModule):
    """Any ImageFolder layout (ImageNet included): ``root/train/<class>/*`` and ``root/val/<class>/*``.

    The search's validation split is held out of ``train`` (seeded); ``root/val`` is the test set.
    """

    def __init__(self, root: str, image_size: int = 224, batch_size: int = 64, eval_batch_size: int | None = None,
                 val_fraction: float = 0.05, train_dir: str = "train", val_dir: str = "val",
                 num_workers: int = 4, seed: int = 0) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed)
        self.root = Path(os.path.expanduser(str(root)))
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.train_dir = train_dir
        self.val_dir = val_dir
        self._classes: list[str] | None = None

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        if self._classes is None:
            train = self.root / self.train_dir
            _require_dir(train, "ImageFolder training data",
                         f"Set data.root to a folder containing {self.train_dir}/<class>/<images>.")
            self._classes = sorted(p.name for p in train.iterdir() if p.is_dir())
            if not self._classes:
                raise DataError(f"{train} has no class sub-folders; expected {train}/<class>/<images>")
        return len(self._classes)

    def check_available(self) -> None:
        _ = self.num_classes  # checks root/train_dir and its class folders
        _require_dir(self.root / self.val_dir, "ImageFolder validation data",
                     f"Set data.root to a folder containing {self.val_dir}/<class>/<images>.")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from torchvision import datasets
        from torchvision import transforms as T

        self.check_available()
        test_dir = self.root / self.val_dir
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        train_tf = T.Compose([T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip(), T.ToTensor(),
                              T.Normalize(mean, std)])
        eval_tf = T.Compose([T.Resize(int(round(self.image_size / 0.875))), T.CenterCrop(self.image_size),
                             T.ToTensor(), T.Normalize(mean, std)])
        train_full = datasets.ImageFolder(self.root / self.train_dir, transform=train_tf)
        eval_full = datasets.ImageFolder(self.root / self.train_dir, transform=eval_tf)
        train_idx, val_idx = seeded_split(len(train_full), (self.val_fraction,), self.seed)
        self.train_set = Subset(train_full, train_idx)
        self.val_set = Subset(eval_full, val_idx)
        self.test_set = datasets.ImageFolder(test_dir, transform=eval_tf)
