"""Supernets: superkernels, the single-path supernet and the multi-path supernet of the baselines.

Imports ``nas.space`` and below only.
"""
