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
    with pytest.raises(ArchitectureError, match=r"has 3 stages .* but space 'tiny' has 4"):
        architecture_from_timm_string(good.rsplit("|", 1)[0], space)
    with pytest.raises(ArchitectureError, match=r"needs r1, c24, s2"):
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
