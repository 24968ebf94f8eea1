"""Train a derived architecture from scratch: `python train.py arch=<search run>/arch.json [overrides]`.

An alias of ``spnas train`` (:func:`nas.entries.hydra_apps.run_train`); the config is ``nas/conf/train.yaml``.
"""

from __future__ import annotations

from nas.entries.hydra_apps import run_train

if __name__ == "__main__":
    run_train()
