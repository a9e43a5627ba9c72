"""Small layers shared by the heads: a norm-layer factory and a conv(+norm)(+ReLU) block whose parameter names
(`conv`, `bn`) match mmdetection's ConvModule, so checkpoint keys map one to one."""

from collections.abc import Callable

import torch
from torch import nn

NormFactory = Callable[[int], nn.Module]


def make_norm_factory(kind: str, num_groups: int = 32) -> NormFactory | None:
    """Return `channels -> norm module` for `kind`, or None for "none".

    "syncbn" gives `nn.SyncBatchNorm`: it synchronises batch statistics over the default process group when one is
    initialised with more than one process, and otherwise (a single process, CPU or GPU) behaves exactly like
    `BatchNorm2d`. "frozen_bn" is a BatchNorm2d whose statistics and affine parameters are not trained.
    """
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "syncbn":
        return nn.SyncBatchNorm
    if kind == "gn":
        return lambda channels: nn.GroupNorm(num_groups, channels)
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "none":
        return None
    raise ValueError(f"norm: expected one of 'bn', 'syncbn', 'gn', 'frozen_bn', 'none', got {kind!r}")


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always uses its running statistics and whose affine parameters are not trained."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenBatchNorm2d":
        return super().train(False)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return torch.relu(x) if self.relu else x
