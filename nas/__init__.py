"""spnas: differentiable, hardware-aware neural architecture search (Single-Path NAS and baselines)."""

__version__ = "0.1.0"
