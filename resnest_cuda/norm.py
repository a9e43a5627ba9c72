"""Normalization layers for the backbones and the helpers that build, classify and fold them.

``norm_layer`` arguments across the package accept a callable ``f(num_channels) -> nn.Module`` or one of the
names ``"bn"``, ``"syncbn"``, ``"gn"`` (GroupNorm, 32 groups) and ``"frozen_bn"``.
"""

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "FrozenBatchNorm2d",
    "SyncBatchNorm",
    "NormLayer",
    "build_norm_layer",
    "uses_batch_statistics",
    "batch_statistics_are_local",
    "process_group_of",
    "syncs_statistics",
    "is_norm",
    "fold_norm_into_conv",
]

NormLayer = Callable[[int], nn.Module]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (no gradients, no running-stat updates).

    Holds the buffers ``weight``, ``bias``, ``running_mean`` and ``running_var`` under the BatchNorm2d names, so a
    BatchNorm checkpoint loads directly (its ``num_batches_tracked`` entry is accepted and dropped).

    Input ``[B, C, H, W]`` (any memory format) -> output of the same shape, dtype and memory format.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs):
        # BatchNorm checkpoints carry a step counter that has no meaning for frozen statistics.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs)

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(scale, shift)`` with ``y = x * scale + shift``, both ``[C]`` float."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift()
        # Multiply-add keeps x's memory format (channels_last stays channels_last).
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class SyncBatchNorm(nn.SyncBatchNorm):
    """SyncBatchNorm that behaves exactly as BatchNorm when there is nothing to synchronize.

    Statistics are reduced across processes only when ``torch.distributed`` is initialized and the process group
    (``process_group`` or WORLD) has more than one member. Otherwise (a single process, no process group, or a
    group of size 1, on any device including CPU) it runs plain ``F.batch_norm`` with batch statistics in training
    and running statistics in eval, like ``nn.BatchNorm2d``. torch's own SyncBatchNorm rejects CPU inputs whenever a
    process group exists, even of size 1; this class does not.
    """

    def _needs_sync(self) -> bool:
        return self.training and syncs_statistics(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._needs_sync():
            return super().forward(x)
        return _BatchNorm.forward(self, x)


def _group_norm(num_channels: int) -> nn.GroupNorm:
    if num_channels % 32 != 0:
        raise ValueError(f"norm_layer='gn' uses 32 groups; num_channels ({num_channels}) must be divisible by 32")
    return nn.GroupNorm(32, num_channels)


_NAMED_NORMS: dict[str, NormLayer] = {
    "bn": nn.BatchNorm2d,
    "syncbn": SyncBatchNorm,
    "gn": _group_norm,
    "frozen_bn": FrozenBatchNorm2d,
}


def build_norm_layer(norm_layer: str | NormLayer) -> NormLayer:
    """Turns ``"bn" | "syncbn" | "gn" | "frozen_bn"`` or a callable into a callable ``f(num_channels) -> module``."""
    if isinstance(norm_layer, str):
        if norm_layer not in _NAMED_NORMS:
            raise ValueError(f"norm_layer must be a callable or one of {sorted(_NAMED_NORMS)}, got {norm_layer!r}")
        return _NAMED_NORMS[norm_layer]
    if not callable(norm_layer):
        raise TypeError(f"norm_layer must be a callable or a string, got {type(norm_layer).__name__}")
    return norm_layer


def is_norm(module: nn.Module) -> bool:
    """True for the normalization layers that ``norm_eval`` / ``frozen_stages`` switch to eval mode."""
    return isinstance(module, (_BatchNorm, nn.GroupNorm, FrozenBatchNorm2d))


def uses_batch_statistics(module: nn.Module) -> bool:
    """True when ``module`` normalizes with statistics of the current batch (BatchNorm in training mode)."""
    return isinstance(module, _BatchNorm) and (module.training or module.running_mean is None)


def process_group_of(module: nn.SyncBatchNorm):
    """The process group a SyncBatchNorm reduces over: its ``process_group``, or WORLD."""
    return module.process_group if module.process_group is not None else dist.group.WORLD


def syncs_statistics(module: nn.Module) -> bool:
    """True for a ``torch.nn.SyncBatchNorm`` (ours included) whose process group has several members in an
    initialized torch.distributed; otherwise it behaves as BatchNorm."""
    return (
        isinstance(module, nn.SyncBatchNorm)
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size(process_group_of(module)) > 1
    )


def batch_statistics_are_local(module: nn.Module) -> bool:
    """True when ``module`` normalizes with statistics of this process's batch alone.

    BatchNorm in training mode, except a SyncBatchNorm that reduces over a process group of several members.
    """
    return uses_batch_statistics(module) and not syncs_statistics(module)


def _norm_scale_shift(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    if isinstance(norm, FrozenBatchNorm2d):
        return norm.scale_and_shift()
    if isinstance(norm, _BatchNorm) and not norm.training and norm.running_mean is not None:
        scale = (norm.running_var.double() + norm.eps).rsqrt()
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        shift = -norm.running_mean.double() * scale
        if norm.bias is not None:
            shift = shift + norm.bias.double()
        return scale, shift
    return None


@torch.no_grad()
def fold_norm_into_conv(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d | None:
    """Returns a new Conv2d (with bias) equal to ``norm(conv(x))`` in eval mode, or None when ``norm`` cannot fold.

    Folds BatchNorm (eval mode, with running statistics) and FrozenBatchNorm2d: ``W' = W * s``,
    ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``, computed in float64.
    GroupNorm (statistics of the input) never folds.
    """
    scale_shift = _norm_scale_shift(norm)
    if scale_shift is None:
        return None
    scale, shift = scale_shift
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    weight = conv.weight.double() * scale.double().view(-1, 1, 1, 1)
    bias = shift.double()
    if conv.bias is not None:
        bias = bias + conv.bias.double() * scale.double()
    fused.weight.copy_(weight)
    fused.bias.copy_(bias)
    if (
        conv.weight.dim() == 4
        and not conv.weight.is_contiguous()
        and conv.weight.is_contiguous(memory_format=torch.channels_last)
    ):
        fused = fused.to(memory_format=torch.channels_last)  # keep a channels_last model channels_last
    return fused
