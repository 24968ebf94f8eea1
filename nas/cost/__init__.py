"""Cost model: latency LUTs, backends and profiling, the differentiable runtime model, its validation, device export.

Imports ``nas.supernets``, ``nas.space`` and below only. ``device_runner.py`` is standalone (numpy, onnxruntime).
"""
