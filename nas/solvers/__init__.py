"""Search solvers: LightningModules that each end in one :class:`~nas.arch.Architecture`."""

from nas.solvers.base import SearchModule
from nas.solvers.single_path import SinglePathSearch

__all__ = ["SearchModule", "SinglePathSearch"]
