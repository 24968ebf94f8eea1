"""Search solvers: LightningModules that each end in one :class:`~nas.arch.Architecture`."""

from nas.solvers.base import SearchModule
from nas.solvers.bilevel import BilevelSearch
from nas.solvers.multi_path import MultiPathSearch
from nas.solvers.proxyless import ProxylessSearch
from nas.solvers.random_search import RandomSearch
from nas.solvers.single_path import SinglePathSearch
from nas.solvers.single_path_variants import SinglePathSoftmaxSearch, SinglePathSTESearch
from nas.solvers.supernet_training import SupernetTraining

__all__ = ["SearchModule", "SinglePathSearch", "BilevelSearch", "MultiPathSearch", "ProxylessSearch", "RandomSearch",
           "SinglePathSoftmaxSearch", "SinglePathSTESearch", "SupernetTraining"]
