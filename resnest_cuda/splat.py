"""Split-attention convolution (ResNeSt): grouped conv, radix-sum pooling, a small attention MLP, radix softmax."""

import torch
import torch.nn as nn

from . import ops, reference
from .batch_norm import batch_norm_act
from .norm import NormLayer, batch_statistics_are_local, build_norm_layer, fold_norm_into_conv

__all__ = ["SplitAttentionConv2d", "IMPLS"]

IMPLS = ("fused", "reference")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


class SplitAttentionConv2d(nn.Module):
    """Split-attention conv: ``[B, in_channels, H, W] -> [B, channels, H', W']`` (R = radix, K = groups).

    1. ``u = ReLU(bn0(conv(x)))``: conv with ``groups*radix`` groups, ``radix*channels`` outputs, no bias;
       channel ``r*C + k*(C/K) + c`` of ``u`` is split ``r`` of cardinal group ``k`` (radix-major).
    2. ``gap = split_attention_pool(u)``: ``[B, C]``, mean over H, W of the sum over the R splits.
    3. ``logits = fc2(ReLU(bn1(fc1(gap))))``: 1x1 convs with ``groups`` groups and bias, ``fc1`` to
       ``inter = max(channels*radix // reduction_factor, 32)``, ``fc2`` to ``radix*channels`` (cardinal-major).
    4. ``out = split_attention_combine(u, logits)``: softmax over the R splits (sigmoid when R == 1), weighted sum.

    Submodules ``conv, bn0, fc1, bn1, fc2`` carry the official ResNeSt / timm checkpoint names.
    ``impl="fused"`` runs steps 2 and 4 with the resnest_cuda ops; in training with a batch-statistics bn0 they
    read the conv output and apply bn0 + ReLU themselves, so ``u`` is never written nor saved
    (``resnest_cuda.ops.norm_split_attention``). ``impl="reference"`` runs them with plain PyTorch
    (``resnest_cuda.reference``). Both share parameters and state dict. Channels-last input stays channels-last.

    bn1 normalizes a ``[B, inter, 1, 1]`` tensor. With batch statistics (BatchNorm in training) it needs B >= 2;
    batch 1 raises a ValueError that names the fixes (not for a SyncBatchNorm synchronized over several
    processes). With ``norm_layer="gn"`` (32 groups) and ``inter == 32`` each group holds one value per sample,
    so bn1 outputs its bias for every input (and torch rejects batch 1).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        radix: int = 2,
        reduction_factor: int = 4,
        norm_layer: str | NormLayer = nn.BatchNorm2d,
        impl: str = "fused",
    ):
        super().__init__()
        if radix < 1 or groups < 1:
            raise ValueError(f"radix and groups must be >= 1, got radix={radix}, groups={groups}")
        if in_channels % (groups * radix) != 0 or channels % groups != 0:
            raise ValueError(
                f"in_channels ({in_channels}) must be divisible by groups*radix ({groups * radix}) and channels "
                f"({channels}) by groups ({groups}): the conv has groups*radix groups"
            )
        norm = build_norm_layer(norm_layer)
        inter = max(channels * radix // reduction_factor, 32)
        self.radix = radix
        self.cardinality = groups
        self.channels = channels
        self.impl = check_impl(impl)
        self.conv = nn.Conv2d(
            in_channels,
            channels * radix,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups * radix,
            bias=False,
        )
        self.bn0 = norm(channels * radix)
        self.fc1 = nn.Conv2d(channels, inter, 1, groups=groups)
        self.bn1 = norm(inter)
        self.fc2 = nn.Conv2d(inter, channels * radix, 1, groups=groups)
        self.relu = nn.ReLU(inplace=True)

    def _check_bn1_batch(self, batch: int) -> None:
        # A SyncBatchNorm over several processes gathers the statistics across them: batch 1 per process is fine.
        if batch == 1 and batch_statistics_are_local(self.bn1):
            raise ValueError(
                "SplitAttentionConv2d: batch size 1 in training mode cannot be normalized by bn1. bn1 normalizes "
                f"the pooled attention vector of shape [1, {self.bn1.num_features}, 1, 1], which has a single value "
                "per channel, so batch statistics are undefined. Use a batch of at least 2 per process, keep the "
                "norm layers in eval mode (norm_eval=True, or norm_layer='frozen_bn'), or use a norm that does not "
                "need batch statistics (norm_layer='gn')."
            )

    def _norm_relu(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "fused":
            return batch_norm_act(norm, x)  # one fused op for a batch-statistics BatchNorm
        return self.relu(norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)  # (B, R*C, H, W), radix-major
        if self.impl == "fused":
            params = [*self.fc1.parameters(), *self.bn1.parameters(), *self.fc2.parameters()]
            if ops.norm_split_attention_applies(self.bn0, x, params):
                # Training with batch statistics: u = ReLU(bn0(x)) is applied on the fly by the split-attention
                # kernels, never written nor saved (ops.norm_split_attention).
                self._check_bn1_batch(x.shape[0])
                attention = lambda gap: self._attention(gap, x.dtype)  # noqa: E731
                return ops.norm_split_attention(self.bn0, x, self.radix, self.cardinality, attention, params)
        u = self._norm_relu(self.bn0, x)
        self._check_bn1_batch(u.shape[0])
        if self.impl == "fused":
            # One autograd node for pool -> attention -> combine (grad of u written once), see ops.split_attention.
            params = [*self.fc1.parameters(), *self.bn1.parameters(), *self.fc2.parameters()]
            attention = lambda gap: self._attention(gap, u.dtype)  # noqa: E731
            return ops.split_attention(u, self.radix, self.cardinality, attention, params)
        gap = reference.split_attention_pool(u, self.radix)  # (B, C)
        logits = self._attention(gap, u.dtype)
        return reference.split_attention_combine(u, logits, self.radix, self.cardinality)  # (B, C, H, W)

    def _attention(self, gap: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, C) pooled features -> (B, R*C, 1, 1) cardinal-major logits in `dtype`."""
        z = self._norm_relu(self.bn1, self.fc1(gap.view(gap.shape[0], gap.shape[1], 1, 1)))  # (B, inter, 1, 1)
        # Under autocast a norm that runs in fp32 (GroupNorm) leaves u in fp32 while the 1x1 convs return bf16/fp16.
        return self.fc2(z).to(dtype)

    @torch.no_grad()
    def fuse_norms(self) -> None:
        """Folds bn0 into conv and bn1 into fc1 where the norm allows it (eval-mode BN, FrozenBN); see fold_norm."""
        fused = fold_norm_into_conv(self.conv, self.bn0)
        if fused is not None:
            self.conv, self.bn0 = fused, nn.Identity()
        fused = fold_norm_into_conv(self.fc1, self.bn1)
        if fused is not None:
            self.fc1, self.bn1 = fused, nn.Identity()

    def extra_repr(self) -> str:
        return f"radix={self.radix}, cardinality={self.cardinality}, impl={self.impl!r}"
