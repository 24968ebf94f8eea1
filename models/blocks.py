"""Plain building blocks of child networks (the ops a derived architecture is made of); PyTorch only.

Layer names follow timm's ``_efficientnet_blocks`` (``conv_pw``, ``bn1``, ``conv_dw``, ``bn2``, ``se``,
``conv_pwl``, ``bn3``) so that parameter counts and structure can be compared with timm directly.
"""

from __future__ import annotations

import torch
from torch import nn


def make_act(name: str) -> nn.Module:
    """Activation module by name."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "silu":
        return nn.SiLU(inplace=True)
    if name == "hard_swish":
        return nn.Hardswish(inplace=True)
    raise ValueError(f"unknown activation {name!r}; choose relu, relu6, silu or hard_swish")


class ConvBnAct(nn.Sequential):
    """``conv -> BatchNorm -> activation`` (activation optional)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, act: str | None = "relu",
                 groups: int = 1) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act:
            layers.append(make_act(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation: ``x * sigmoid(W2 act(W1 avgpool(x)))`` with ``reduced`` hidden channels."""

    def __init__(self, channels: int, reduced: int, act: str = "relu") -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act1 = make_act(act)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(self.act1(self.conv_reduce(s)))
        return x * self.gate(s)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expansion, kxk depthwise, optional SE, linear 1x1 projection.

    With ``expansion == 1`` there is no expansion conv (timm's depthwise-separable ``ds`` block).
    A residual connection is added when stride is 1 and the channels do not change.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int, mid_ch: int, se_ch: int,
                 act: str = "relu") -> None:
        super().__init__()
        self.has_residual = stride == 1 and in_ch == out_ch
        self.conv_pw: nn.Module | None = None
        if mid_ch != in_ch:
            self.conv_pw = nn.Conv2d(in_ch, mid_ch, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(mid_ch)
            self.act1 = make_act(act)
        self.conv_dw = nn.Conv2d(mid_ch, mid_ch, kernel, stride, padding=kernel // 2, groups=mid_ch, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_ch)
        self.act2 = make_act(act)
        self.se = SqueezeExcite(mid_ch, se_ch, act) if se_ch > 0 else nn.Identity()
        self.conv_pwl = nn.Conv2d(mid_ch, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.conv_pw is not None:
            x = self.act1(self.bn1(self.conv_pw(x)))
        x = self.act2(self.bn2(self.conv_dw(x)))
        x = self.se(x)
        x = self.bn3(self.conv_pwl(x))
        return x + shortcut if self.has_residual else x


class Head(nn.Module):
    """1x1 conv to ``channels`` features, global average pooling, dropout, linear classifier."""

    def __init__(self, in_ch: int, channels: int, num_classes: int, act: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv_head = ConvBnAct(in_ch, channels, 1, act=act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_head(x).mean((2, 3))
        return self.classifier(self.dropout(x))
