"""Train once, search many: multi-objective sub-network search over a trained supernet (source 002, §3-4).

``encoding`` (one integer gene per searchable layer), ``objectives`` (validated error, LUT latency per device,
MACs, parameters; normalisation and constraints), ``evaluation`` (the supernet with shared weights and
re-estimated BatchNorm statistics), ``store`` (validations.jsonl, the resumable cache), ``hypervolume``
(§4.1), ``engine`` (NSGA-II / AGE-MOEA / GA from pymoo and random search under a validation budget),
``report`` (pareto.json, hv.csv, figures, table) and ``run`` (what ``subnet_search.py`` does).
"""
