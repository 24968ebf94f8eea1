"""Where does int8 time go? ORT per-op-type profile of fp32 vs int8 models of mnasnet networks (ad hoc)."""

import collections
import json
import os
import random
import sys
import tempfile

import numpy as np
import onnxruntime as ort

from nas.cli import compose_config
from nas.cost.backends import OnnxRuntimeCPU
from nas.space.networks import build_child
from nas.space.references import load_architecture
from nas.space.search_space import SearchSpace

cfg = compose_config("validate", ["space=mnasnet"])
space = SearchSpace.from_config(cfg.space)
archs = {
    "spnasnet_100": load_architecture("timm:spnasnet_100", space, 3, 1000),
    "largest": space.largest(),
    "random": space.sample(random.Random(0)),
}
out = {}
for name, arch in archs.items():
    net = build_child(space, arch, 3, 1000).eval()
    for prec in ("fp32", "int8"):
        be = OnnxRuntimeCPU(threads=1, precision=prec)
        data = be.model_bytes(net, (1, 3, 224, 224))
        d = tempfile.mkdtemp()
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(d, "p")
        s = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        x = {s.get_inputs()[0].name: np.random.randn(1, 3, 224, 224).astype(np.float32)}
        for _ in range(5):
            s.run(None, x)
        events = json.load(open(s.end_profiling()))
        by = collections.Counter()
        n = collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                by[e["args"]["op_name"]] += e["dur"]
                n[e["args"]["op_name"]] += 1
        total = sum(by.values()) / 6 / 1000
        out[f"{name}/{prec}"] = {
            "ms_per_run": round(total, 3),
            "by_op_ms": {k: round(v / 6 / 1000, 3) for k, v in by.most_common(8)},
        }
        print(name, prec, f"{total:.2f} ms/run", {k: round(v / 6 / 1000, 2) for k, v in by.most_common(6)}, flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
