"""HyperPower (thesis Ch. 3): hardware-constrained Bayesian optimisation of a child network's hyperparameters.

* :mod:`.structure`: the structural hyperparameters (per-stage width, kernel, expansion, depth) and the
  training ones (learning rate, momentum, weight decay) as Optuna distributions, and the network they build;
* :mod:`.measure`: inference memory (CPU: torch profiler; CUDA: ``max_memory_allocated``), latency (the
  ``hardware=`` backend) and power (NVML);
* :mod:`.cost_models`: the linear cost models of Eq 3.2-3.3, 10-fold cross-validated (RMSPE, Table 3.1);
* :mod:`.samplers`: the constraint-aware acquisition of Eq 3.4 and the random-walk baseline (Sec 3.4.1);
* :mod:`.study`: the ask-and-tell loop with early termination (Sec 3.3.3) and the baselines.
"""
