import collections
import os
import random
import tempfile

import onnx
import onnxruntime as ort

from nas.cli import compose_config
from nas.cost.backends import OnnxRuntimeCPU
from nas.space.networks import build_child
from nas.space.search_space import SearchSpace

space = SearchSpace.from_config(compose_config("validate", ["space=mnasnet"]).space)
for name, arch in {"largest": space.largest(), "random": space.sample(random.Random(0))}.items():
    data = OnnxRuntimeCPU(threads=1, precision="int8").model_bytes(
        build_child(space, arch, 3, 1000).eval(), (1, 3, 224, 224)
    )
    d = tempfile.mkdtemp()
    so = ort.SessionOptions()
    so.optimized_model_filepath = os.path.join(d, "o.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    m = onnx.load(so.optimized_model_filepath)
    c = collections.Counter()
    for n in m.graph.node:
        if n.op_type in ("Conv", "QLinearConv", "FusedConv"):
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            k = tuple(a.get("kernel_shape", []))
            g = a.get("group", 1)
            c[(n.op_type, "depthwise" if g > 1 else "dense", k)] += 1
    print(name, sorted(c.items()))
