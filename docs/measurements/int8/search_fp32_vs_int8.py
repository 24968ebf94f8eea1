import glob
import json

from nas.cli import compose_config
from nas.cost.lut import LatencyLUT
from nas.cost.runtime_model import RuntimeModel
from nas.space.references import load_architecture
from nas.space.search_space import SearchSpace

space = SearchSpace.from_config(compose_config("search", []).space)
luts = {
    p: LatencyLUT.load(glob.glob(f"/root/.cache/spnas/tiny-*-i1-c10-onnxruntime-cpu-{s}t1-*.json")[0])
    for p, s in (("fp32", ""), ("int8", "int8-"))
}
models = {p: RuntimeModel(space, lut, 1, 10) for p, lut in luts.items()}
out = {}
for seed in (0, 1):
    for hw in ("cpu_onnx", "cpu_onnx_int8"):
        d = f"outputs/arch_cmp/{hw}-s{seed}"
        arch = load_architecture(f"{d}/arch.json", space, 1, 10)
        summ = json.load(open(f"{d}/summary.json"))
        row = {
            "keys": arch.keys,
            "val_acc": summ.get("val_acc") or summ.get("best_val_acc"),
            "fp32_ms": models["fp32"].predict(arch),
            "int8_ms": models["int8"].predict(arch),
        }
        out[f"{hw}/s{seed}"] = row
        print(
            hw, seed, " ".join(arch.keys), f"fp32 {row['fp32_ms']:.4f} int8 {row['int8_ms']:.4f} val {row['val_acc']}"
        )
json.dump(out, open("/work/notes/arch_cmp.json", "w"), indent=1)
