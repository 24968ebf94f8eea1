"""Lightning callbacks of a search run."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from nas.errors import Interrupted
from nas.threads import rebalance

log = logging.getLogger(__name__)


def architecture_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The solver's architecture parameters (thresholds) if it exposes them, else all its parameters."""
    supernet = getattr(module, "supernet", None)
    if supernet is not None and hasattr(supernet, "threshold_parameters"):
        return list(supernet.threshold_parameters())
    return list(module.parameters())


class ThreadRebalance(pl.Callback):
    """Re-applies this process' automatic thread budget as other spnas processes on its CPUs come and go
    (:func:`nas.threads.rebalance`, at most once every 2 s; a clock read otherwise) before each training and
    validation batch."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        rebalance()

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        rebalance()


class RankAgreement(pl.Callback):
    """Records ``world_size`` and the largest difference of any rank's architecture parameters from rank 0's."""

    def __init__(self) -> None:
        self.world_size = 1
        self.max_abs_diff = 0.0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.world_size = int(trainer.world_size)
        if self.world_size <= 1:
            return
        params = [p.detach().flatten() for p in architecture_parameters(pl_module)]
        local = torch.cat(params) if params else torch.zeros(1, device=pl_module.device)
        gathered = trainer.strategy.all_gather(local)  # (world_size, n)
        self.max_abs_diff = float((gathered - gathered[0]).abs().max())

    def summary(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "max_threshold_diff_across_ranks": self.max_abs_diff}


class SearchClock(pl.Callback):
    """Wall time of the whole search, across resumes: saved in every checkpoint and continued from it.

    ``start`` is the ``time.perf_counter()`` at which this process' part of the search began (before the LUT).
    """

    def __init__(self, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self.before = 0.0  # seconds spent by the runs this one resumes

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.start

    def state_dict(self) -> dict[str, Any]:
        return {"wall_time_s": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = float(state_dict.get("wall_time_s", 0.0))


class PreemptionCheckpoint(pl.Callback):
    """Pre-emption and Ctrl-C lose nothing: save a resumable mid-epoch checkpoint, then stop with a resume hint.

    * SIGTERM (what SLURM, Kubernetes and ``kill`` send): Lightning's signal connector sets
      ``trainer.received_sigterm``; after the running training step this callback saves ``path`` (through the
      trainer's checkpoint I/O, so the loader position and RNG state travel with it) and raises
      :class:`~nas.errors.Interrupted` (exit status 143). Under DDP Lightning broadcasts rank 0's signal and
      raises ``SIGTERMException`` on every rank at the same step; the checkpoint is saved then, in
      :meth:`on_exception`.
    * SIGINT (Ctrl-C), single process: the first one is turned into the same save-and-stop after the running step
      (exit status 130); a second Ctrl-C stops at once without saving (Lightning's KeyboardInterrupt handling).

    ``resume_hint(path)`` returns the command line that resumes from ``path``.
    """

    def __init__(self, path: str | Path, resume_hint: Callable[[str], str] | None = None) -> None:
        self.path = Path(path)
        self.resume_hint = resume_hint or (lambda p: f"ckpt_path={p}")
        self.signum: int | None = None  # SIGINT received by our handler
        self.saved_step: int | None = None
        self._previous_sigint: Any = None

    # ------------------------------------------------------------------ SIGINT handler for the fit
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.world_size > 1 or threading.current_thread() is not threading.main_thread():
            return
        self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_sigint()

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signal.SIGINT
        print("\nCtrl-C: saving a checkpoint after this step (press Ctrl-C again to stop without saving)",
              file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ save and stop
    def _received(self, trainer: pl.Trainer) -> int | None:
        if self.signum is not None:
            return self.signum
        return signal.SIGTERM if trainer.received_sigterm else None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        signum = self._received(trainer)
        if signum is None or trainer.world_size > 1:
            return  # DDP: every rank stops at the same step through Lightning's broadcast (on_exception)
        self._save(trainer)
        raise Interrupted(signum, self.message(signum, trainer))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        try:
            if isinstance(exception, SIGTERMException) and self.saved_step is None and trainer.global_step > 0:
                self._save(trainer)
        finally:
            self._restore_sigint()  # Lightning skips the teardown hooks when a fit ends in an exception

    def _save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        self.saved_step = int(trainer.global_step)

    def message(self, signum: int, trainer: pl.Trainer) -> str:
        """What was saved and the command that resumes from it."""
        name = signal.Signals(signum).name
        if self.saved_step is None:
            return f"stopped by {name} before the first training step; nothing to resume (start it again)"
        loop = trainer.fit_loop
        where = (f"epoch {loop.epoch_progress.current.processed}, batch "
                 f"{loop.epoch_loop.batch_progress.current.processed} of {trainer.num_training_batches}")
        return (f"stopped by {name} at step {self.saved_step} ({where}); saved {self.path}\n"
                f"resume with: {self.resume_hint(str(self.path))}")
