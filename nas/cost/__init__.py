"""Cost model: latency LUTs, backends and profiling, the differentiable runtime model, its validation, device export.

Imports ``nas.supernets``, ``nas.space`` and below only. ``measurement_core.py`` (the shared measurement,
fit and price) and ``device_runner.py`` (the device CLI) are standalone (numpy, onnxruntime).
"""
