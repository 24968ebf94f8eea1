"""The Architecture type: JSON round trip with a format version, validation errors, timm strings."""

from __future__ import annotations

import json
import random

import pytest
import torch

from nas.errors import ArchitectureError
from nas.space.architecture import ARCH_FORMAT_VERSION, Architecture, LayerChoice
from nas.space.networks import build_child
from nas.space.timm_interop import (
    build_timm_model,
    parse_timm_string,
    timm_arch_def,
    timm_model_kwargs,
    timm_record,
    timm_string,
)


def test_json_round_trip_keeps_every_choice(tmp_path, tiny_space):
    rng = random.Random(0)
    for _ in range(10):
        arch = tiny_space.sample(rng).with_meta(predicted_latency_ms=1.25)
        path = arch.save(tmp_path / "arch.json", timm=timm_record(arch, tiny_space))
        data = json.loads(path.read_text())
        assert data["format_version"] == ARCH_FORMAT_VERSION and data["space_digest"] == tiny_space.digest
        loaded = Architecture.load(path, tiny_space)
        assert loaded == arch and loaded.meta["predicted_latency_ms"] == 1.25
    assert LayerChoice.from_key("k5_e6_se0.25") == LayerChoice(5, 6, 0.25)
    assert LayerChoice.from_key("skip").is_skip


def _write(tmp_path, arch, space, edit) -> str:
    data = arch.to_dict(timm_record(arch, space))
    edit(data)
    path = tmp_path / "bad_arch.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["layers"][2].update(kernel=7), r"layer 2 \(s1\.b1\): kernel 7 is not a candidate; allowed: \[3, 5\]"),
    (lambda d: d["layers"][1].update(expansion=4), r"layer 1 .*expansion 4 is not a candidate"),
    (lambda d: d["layers"][3].update(se_ratio=0.3), r"layer 3 .*se_ratio 0.3 is not a candidate"),
    (lambda d: d["layers"].__setitem__(1, {"op": "skip"}), r"layer 1 .*skip is not allowed here.*changes shape"),
    (lambda d: d["layers"].__setitem__(0, {"op": "skip"}), r"layer 0 .*fixed to k3_e1_se0"),
    (lambda d: d["layers"].pop(), r"has 5 layers but space 'tiny' has 6"),
    (lambda d: d.update(format_version=99), r"format_version 99 is not supported"),
    (lambda d: d["layers"][2].update(kernel="big"), r"layers\[2\]: kernel must be a number"),
])
def test_architecture_outside_the_space_is_a_clear_error(tmp_path, tiny_space, edit, expected):
    path = _write(tmp_path, tiny_space.largest(), tiny_space, edit)
    with pytest.raises(ArchitectureError, match=expected) as err:
        Architecture.load(path, tiny_space)
    assert "bad_arch.json" in str(err.value)


def test_missing_and_malformed_files(tmp_path, tiny_space):
    with pytest.raises(ArchitectureError, match="does not exist"):
        Architecture.load(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ArchitectureError, match="not valid JSON"):
        Architecture.load(tmp_path / "broken.json")


def test_timm_string_builds_the_same_network_with_timm(tiny_space):
    rng = random.Random(3)
    for arch in (tiny_space.largest(), tiny_space.smallest(), tiny_space.sample(rng)):
        arch_def = timm_arch_def(arch, tiny_space)
        assert parse_timm_string(timm_string(arch, tiny_space)) == arch_def
        ours = build_child(tiny_space, arch, in_channels=1, num_classes=10)
        theirs = build_timm_model(arch_def, num_classes=10, in_chans=1, **timm_model_kwargs(tiny_space))
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
        x = torch.randn(2, 1, 32, 32)
        assert theirs(x).shape == ours(x).shape == (2, 10)
    assert timm_string(tiny_space.largest(), tiny_space).split(" | ")[1] == \
        "ir_r1_k5_s2_e6_c24_se0.5 ir_r1_k5_s1_e6_c24_se0.5"
