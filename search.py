"""Run a hardware-aware architecture search: `python search.py [hydra overrides]`.

Examples:
    python search.py                                   # digits, tiny space, ONNX Runtime CPU LUT
    python search.py solver.lambda_=0.5 trainer.max_epochs=12
    python search.py space=cifar data=cifar10 data.root=/data hardware=cpu_torch

An alias of ``spnas search`` (:func:`nas.entries.hydra_apps.run_search`);
the config is ``nas/conf/search.yaml``.
"""

from __future__ import annotations

from nas.entries.hydra_apps import run_search

if __name__ == "__main__":
    run_search()
