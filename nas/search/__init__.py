"""Search: solvers (LightningModules), the search pipeline, data, loaders, retraining, monitoring, sweeps.

The top part of ``nas``: it may import every other part.
"""
