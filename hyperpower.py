"""HyperPower (thesis Ch. 3): `python hyperpower.py hyperpower.constraints.memory_mb=0.6 [overrides]`.

Examples:
    python hyperpower.py hyperpower.constraints.memory_mb=0.6 data.limit=800 trainer.max_epochs=2
    python hyperpower.py hyperpower.constraints.memory_mb=0.6 hyperpower.method=vanilla_bo   # baseline
    python hyperpower.py -m hyperpower.constraints.memory_mb=0.6 hyperpower.method=hyperpower,random seed=0,1,2

The study runs in this process (ask-and-tell): the cost models are fitted before the first proposal and the
pruner needs the live trial inside the training loop, which a Hydra sweeper's jobs (other processes, other
nodes) would not have. Use -m (and hydra/launcher=slurm) to fan whole studies out over methods and seeds.

An alias of ``spnas hyperpower`` (:func:`nas.entries.hydra_apps.run_hyperpower`);
the config is ``nas/conf/hyperpower.yaml``.
"""

from __future__ import annotations

from nas.entries.hydra_apps import run_hyperpower

if __name__ == "__main__":
    run_hyperpower()
