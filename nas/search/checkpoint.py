"""Checkpoint I/O: atomic writes (temp file + ``os.replace``) and ``weights_only=True`` loads."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from nas.io import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """Never leaves a truncated checkpoint behind, and never unpickles arbitrary objects when loading."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def load_checkpoint(self, path: str | os.PathLike,
                        map_location: Callable | str | torch.device | None = "cpu",
                        weights_only: bool | None = True) -> dict[str, Any]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path} does not exist; pass ckpt_path=<run dir>/checkpoints/"
                                    "last.ckpt of the run to resume")
        return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by this framework (``weights_only=True``)."""
    return AtomicCheckpointIO().load_checkpoint(path)
