"""Small layers shared by the heads: a norm-layer factory and a conv(+norm)(+ReLU) block whose parameter names
(`conv`, `bn`) match mmdetection's ConvModule, so checkpoint keys map one to one."""

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from resnest_cuda.norm import SyncBatchNorm, build_norm_layer

NormFactory = Callable[[int], nn.Module]


def make_norm_factory(kind: str) -> NormFactory | None:
    """Return `channels -> norm module` for `kind`, or None for "none". The names are the backbone's
    (`resnest_cuda.norm.build_norm_layer`): "bn", "gn" (32 groups), "frozen_bn" and "syncbn", a SyncBatchNorm that
    synchronises batch statistics only when a process group of more than one process exists and otherwise (one
    process, CPU or GPU, with or without an initialised group) behaves exactly like BatchNorm2d."""
    if kind == "none":
        return None
    return build_norm_layer(kind)


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    from torch.distributed.nn.functional import all_reduce  # differentiable: the gradient is reduced as well

    return all_reduce(t, group=group)


def masked_batch_norm(bn: _BatchNorm, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`bn` in training mode with the batch statistics of the rows of x [N, C, H, W] where `rows` (bool [N]) is
    True; every row is normalised with them. On the selected rows it equals `bn(x[rows])` (up to the order of
    summation), and so do the running statistics, with no host synchronisation. Fixed-size RoI batches pass their
    padding slots here: they must not move the statistics of the real RoIs.

    A SyncBatchNorm with a process group of more than one process sums the statistics over the group. With one
    selected element or none the running statistics are left as they are (BatchNorm would refuse the batch)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(dtype)
    w = rows.to(dtype)[:, None, None, None]
    count = w.sum() * (x.shape[2] * x.shape[3])
    total = (xf * w).sum((0, 2, 3))
    group = None
    if isinstance(bn, SyncBatchNorm) and bn._needs_sync():
        group = bn.process_group if bn.process_group is not None else dist.group.WORLD
        count, total = _all_reduce(count, group), _all_reduce(total, group)
    mean = total / count.clamp(min=1)
    centred = xf - mean[None, :, None, None]
    sq = (centred * centred * w).sum((0, 2, 3))
    if group is not None:
        sq = _all_reduce(sq, group)
    var = sq / count.clamp(min=1)
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.to(dtype)
            factor = (count > 1).to(dtype) * factor  # no update from one element or none
            unbiased = var * count / (count - 1).clamp(min=1)
            bn.running_mean.mul_(1 - factor).add_(factor * mean)
            bn.running_var.mul_(1 - factor).add_(factor * unbiased)
    y = centred * torch.rsqrt(var + bn.eps)[None, :, None, None]
    if bn.affine:
        y = y * bn.weight.to(dtype)[None, :, None, None] + bn.bias.to(dtype)[None, :, None, None]
    return y.to(x.dtype)


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
        """rows: optional bool [N], the samples whose statistics a training-mode BatchNorm uses (padding excluded,
        see `masked_batch_norm`); other norms ignore it."""
        x = self.conv(x)
        if self.bn is not None:
            if rows is not None and self.training and isinstance(self.bn, _BatchNorm):
                x = masked_batch_norm(self.bn, x, rows)
            else:
                x = self.bn(x)
        return torch.relu(x) if self.relu else x
