"""Train once, search many: multi-objective sub-network search over a trained supernet (source 002, §3-4).

``encoding`` (one integer gene per searchable layer), ``search_objectives`` (validated error, LUT latency per device,
MACs, parameters; normalisation and constraints), ``evaluation`` (the supernet with shared weights and
re-estimated BatchNorm statistics), ``store`` (validations.jsonl, the resumable cache), ``hypervolume``
(§4.1), ``engine`` (NSGA-II / AGE-MOEA / GA from pymoo and random search under a validation budget),
``report`` (pareto.json, hv.csv, figures, table), ``predictors`` (§4.3: ridge / SVR / auto / MLP on one-hot genomes),
``tactics`` (§4.4-4.5: full search and ConcurrentNAS), ``popdb`` (§4.6: search masks) and ``run`` (what
``subnet_search.py`` does).
"""
