"""Small layers shared by the heads: a norm-layer factory and a conv(+norm)(+ReLU) block whose parameter names
(`conv`, `bn`) match mmdetection's ConvModule, so checkpoint keys map one to one."""

from collections.abc import Callable

import torch
from torch import nn

from resnest_cuda.batch_norm import batch_norm_act
from resnest_cuda.norm import build_norm_layer

NormFactory = Callable[[int], nn.Module]


def make_norm_factory(kind: str) -> NormFactory | None:
    """Return `channels -> norm module` for `kind`, or None for "none". The names are the backbone's
    (`resnest_cuda.norm.build_norm_layer`): "bn", "gn" (32 groups), "frozen_bn" and "syncbn", a SyncBatchNorm that
    synchronises batch statistics only when a process group of more than one process exists and otherwise (one
    process, CPU or GPU, with or without an initialised group) behaves exactly like BatchNorm2d."""
    if kind == "none":
        return None
    return build_norm_layer(kind)


class ConvBlock(nn.Module):
    """conv → (norm) → (ReLU). The conv has a bias only when there is no norm (mmdetection's bias="auto")."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        norm: NormFactory | None = None,
        relu: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm is None)
        self.bn = norm(out_channels) if norm is not None else None
        self.relu = relu
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.relu:
            nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        else:
            nn.init.xavier_uniform_(self.conv.weight)
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """rows: optional bool [N], the samples whose statistics a batch-statistics BatchNorm uses (padding
        excluded; every row is normalised with them, no host synchronisation); other norms ignore it. norm -> ReLU
        is one fused op (resnest_cuda.batch_norm.batch_norm_act)."""
        x = self.conv(x)
        if self.bn is not None:
            return batch_norm_act(self.bn, x, relu=self.relu, rows=rows)
        return torch.relu(x) if self.relu else x
