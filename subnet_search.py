"""Search the Pareto front of sub-networks of a trained supernet, per device: `python subnet_search.py supernet=...`.

Examples:
    python search.py solver=supernet trainer.max_epochs=30                # train the supernet once
    python subnet_search.py supernet=outputs/search/<date>/<time>/checkpoints/last.ckpt budget=500
    python subnet_search.py supernet=... devices=[cpu_onnx,macs_proxy]     # one front per device, shared validations
    python subnet_search.py supernet=... hardware=cpu_torch warm_start=<other run>/pareto.json
    python subnet_search.py supernet=... algorithm=random seed=1          # the baseline

An alias of ``spnas subnet-search`` (:func:`nas.entries.hydra_apps.run_subnet_search`);
the config is ``nas/conf/subnet_search.yaml``.
"""

from __future__ import annotations

from nas.entries.hydra_apps import run_subnet_search

if __name__ == "__main__":
    run_subnet_search()
