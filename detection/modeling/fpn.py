"""Feature pyramid network (P2-P6) with mmdetection's parameter names (`lateral_convs.{i}.conv`,
`fpn_convs.{i}.conv`)."""

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBlock


class FPN(nn.Module):
    """Lateral 1x1 convs, top-down nearest upsampling and addition, 3x3 output convs (all with bias, no norm).
    Extra levels beyond the inputs come from max_pool2d(last output, kernel 1, stride 2)."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int, num_outs: int):
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs ({num_outs}) must be >= the number of inputs ({len(in_channels)})")
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList(ConvBlock(c, out_channels, 1, relu=False) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvBlock(out_channels, out_channels, 3, relu=False) for _ in in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """features: [N, in_channels[i], H_i, W_i], finest first -> num_outs maps [N, out_channels, ., .]."""
        if len(features) != len(self.in_channels):
            raise ValueError(f"features: expected {len(self.in_channels)} maps, got {len(features)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
