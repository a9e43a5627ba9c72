"""Feature pyramid network (P2-P6) with mmdetection's parameter names (`lateral_convs.{i}.conv`,
`fpn_convs.{i}.conv`)."""

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBlock


def add_upsampled(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """fine + nearest-neighbour upsampling of coarse to fine's size (F.interpolate's default mode, mmdetection's FPN).

    When fine is exactly twice coarse's size, as for inputs padded to a multiple of the coarsest stride, each
    coarse value is broadcast over its 2 x 2 block inside the add: one op that never writes the upsampled map (its
    gradient is a sum over the blocks, as interpolate's). The same values, bit for bit; other sizes interpolate."""
    (h, w), (hc, wc) = fine.shape[-2:], coarse.shape[-2:]
    if h != 2 * hc or w != 2 * wc:
        return fine + F.interpolate(coarse, size=(h, w))
    blocks = fine.unflatten(-1, (wc, 2)).unflatten(-3, (hc, 2))  # [N, C, hc, 2, wc, 2], a view
    return (blocks + coarse[:, :, :, None, :, None]).flatten(-2).flatten(-3, -2)


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
            laterals[i - 1] = add_upsampled(laterals[i - 1], laterals[i])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
