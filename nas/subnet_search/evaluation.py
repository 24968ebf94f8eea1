"""Validating a sub-network with the supernet's shared weights (source 002 §3: a *validation* evaluation).

The supernet computes the sub-network through its superkernels with constant 0/1 indicators
(``fixed_decisions``), which is exactly the extracted child network. BatchNorm running statistics accumulated
while training mix every sampled sub-network, so before measuring a sub-network they are re-estimated for it:
reset, then averaged over a fixed set of training batches (the same batches for every sub-network, drawn once
with the search's seed). The validation split is then scored in eval mode: top-1 error and cross-entropy.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from models.child import ChildNet
from nas.errors import ConfigError
from nas.search.checkpoint import load_checkpoint
from nas.space.architecture import Architecture
from nas.space.search_space import SearchSpace
from nas.supernets.bn_calibration import reestimate_batchnorm
from nas.supernets.single_path_supernet import SinglePathSupernet
from nas.supernets.superkernel import SuperMBConv


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (16 hex digits) of a file's bytes: identifies the supernet checkpoint behind each validation."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def checkpoint_info(path: str | os.PathLike, space: SearchSpace) -> dict[str, Any]:
    """Read a search checkpoint and check it holds a single-path supernet of ``space`` (cheap; before any work).

    Returns the checkpoint dict. A checkpoint of another space is an error naming both space digests.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"supernet checkpoint {path} does not exist; pass supernet=<run>/checkpoints/last.ckpt "
                          "of a search.py run (solver=supernet trains one for sub-network search)")
    try:
        ckpt = load_checkpoint(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"supernet checkpoint {path} cannot be read ({type(err).__name__}: {err})") from None
    info = ckpt.get("spnas") if isinstance(ckpt, dict) else None
    if not isinstance(info, dict):
        raise ConfigError(f"{path} has no 'spnas' section: it was not written by search.py of this framework")
    if info.get("space_digest") != space.digest:
        raise ConfigError(f"supernet checkpoint {path} was trained on space '{info.get('space')}' (digest "
                          f"{info.get('space_digest')}), but space '{space.name}' (digest {space.digest}) is "
                          f"selected; pass space={info.get('space')} as trained")
    state = ckpt.get("state_dict") or {}
    if not any(k.startswith("supernet.") for k in state):
        solver = info.get("solver", "?")
        raise ConfigError(f"{path} (solver={solver}) holds no single-path supernet; sub-network search needs a "
                          "checkpoint of solver=supernet (or single_path)")
    return ckpt


