"""Superkernel equivalence (Eq 5.1-5.3, 6.3) against independent plain-op references, and indicator gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import SqueezeExcite
from nas.space.architecture import LayerChoice
from nas.supernets.single_path_supernet import SinglePathSupernet, drop_subsets
from nas.supernets.superkernel import SuperMBConv, relaxed_indicator


def randomize(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and biases, so masking mistakes (e.g. BN's shift on dropped channels) show."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) + 1.0)
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.data.copy_(torch.randn(m.out_channels, generator=g))


def bn(x: torch.Tensor, layer: nn.BatchNorm2d, n: int) -> torch.Tensor:
    return F.batch_norm(x, layer.running_mean[:n], layer.running_var[:n], layer.weight[:n], layer.bias[:n],
                        False, 0.0, layer.eps)


def reference_layer(layer: SuperMBConv, x: torch.Tensor, choice: LayerChoice) -> torch.Tensor:
    """A plain MBConv computed from explicitly cropped/sliced superkernel weights (eval-mode BN)."""
    spec = layer.spec
    if choice.is_skip:
        return x
    mid = spec.mid_channels(choice.expansion)
    k = choice.kernel
    lo = (layer.kmax - k) // 2
    h = x
    if layer.conv_pw is not None:
        h = F.relu(bn(F.conv2d(h, layer.conv_pw.weight[:mid]), layer.bn1, mid))
    # plain depthwise conv with the cropped kxk kernel on the first `mid` channels
    h = F.conv2d(h, layer.weight_dw[:mid, :, lo:lo + k, lo:lo + k], None, spec.stride, k // 2, 1, mid)
    h = F.relu(bn(h, layer.bn2, mid))
    if choice.se_ratio > 0:
        rd = spec.se_channels(choice.se_ratio)
        se = SqueezeExcite(mid, rd, "relu")
        with torch.no_grad():
            se.conv_reduce.weight.copy_(layer.conv_reduce.weight[:rd, :mid])
            se.conv_reduce.bias.copy_(layer.conv_reduce.bias[:rd])
            se.conv_expand.weight.copy_(layer.conv_expand.weight[:mid, :rd])
            se.conv_expand.bias.copy_(layer.conv_expand.bias[:mid])
        h = se(h)
    h = bn(F.conv2d(h, layer.conv_pwl.weight[:, :mid]), layer.bn3, spec.out_channels)
    return h + x if spec.has_residual else h


@pytest.fixture
def layers(micro_space):
    out = []
    for spec in micro_space.searchable_layers:
        layer = SuperMBConv(spec, "relu")
        randomize(layer, spec.index)
        out.append(layer.eval())
    return out


def test_every_choice_equals_plain_mbconv(layers):
    torch.manual_seed(0)
    checked = set()
    for layer in layers:
        spec = layer.spec
        x = torch.randn(3, spec.in_channels, spec.input_resolution, spec.input_resolution)
        for choice in spec.choices():
            with torch.no_grad():
                got = layer(x, layer.fixed_decision(choice))
                want = reference_layer(layer, x, choice)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{spec.name} {choice.key}")
            checked.add(choice.key)
    # kernels 3/5, expansions 3/6, SE none/0.25/0.5 and the skip-op were all exercised
    assert {"k3_e3_se0", "k5_e6_se0.5", "k3_e6_se0.25", "k5_e3_se0", "skip"} <= checked
    assert len(checked) == 13


def test_kernel_superkernel_is_cropped_kernel(layers):
    layer = layers[0]
    mid = layer.mid_channels
    x = torch.randn(2, mid, 8, 8)
    for k, ind in ((3, torch.zeros(1)), (5, torch.ones(1))):
        w = layer.kernel_weight(ind)
        lo = (layer.kmax - k) // 2
        got = F.conv2d(x, w, None, 1, layer.kmax // 2, 1, mid)
        want = F.conv2d(x, layer.weight_dw[:, :, lo:lo + k, lo:lo + k], None, 1, k // 2, 1, mid)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_skip_returns_input_exactly(layers):
    skippable = [layer for layer in layers if layer.can_skip]
    assert skippable, "micro space must have a skippable layer"
    for layer in skippable:
        x = torch.randn(2, layer.spec.in_channels, layer.spec.input_resolution, layer.spec.input_resolution)
        assert torch.equal(layer(x, layer.fixed_decision(LayerChoice.skip())), x)


def test_se_superkernel_matches_plain_se_and_identity(layers):
    layer = layers[-1]
    spec = layer.spec
    x = torch.randn(2, spec.in_channels, spec.input_resolution, spec.input_resolution)
    outputs = {}
    for se in (0.0, 0.25, 0.5):
        choice = LayerChoice(5, 6, se)
        with torch.no_grad():
            outputs[se] = layer(x, layer.fixed_decision(choice))
            torch.testing.assert_close(outputs[se], reference_layer(layer, x, choice), rtol=1e-5, atol=1e-5)
    # the three SE choices really compute different functions
    assert not torch.allclose(outputs[0.0], outputs[0.25])
    assert not torch.allclose(outputs[0.25], outputs[0.5])


def test_train_mode_equivalence_with_extracted_child(micro_space):
    torch.manual_seed(1)
    net = SinglePathSupernet(micro_space, in_channels=1, num_classes=10)
    randomize(net)
    x = torch.randn(4, 1, 16, 16)
    arch = micro_space.architecture([micro_space.layers[0].fixed, LayerChoice(3, 3, 0.25), LayerChoice.skip(),
                                     LayerChoice(5, 6, 0.5), LayerChoice(3, 6, 0)])
    child = net.extract_child(arch)
    net.train()
    child.train()
    torch.testing.assert_close(net(x, net.fixed_decisions(arch)), child(x), rtol=1e-4, atol=1e-4)


def test_thresholds_receive_gradients_through_relaxed_indicators(micro_space):
    torch.manual_seed(2)
    net = SinglePathSupernet(micro_space, in_channels=1, num_classes=10)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    F.cross_entropy(net(x), y).backward()
    for layer in net.super_layers():
        for t in layer.thresholds():
            assert t.grad is not None and torch.isfinite(t.grad).all()
            assert (t.grad != 0).all(), f"{layer.spec.name}: zero threshold gradient {t.grad}"
        # the group norm also sends gradient to the outer-shell weights
        shell = layer.weight_dw.grad * layer.kernel_masks[1]
        assert shell.abs().sum() > 0


def test_relaxations_forward_hard_backward_soft():
    score = torch.tensor([-1.5, -0.2, 0.3, 2.0], requires_grad=True)
    out = relaxed_indicator(score, "sigmoid")
    assert torch.equal(out.detach(), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    out.sum().backward()
    s = torch.sigmoid(score.detach())
    torch.testing.assert_close(score.grad, s * (1 - s))
    score.grad = None
    relaxed_indicator(score, "ste").sum().backward()
    assert torch.equal(score.grad, torch.ones(4))


def test_large_thresholds_select_smaller_ops(micro_space):
    net = SinglePathSupernet(micro_space, in_channels=1, num_classes=10)
    assert net.derive() == micro_space.largest()
    with torch.no_grad():
        for layer in net.super_layers():
            layer.t_kernel.fill_(1e6)
            layer.t_se.fill_(1e6)
            layer.t_expansion.fill_(1e6)
    arch = net.derive()
    for spec, choice in zip(micro_space.layers, arch.layers):
        if spec.searchable:
            assert choice == (LayerChoice.skip() if spec.can_skip else LayerChoice(3, 3, 0))


def test_subset_dropout_drops_and_derivation_ignores_it(micro_space):
    torch.manual_seed(3)
    net = SinglePathSupernet(micro_space, in_channels=1, num_classes=10)
    decisions = net.decisions()
    g = torch.Generator().manual_seed(0)
    values = []
    for _ in range(200):
        dropped = drop_subsets(decisions, p=0.4, rescale=True, generator=g)
        values += [v for d in dropped if d is not None for v in torch.cat([d.kernel, d.expansion, d.se]).tolist()]
    values = torch.tensor(values)
    assert 0.35 < (values == 0).float().mean() < 0.45
    kept = values[values != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.6))
    # a forward pass with rescaled (1.667) indicators runs, and the derived architecture is still valid
    net(torch.randn(2, 1, 16, 16), dropped)
    assert net.derive().validate(micro_space) == micro_space.largest()


def test_reestimate_batchnorm_sets_the_calibration_batches_statistics():
    """The one BN re-estimation (search and sub-network search): running mean / variance become the average of
    the calibration batches' statistics; momenta, the training mode and the global RNG are left as they were."""
    from nas.supernets.bn_calibration import reestimate_batchnorm

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    net = nn.Sequential(conv, nn.BatchNorm2d(4, momentum=0.3), nn.Dropout(0.5), nn.ReLU()).eval()
    net[1].running_mean.fill_(5.0)
    net[1].running_var.fill_(7.0)
    batches = [torch.randn(8, 3, 6, 6) * (i + 1) + i for i in range(3)]
    rng = torch.get_rng_state()
    assert reestimate_batchnorm(net, net, batches) == 3
    with torch.no_grad():
        feats = [conv(x) for x in batches]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(net[1].running_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net[1].running_var, var, rtol=1e-5, atol=1e-5)
    assert int(net[1].num_batches_tracked) == 3 and net[1].momentum == 0.3 and not net.training
    assert torch.equal(torch.get_rng_state(), rng)  # the dropout in the passes drew from a forked RNG
    assert reestimate_batchnorm(net, net, []) == 0  # no batch: nothing changes
    torch.testing.assert_close(net[1].running_mean, mean, rtol=1e-5, atol=1e-5)
