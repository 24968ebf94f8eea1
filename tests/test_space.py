"""Search-space configs: shapes, candidates, skip rules and clear errors on bad configs."""

from __future__ import annotations

import copy

import pytest

from nas.errors import SpaceError
from nas.space.search_space import SearchSpace
from tests.conftest import MICRO_SPACE, load_space


def test_shipped_spaces_have_the_documented_layout():
    mnasnet = load_space("mnasnet")
    assert len(mnasnet.searchable_layers) == 21 and mnasnet.resolution == 224
    assert [layer.out_channels for layer in mnasnet.layers][-1] == 320
    assert mnasnet.final_resolution == 7
    cifar = load_space("cifar")
    assert cifar.resolution == 32 and cifar.final_resolution == 4 and len(cifar.searchable_layers) == 21
    tiny = load_space("tiny")
    assert len(tiny.searchable_layers) == 5


def test_skip_only_where_the_layer_keeps_its_shape(micro_space):
    for spec in micro_space.layers:
        assert spec.can_skip == (spec.searchable and spec.stride == 1 and spec.in_channels == spec.out_channels)
    assert [spec.can_skip for spec in micro_space.layers] == [False, False, True, False, True]
    assert len(micro_space.layers[2].choices()) == 13 and len(micro_space.layers[1].choices()) == 12


def test_mid_and_se_channels_follow_timm(micro_space):
    spec = micro_space.layers[1]
    assert [spec.mid_channels(e) for e in (3, 6)] == [24, 48]
    assert [spec.se_channels(s) for s in (0.25, 0.5)] == [2, 4]


def test_digest_tracks_shapes_not_names():
    a = SearchSpace.from_config(MICRO_SPACE)
    b = SearchSpace.from_config({**MICRO_SPACE, "name": "renamed"})
    changed = copy.deepcopy(MICRO_SPACE)
    changed["stages"][1]["channels"] = 32
    assert a.digest == b.digest != SearchSpace.from_config(changed).digest


@pytest.mark.parametrize("path, value, expected", [
    (("stages", 1, "stride"), 3, r"stages\[1\]\.stride: stride must be 1 or 2"),
    (("stages", 1, "chanels"), 3, r"stages\[1\]: unknown key\(s\) \['chanels'\]"),
    (("candidates", "kernels"), [5, 3], r"kernels: \[5, 3\] must be strictly ascending"),
    (("candidates", "kernels"), [3, 4], r"kernels: 4 is not a positive odd kernel size"),
    (("candidates", "se_ratios"), [0, 1.5], r"se_ratios: 1.5 must lie in \[0, 1\)"),
    (("act",), "gelu", r"act: 'gelu' is not supported"),
    (("stages",), [], r"stages: needs a non-empty list"),
])
def test_bad_space_config_is_a_clear_error(path, value, expected):
    cfg = copy.deepcopy(MICRO_SPACE)
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(SpaceError, match=expected):
        SearchSpace.from_config(cfg)
