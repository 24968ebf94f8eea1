"""Search solvers: LightningModules that each end in one :class:`~nas.space.Architecture`."""

from nas.search.solvers.base import SearchModule
from nas.search.solvers.bilevel import BilevelSearch
from nas.search.solvers.multi_path import MultiPathSearch
from nas.search.solvers.proxyless import ProxylessSearch
from nas.search.solvers.random_search import RandomSearch
from nas.search.solvers.single_path import SinglePathSearch
from nas.search.solvers.single_path_variants import SinglePathSoftmaxSearch, SinglePathSTESearch
from nas.search.solvers.supernet_training import SupernetTraining

__all__ = ["SearchModule", "SinglePathSearch", "BilevelSearch", "MultiPathSearch", "ProxylessSearch", "RandomSearch",
           "SinglePathSoftmaxSearch", "SinglePathSTESearch", "SupernetTraining"]
