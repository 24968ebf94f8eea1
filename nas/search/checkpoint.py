"""Checkpoint I/O: atomic writes (temp file + ``os.replace``) and ``weights_only=True`` loads."""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from nas.errors import ConfigError
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
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Read ``path`` with ``weights_only=True``, always: Lightning passes its own ``weights_only`` (``None`` by
        default); asking for ``False`` (unpickling arbitrary objects) is refused."""
        if weights_only is False:
            raise ConfigError("spnas loads checkpoints with weights_only=True only (they hold tensors and plain "
                              "Python values); do not pass weights_only=False")
        fix = "pass ckpt_path=<run dir>/checkpoints/last.ckpt of the run to resume"
        if not os.path.isfile(path):
            raise ConfigError(f"checkpoint {path} does not exist; {fix}")
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"checkpoint {path} cannot be read ({first}); it is truncated, corrupt or not a "
                              f"checkpoint of this framework: {fix}, or another checkpoint of that run") from None
        if not isinstance(checkpoint, dict) or not {"state_dict", "pytorch-lightning_version"} <= checkpoint.keys():
            raise ConfigError(f"checkpoint {path} was not written by a search or training run of this framework (no "
                              f"Lightning state); {fix}")
        return checkpoint


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by this framework (``weights_only=True``)."""
    return AtomicCheckpointIO().load_checkpoint(path)
