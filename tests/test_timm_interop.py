"""timm interop: the emitted timm architecture string builds the same network as the project's child net."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from nas.errors import ArchitectureError
from nas.space.networks import build_child
from nas.space.timm_interop import (
    architecture_from_timm_string,
    build_timm_model,
    parse_arch_def,
    parse_timm_string,
    timm_model_kwargs,
    timm_record,
    timm_string,
)
from tests.conftest import load_space


def structure(model: nn.Module) -> list[tuple]:
    """Kind, weight shape, stride and groups of every conv / BN / linear layer, in registration order.

    (timm's BatchNormAct2d is a BatchNorm2d with the activation folded in; both count as "bn".)
    """
    out: list[tuple] = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            out.append(("conv", tuple(m.weight.shape), m.stride, m.groups, m.padding))
        elif isinstance(m, nn.BatchNorm2d):
            out.append(("bn", tuple(m.weight.shape)))
        elif isinstance(m, nn.Linear):
            out.append(("linear", tuple(m.weight.shape)))
    return out


@pytest.mark.parametrize("space_name, in_chans, n_random", [("tiny", 1, 3), ("cifar", 3, 1)])
def test_timm_string_builds_the_same_network(space_name, in_chans, n_random):
    space = load_space(space_name)
    rng = random.Random(7)
    archs = [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(n_random))]
    for arch in archs:
        child = build_child(space, arch, in_chans, 10).eval()
        text = timm_string(arch, space)
        timm_net = build_timm_model(parse_timm_string(text), num_classes=10, in_chans=in_chans,
                                    **timm_model_kwargs(space)).eval()
        assert sum(p.numel() for p in timm_net.parameters()) == sum(p.numel() for p in child.parameters())
        assert structure(timm_net) == structure(child), text
        # same function: copy the child's weights into timm's net position by position
        child_state, timm_state = child.state_dict(), timm_net.state_dict()
        assert [v.shape for v in child_state.values()] == [v.shape for v in timm_state.values()]
        timm_net.load_state_dict(dict(zip(timm_state, child_state.values())))
        x = torch.randn(2, in_chans, space.resolution, space.resolution)
        with torch.no_grad():
            torch.testing.assert_close(timm_net(x), child(x), rtol=1e-4, atol=1e-5)


def test_timm_string_parses_back_to_the_architecture():
    space = load_space("cifar")
    rng = random.Random(3)
    for _ in range(20):
        arch = space.sample(rng)
        back = architecture_from_timm_string(timm_string(arch, space), space)
        # skips may move within a stage (same shapes), so compare the network, not positions
        assert timm_string(back, space) == timm_string(arch, space)
        assert sorted(back.keys) == sorted(arch.keys)


def test_bad_timm_strings_name_the_problem():
    space = load_space("tiny")
    good = timm_string(space.largest(), space)
    with pytest.raises(ArchitectureError, match=r"has 3 stages but space 'tiny' has 4"):
        architecture_from_timm_string(good.rsplit("|", 1)[0], space)
    with pytest.raises(ArchitectureError, match=r"c32 s2 does not fit: space 'tiny' needs c24 s2"):
        architecture_from_timm_string(good.replace("c24", "c32", 1), space)
    with pytest.raises(ArchitectureError, match=r"cannot read .* in block"):
        architecture_from_timm_string(good.replace("_k5_", "_kx_", 1), space)
    with pytest.raises(ArchitectureError):
        architecture_from_timm_string(good.replace("_k5_", "_k9_", 1), space)  # not a candidate kernel


def test_train_accepts_a_timm_string_as_arch(tmp_path):
    from nas.search.training import load_architecture

    space = load_space("tiny")
    arch = space.sample(random.Random(11))
    from_string = load_architecture(timm_string(arch, space), space)
    assert timm_string(from_string, space) == timm_string(arch, space)
    path = arch.save(tmp_path / "arch.json", timm=timm_record(arch, space))
    assert load_architecture(str(path), space).keys == arch.keys


# ---------------------------------------------------------------------- arch= in every form
SPNASNET_100 = ("[['ds_r1_k3_s1_c16_noskip'], ['ir_r3_k3_s2_e3_c24'], ['ir_r1_k5_s2_e6_c40', 'ir_r3_k3_s1_e3_c40'], "
                "['ir_r1_k5_s2_e6_c80', 'ir_r3_k3_s1_e3_c80'], ['ir_r1_k5_s1_e6_c96', 'ir_r3_k5_s1_e3_c96'], "
                "['ir_r4_k5_s2_e6_c192'], ['ir_r1_k3_s1_e6_c320_noskip']]")  # timm's _gen_spnasnet, verbatim


def test_arch_accepts_every_form_and_strings_of_any_length(tmp_path):
    from nas.space.references import load_architecture

    space = load_space("cifar")
    arch = space.largest()
    text = timm_string(arch, space)
    assert len(text) > 255  # longer than a file name may be: Path(text).exists() raised OSError (Errno 36)
    assert load_architecture(text, space).keys == arch.keys
    assert load_architecture(f"  {text}\n", space).keys == arch.keys
    path = arch.save(tmp_path / "arch.json", timm=timm_record(arch, space))
    assert load_architecture(str(path), space).keys == arch.keys
    assert len(timm_string(load_space("mnasnet").largest(), load_space("mnasnet"))) > 255
    # timm's own block strings: r > 1 repeats and _noskip, as one line or as its arch_def list
    space = load_space("mnasnet")
    spaced = " | ".join(" ".join(stage) for stage in parse_arch_def(SPNASNET_100))
    from_list = load_architecture(SPNASNET_100, space)
    assert load_architecture(spaced, space).keys == from_list.keys
    assert from_list.layers[1].key == "k3_e3_se0" and from_list.layers[4].is_skip  # r3 of 4 layers: one skip
    assert sum(not c.is_skip for c in from_list.layers) == 1 + 3 + 4 + 4 + 4 + 4 + 1
    with pytest.raises(ArchitectureError, match="does not exist"):
        load_architecture(str(tmp_path / "nowhere.json"), space)
    with pytest.raises(ArchitectureError, match="neither an existing arch.json"):
        load_architecture("x" * 400, space)


def test_timm_networks_by_name_read_timm_without_weights():
    from nas.space.references import load_architecture

    space = load_space("mnasnet")
    expected = {"spnasnet_100": 4_421_616, "mnasnet_100": 4_383_312}  # timm's own parameter counts, 1000 classes
    for name, params in expected.items():
        arch = load_architecture(f"timm:{name}", space, 3, 1000)
        child = build_child(space, arch, 3, 1000)
        assert sum(p.numel() for p in child.parameters()) == params == arch.meta["parameters"]
    assert load_architecture("timm:spnasnet_100", space).keys == load_architecture(SPNASNET_100, space).keys


def test_a_network_that_does_not_fit_names_its_first_bad_block():
    from nas.space.references import load_architecture

    space = load_space("mnasnet")
    # semnasnet_100 (MnasNet-A1) has 112 and 160 channels where the space has 96 and 192
    with pytest.raises(ArchitectureError, match=r"timm:semnasnet_100 stage 4, block 'ir_r2_k3_s1_e6_c112_se0.25' "
                                                r"\(repeat 1\), layer 13: c112 s1 does not fit: space 'mnasnet' "
                                                r"needs c96 s1"):
        load_architecture("timm:semnasnet_100", space)
    with pytest.raises(ArchitectureError, match=r"block 'ds_r1_k3_s1_e1_c16_se0.25', layer 0: does not fit: this "
                                                r"layer is fixed to k3_e1_se0"):
        load_architecture("timm:efficientnet_b0", space)
    with pytest.raises(ArchitectureError, match="not an EfficientNet-family"):
        load_architecture("timm:resnet18", space)
    with pytest.raises(ArchitectureError, match="timm has no model 'nonet_100'"):
        load_architecture("timm:nonet_100", space)
    too_many = SPNASNET_100.replace("ir_r3_k3_s2_e3_c24", "ir_r5_k3_s2_e3_c24")
    with pytest.raises(ArchitectureError, match=r"stage 1: block 'ir_r5_k3_s2_e3_c24' is layer 5 of the stage, but "
                                                r"space 'mnasnet' has only 4"):
        load_architecture(too_many, space)
    with pytest.raises(ArchitectureError, match=r"'noskip' removes the residual"):
        load_architecture(SPNASNET_100.replace("ir_r3_k3_s1_e3_c40", "ir_r3_k3_s1_e3_c40_noskip"), space)
    with pytest.raises(ArchitectureError, match=r"'er' block"):
        load_architecture(SPNASNET_100.replace("ir_r3_k3_s2_e3_c24", "er_r3_k3_s2_e3_c24"), space)


def test_train_reads_strings_longer_than_a_file_name():
    from nas.search.training import load_architecture as train_load_architecture

    space = load_space("mnasnet")
    text = timm_string(space.largest(), space)
    assert len(text) > 255 and train_load_architecture(text, space).keys == space.largest().keys


def test_latency_script_predicts_and_measures(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    space = load_space("tiny")
    arch = space.sample(random.Random(5))

    def run(*overrides):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "latency.py"), "space=tiny", "in_channels=1",
                               "hardware=macs_proxy", "progress=false", f"paths.cache_dir={tmp_path}/cache",
                               f"hydra.run.dir={tmp_path}/run", *overrides], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "HYDRA_FULL_ERROR": "0"}, timeout=600)

    # MacsProxy with calibration networks: a deterministic LUT whose references measure now exactly as then
    proc = run(f"arch={timm_string(arch, space)}", "+hardware.backend.calibration_networks=12", "drift_references=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    for start in ("predicted, plain per-op sum", "predicted, calibrated:", "measured (median of 1 runs):",
                  "device repeatability (split halves):", "drift since the LUT x1.000 (4 reference networks"):
        assert sum(line.startswith(start) for line in lines) == 1, proc.stdout
    result = json.loads((tmp_path / "run" / "latency.json").read_text())
    assert result["architecture"] == arch.keys and result["measured_ms"] > 0
    # the drift since the LUT: none on a deterministic backend (the LUT stores times rounded to 1e-6 ms), so the
    # rescaled prediction is the prediction
    assert result["drift"]["references"] == 4 and result["drift"]["factor"] == pytest.approx(1.0, rel=1e-3)
    assert result["drift_predicted_ms"] == pytest.approx(result["predicted_ms"], rel=1e-3)
    # no drift check: said, not hidden
    proc = run("arch=smallest", "drift_references=0")
    assert proc.returncode == 0 and "drift since the LUT not checked: drift check off" in proc.stdout
    proc = run("arch=smallest", "drift_references=-1")
    assert proc.returncode == 2 and proc.stderr.startswith("error: drift_references must be an integer >= 0")
    # predict only; and a network that does not fit the space is one error line, exit 2
    proc = run("arch=smallest", "measure=false")
    assert proc.returncode == 0 and "measured" not in proc.stdout
    proc = run("arch=timm:spnasnet_100")
    assert proc.returncode == 2 and proc.stderr.startswith("error: timm:spnasnet_100 has 7 stages but space 'tiny'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
