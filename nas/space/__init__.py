"""Space & architecture: search spaces, the one architecture type, the networks they denote, timm strings.

The bottom part of ``nas``: it imports only ``models`` (plain PyTorch blocks) and the shared utilities.
"""

from nas.space.architecture import Architecture, LayerChoice
from nas.space.search_space import Candidates, LayerSpec, SearchSpace

__all__ = ["Architecture", "Candidates", "LayerChoice", "LayerSpec", "SearchSpace"]