def load_supernet(ckpt: dict[str, Any], space: SearchSpace, in_channels: int, num_classes: int,
                  source: str = "checkpoint") -> SinglePathSupernet:
    """The supernet of a checkpoint with its trained weights (``state_dict`` keys ``supernet.*``)."""
    state = {k[len("supernet."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("supernet.")}
    net = SinglePathSupernet(space, in_channels, num_classes)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1:2] or [str(err)]
        raise ConfigError(f"{source} does not fit a supernet of space '{space.name}' with {in_channels} input "
                          f"channels and {num_classes} classes ({first[0].strip()}); pass the data=... it was "
                          "trained on") from None
    return net.eval()


class SupernetEvaluator:
    """Top-1 error and cross-entropy of sub-networks with shared weights and per-sub-network BN statistics.

    Args:
        supernet: a trained :class:`SinglePathSupernet`.
        calibration: input batches for re-estimating BatchNorm statistics (fixed for every sub-network).
        validation: ``(x, y)`` batches of the validation split.
        via: ``supernet`` runs the superkernels with fixed indicators; ``child`` runs the extracted sub-network
            with the shared weights (``extract_child``): the same logits (tested to 1e-5), cheaper for small
            sub-networks because skipped layers and unused channels are not computed. Each layer's choice is
            extracted once and kept (at most every candidate of every layer: about 9x the supernet's searchable
            weights), so a validation assembles its child instead of building and initialising new modules; the
            supernet's weights are read when a choice is first used and must not change afterwards.
        device: where the networks run (``cpu``, ``cuda:0``); the supernet and the batches are moved there once.
    """

    def __init__(self, supernet: SinglePathSupernet, calibration: list[torch.Tensor],
                 validation: list[tuple[torch.Tensor, torch.Tensor]], via: str = "supernet",
                 device: str | torch.device = "cpu") -> None:
        if not validation:
            raise ConfigError("the validation split is empty; check data=... and data.limit")
        if via not in ("supernet", "child"):
            raise ConfigError(f"eval.via must be 'supernet' or 'child', got {via!r}")
        self.via = via
        self.device = torch.device(device)
        self.supernet = supernet.to(self.device).eval()
        self.calibration = [x.to(self.device) for x in calibration]
        self.validation = [(x.to(self.device), y.to(self.device)) for x, y in validation]
        self._parts: dict[Any, nn.Module] = {}  # (layer index, choice key) -> extracted block; stem; head

    @classmethod
    def from_datamodule(cls, supernet: SinglePathSupernet, datamodule: Any, bn_batches: int, seed: int,
                        batch_size: int | None = None, val_batches: int | None = None,
                        via: str = "supernet", device: str | torch.device = "cpu") -> SupernetEvaluator:
        """Draw ``bn_batches`` training batches once (seeded shuffle, the training augmentation included) and
        hold the validation split (its first ``val_batches`` batches, or all) in memory."""
        datamodule.setup("fit")
        if bn_batches < 0:
            raise ConfigError(f"eval.bn_batches must be >= 0, got {bn_batches}")
        calibration = []
        if bn_batches:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                loader = DataLoader(datamodule.train_set, batch_size=batch_size or datamodule.batch_size,
                                    shuffle=True, generator=torch.Generator().manual_seed(seed))
                for i, (x, _) in enumerate(loader):
                    if i >= bn_batches:
                        break
                    calibration.append(x)
        validation = []
        for i, (x, y) in enumerate(datamodule.val_dataloader()):
            if val_batches is not None and i >= val_batches:
                break
            validation.append((x, y))
        return cls(supernet, calibration, validation, via, device)

    @property
    def num_val_samples(self) -> int:
        return sum(len(y) for _, y in self.validation)

    @torch.no_grad()
    def recalibrate(self, arch: Architecture) -> None:
        """Re-estimate every BatchNorm's running statistics for ``arch`` (cumulative average over the batches)."""
        decisions = self.supernet.fixed_decisions(arch)
        reestimate_batchnorm(self.supernet, lambda x: self.supernet(x, decisions), self.calibration)
        self.supernet.eval()

    @torch.no_grad()
    def logits(self, arch: Architecture, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode logits of ``arch`` through the supernet (with the current BN statistics)."""
        self.supernet.eval()
        return self.supernet(x, self.supernet.fixed_decisions(arch))

    def _part(self, key: Any, extract: Callable[[], nn.Module | None]) -> nn.Module | None:
        if key not in self._parts:
            part = extract()
            self._parts[key] = None if part is None else part.to(self.device)
        return self._parts[key]

    @torch.no_grad()
    def child(self, arch: Architecture) -> ChildNet:
        """The child network of ``arch`` with the shared weights (``extract_child``'s), assembled from the kept
        extracted blocks; its BatchNorm statistics are whatever the last sub-network that used them left."""
        net = self.supernet
        arch.validate(net.space)
        blocks = {}
        for spec, layer, choice in zip(net.space.layers, net.layers, arch.layers):
            if choice.is_skip:
                continue
            extract = (partial(layer.extract, choice, net.space.act) if isinstance(layer, SuperMBConv)
                       else partial(copy.deepcopy, layer))
            blocks[str(spec.index)] = self._part((spec.index, choice.key), extract)
        return ChildNet(self._part("stem", partial(copy.deepcopy, net.stem)), blocks,
                        self._part("head", partial(copy.deepcopy, net.head)), space=net.space, arch=arch,
                        in_channels=net.in_channels, init=False)

    @torch.no_grad()
    def validate(self, arch: Architecture) -> dict[str, float]:
        """``{"error": top-1 error, "ce": mean cross-entropy}`` on the validation split."""
        if self.via == "child":
            child = self.child(arch)
            reestimate_batchnorm(child, child, self.calibration)
            run = child.eval()
        else:
            decisions = self.supernet.fixed_decisions(arch)
            reestimate_batchnorm(self.supernet, lambda x: self.supernet(x, decisions), self.calibration)
            self.supernet.eval()

            def run(x: torch.Tensor) -> torch.Tensor:
                return self.supernet(x, decisions)
        wrong, ce, n = 0, 0.0, 0
        for x, y in self.validation:
            out = run(x)
            wrong += int((out.argmax(1) != y).sum())
            ce += float(F.cross_entropy(out.double(), y, reduction="sum"))
            n += len(y)
        return {"error": wrong / n, "ce": ce / n}
