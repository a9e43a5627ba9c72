"""ResNeSt backbones: ResNet-D (deep stem, avg-down shortcuts) with split-attention 3x3 convolutions.

Parameter names follow the official ResNeSt / timm checkpoints (``conv1.{0,1,3,4,6}``, ``bn1``,
``layer{1-4}.{i}.{conv1,bn1,conv2.{conv,bn0,fc1,bn1,fc2},conv3,bn3,downsample.{1,2}}``, ``fc``), so their
weights load with ``load_state_dict`` (or ``resnest_cuda.load_pretrained`` for detector layouts).
"""

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .batch_norm import batch_norm_act, memory_format_of
from .norm import NormLayer, build_norm_layer, fold_norm_into_conv, is_norm
from .splat import SplitAttentionConv2d, check_impl

__all__ = [
    "Bottleneck",
    "ResNeSt",
    "resnest14",
    "resnest26",
    "resnest50",
    "resnest101",
    "resnest200",
    "resnest269",
]

STAGE_PLANES = (64, 128, 256, 512)
STAGE_STRIDES = (4, 8, 16, 32)  # output stride of layer1..layer4 relative to the input


class _AvgPool(torch.autograd.Function):
    """avg_pool2d (count_include_pad, floor mode) that keeps only its input's shape for backward. torch's saves the
    input itself, which in a bottleneck is the split-attention output: nothing else keeps it, and the backward of an
    average pool reads only its shape."""

    @staticmethod
    def forward(ctx, x, kernel: int, stride: int, padding: int):
        ctx.like = (x.shape, x.dtype, x.device, memory_format_of(x))
        ctx.args = (kernel, stride, padding)
        return nn.functional.avg_pool2d(x, kernel, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        return _AvgPoolBackward.apply(grad, ctx.like, ctx.args), None, None, None


class _AvgPoolBackward(torch.autograd.Function):
    """The average pool's backward (linear in grad; its own backward is the pool), differentiable to any order."""

    @staticmethod
    def forward(ctx, grad, like, args):
        ctx.args = args
        shape, dtype, device, memory_format = like
        kernel, stride, padding = args
        # Only the sizes and layout of `self` are read.
        template = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
        return torch.ops.aten.avg_pool2d_backward(grad, template, [kernel] * 2, [stride] * 2, [padding] * 2, False,
                                                  True, None)

    @staticmethod
    def backward(ctx, grad_grad):
        kernel, stride, padding = ctx.args
        return nn.functional.avg_pool2d(grad_grad, kernel, stride, padding), None, None


def _avd(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The bottleneck's AvgPool2d(3, stride, 1) through _AvgPool (nn.Identity for stride 1 as is)."""
    plain = (
        isinstance(pool, nn.AvgPool2d)
        and all(isinstance(v, int) for v in (pool.kernel_size, pool.stride, pool.padding))
        and not pool.ceil_mode
        and pool.count_include_pad
        and pool.divisor_override is None
    )
    if plain and torch.is_grad_enabled() and x.requires_grad:
        return _AvgPool.apply(x, pool.kernel_size, pool.stride, pool.padding)
    return pool(x)


def avg_down_shortcut(in_channels: int, out_channels: int, stride: int, norm: NormLayer) -> nn.Sequential:
    """ResNet-D shortcut: AvgPool(stride) (identity when stride is 1) -> 1x1 conv (no bias) -> norm.

    Indices 1 and 2 are the checkpoint names ``downsample.1`` (conv) and ``downsample.2`` (norm).
    """
    pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    return nn.Sequential(pool, nn.Conv2d(in_channels, out_channels, 1, bias=False), norm(out_channels))


class Bottleneck(nn.Module):
    """ResNeSt bottleneck: ``[B, in_channels, H, W] -> [B, 4*planes, H/stride, W/stride]``.

    conv1 1x1 -> bn1 -> ReLU -> split-attention 3x3 (stride 1) -> AvgPool2d(3, stride, 1) when stride > 1
    ("avd": attention runs before downsampling) -> conv3 1x1 -> bn3 -> + shortcut -> ReLU.
    ``avd_first=True`` pools before the split-attention conv instead (the 4s2x40d / 1s4x24d ablation models).
    ``downsample`` is the shortcut module (None for identity). ``with_cp`` recomputes the block in backward
    (torch.utils.checkpoint, non-reentrant) to save activation memory; BatchNorm running statistics are then
    updated twice per step (once more during the recomputation).
    With ``impl="fused"`` each norm -> ReLU and bn3 -> + shortcut -> ReLU is one fused op
    (resnest_cuda.batch_norm) when the norm normalises with batch statistics; ``impl="reference"`` runs plain
    PyTorch modules throughout.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        radix: int = 2,
        cardinality: int = 1,
        bottleneck_width: int = 64,
        norm_layer: str | NormLayer = nn.BatchNorm2d,
        with_cp: bool = False,
        impl: str = "fused",
        avd_first: bool = False,
    ):
        super().__init__()
        norm = build_norm_layer(norm_layer)
        width = int(planes * (bottleneck_width / 64.0)) * cardinality
        self.with_cp = with_cp
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = SplitAttentionConv2d(
            width, width, 3, stride=1, padding=1, groups=cardinality, radix=radix, norm_layer=norm, impl=impl
        )
        self.avd_first = avd_first
        self.avd = nn.AvgPool2d(3, stride, padding=1) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.fused_norms = impl == "fused"

    def _residual(self, x: torch.Tensor, shortcut_input: torch.Tensor | None = None, aliases: int = 1):
        if self.fused_norms:
            out = batch_norm_act(self.bn1, self.conv1(x))
        else:
            out = self.relu(self.bn1(self.conv1(x)))
        if self.fused_norms:  # the pool after split attention keeps no copy of its input for backward
            out = self.conv2(_avd(self.avd, out)) if self.avd_first else _avd(self.avd, self.conv2(out))
        else:
            out = self.conv2(self.avd(out)) if self.avd_first else self.avd(self.conv2(out))
        shortcut_input = x if shortcut_input is None else shortcut_input
        shortcut = shortcut_input if self.downsample is None else self.downsample(shortcut_input)
        if self.fused_norms:
            return batch_norm_act(self.bn3, self.conv3(out), shortcut, aliases=aliases)
        y = self.relu(self.bn3(self.conv3(out)) + shortcut)
        return y if aliases == 1 else (y,) * aliases

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and torch.is_grad_enabled():
            return checkpoint(self._residual, x, use_reentrant=False)
        return self._residual(x)

    def forward_aliased(self, x: torch.Tensor, shortcut_input: torch.Tensor, aliases: int):
        """The block on x (conv1) and shortcut_input (the shortcut), aliases of one tensor, returning `aliases`
        aliases of the output (batch_norm_act): the input's two gradients, and the output's for each consumer,
        reach the fused BatchNorm backward apart and are summed in its reduction. Not with with_cp."""
        return self._residual(x, shortcut_input, aliases)

    @torch.no_grad()
    def fuse_norms(self) -> None:
        """Folds bn1, bn3, the split-attention norms and the shortcut norm into their convs where possible."""
        _fold_pair(self, "conv1", "bn1")
        _fold_pair(self, "conv3", "bn3")
        self.conv2.fuse_norms()
        if isinstance(self.downsample, nn.Sequential) and len(self.downsample) == 3:
            _fold_pair(self.downsample, "1", "2")


def _fold_pair(parent: nn.Module, conv_name: str, norm_name: str) -> None:
    fused = fold_norm_into_conv(getattr(parent, conv_name), getattr(parent, norm_name))
    if fused is not None:
        setattr(parent, conv_name, fused)
        setattr(parent, norm_name, nn.Identity())


def deep_stem(in_channels: int, stem_width: int, norm: NormLayer) -> nn.Sequential:
    """Three 3x3 convs (stride 2, 1, 1) to ``2*stem_width`` channels; the last one's norm is ``ResNeSt.bn1``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, stem_width, 3, stride=2, padding=1, bias=False),
        norm(stem_width),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_width, stem_width, 3, stride=1, padding=1, bias=False),
        norm(stem_width),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_width, stem_width * 2, 3, stride=1, padding=1, bias=False),
    )


class ResNeSt(nn.Module):
    """ResNeSt classifier (``num_classes`` int) or feature backbone (``num_classes=None``).

    Input ``[B, in_channels, H, W]`` float, NCHW or channels_last (the layout is kept throughout).
    Classifier: returns logits ``[B, num_classes]``. Backbone: returns the outputs of the stages listed in
    ``out_indices`` (0 = layer1 ... 3 = layer4), ``[B, out_channels[i], H/strides[i], W/strides[i]]``.

    Args:
        layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNeSt-50.
        stem_width: width of the first two stem convs; the stem outputs ``2*stem_width`` channels.
        radix, cardinality, bottleneck_width: split-attention splits R, groups K, and width per group
            (the 3x3 conv of a stage with ``planes`` has ``planes*bottleneck_width/64*cardinality`` channels).
        num_classes: classifier outputs (global average pool -> ``fc``), or None for a feature backbone.
        out_indices: stages whose outputs the backbone returns.
        frozen_stages: -1 none; 0 the stem; i >= 1 the stem and layer1..layer_i. Frozen parameters have
            ``requires_grad=False`` and frozen modules stay in eval mode under ``model.train()``.
        norm_layer: callable ``f(channels) -> module`` or "bn", "syncbn", "gn" (32 groups), "frozen_bn".
        norm_eval: keep every norm layer in eval mode (running statistics) during training.
        with_cp: gradient checkpointing per block.
        impl: "fused" (resnest_cuda ops) or "reference" (plain PyTorch) split attention.
        avd_first: downsample before the split-attention conv (timm's resnest50d_4s2x40d / 1s4x24d).
    """

    def __init__(
        self,
        layers: Sequence[int],
        stem_width: int = 32,
        radix: int = 2,
        cardinality: int = 1,
        bottleneck_width: int = 64,
        num_classes: int | None = 1000,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_layer: str | NormLayer = "bn",
        norm_eval: bool = False,
        with_cp: bool = False,
        impl: str = "fused",
        in_channels: int = 3,
        avd_first: bool = False,
    ):
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must list 4 positive block counts, got {tuple(layers)}")
        if not out_indices or any(i not in range(4) for i in out_indices):
            raise ValueError(f"out_indices must be a non-empty subset of (0, 1, 2, 3), got {tuple(out_indices)}")
        if frozen_stages not in range(-1, 5):
            raise ValueError(f"frozen_stages must be in -1..4, got {frozen_stages}")
        self.impl = check_impl(impl)
        norm = build_norm_layer(norm_layer)
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.fused = False
        self.out_channels = [STAGE_PLANES[i] * Bottleneck.expansion for i in self.out_indices]
        self.strides = [STAGE_STRIDES[i] for i in self.out_indices]

        self.conv1 = deep_stem(in_channels, stem_width, norm)
        self.bn1 = norm(stem_width * 2)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        block_args = dict(
            radix=radix,
            cardinality=cardinality,
            bottleneck_width=bottleneck_width,
            norm_layer=norm,
            with_cp=with_cp,
            impl=impl,
            avd_first=avd_first,
        )
        channels = stem_width * 2
        for i, (planes, blocks) in enumerate(zip(STAGE_PLANES, layers)):
            stage = self._make_stage(channels, planes, blocks, 1 if i == 0 else 2, norm, block_args)
            self.add_module(f"layer{i + 1}", stage)
            channels = planes * Bottleneck.expansion
        self.fc = nn.Linear(channels, num_classes) if num_classes is not None else None
        self._init_weights()
        self._freeze_stages()
        self.train()  # frozen stages start in eval mode

    @staticmethod
    def _make_stage(in_channels, planes, blocks, stride, norm, block_args) -> nn.Sequential:
        out_channels = planes * Bottleneck.expansion
        downsample = avg_down_shortcut(in_channels, out_channels, stride, norm)
        layers = [Bottleneck(in_channels, planes, stride, downsample, **block_args)]
        layers += [Bottleneck(out_channels, planes, 1, None, **block_args) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1, *self.stages()[: self.frozen_stages]]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)

    def freeze_stages(self, frozen_stages: int) -> "ResNeSt":
        """Freezes more stages after construction (as ``frozen_stages`` does), e.g. once pretrained weights are
        loaded into a model built with ``frozen_stages=-1``. Stages frozen before stay frozen."""
        if frozen_stages not in range(-1, 5):
            raise ValueError(f"frozen_stages must be in -1..4, got {frozen_stages}")
        self.frozen_stages = max(self.frozen_stages, frozen_stages)
        self._freeze_stages()
        return self.train(self.training)

    def train(self, mode: bool = True) -> "ResNeSt":
        """Sets train/eval mode, then puts frozen stages (and with ``norm_eval`` every norm layer) back in eval."""
        if mode and self.fused:
            raise RuntimeError("this model was fused for inference (norms folded into convs); it cannot train")
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:
                for module in self.modules():
                    if is_norm(module):
                        module.eval()
        return self

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, 2*stem_width, H/4, W/4]``."""
        if self.impl != "fused":
            return self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stem = self.conv1  # conv, norm, ReLU, conv, norm, ReLU, conv: each norm -> ReLU fused
        x = batch_norm_act(stem[1], stem[0](x))
        x = batch_norm_act(stem[4], stem[3](x))
        return self.maxpool(batch_norm_act(self.bn1, stem[6](x)))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the stages in ``out_indices``; stages after the last one needed are skipped.

        In eager training with the fused norms each block output goes to its consumers (the next block's conv1 and
        shortcut, the neck) as separate aliases (Bottleneck.forward_aliased), so that the gradients they receive
        are summed inside the fused BatchNorm backward instead of by autograd adds; the values are the same."""
        x = self.forward_stem(x)
        stages = self.stages()[: max(self.out_indices) + 1]
        aliased = (
            self.impl == "fused"
            and torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and not any(block.with_cp for stage in stages for block in stage)
        )
        outs = []
        if not aliased:
            for i, stage in enumerate(stages):
                x = stage(x)
                if i in self.out_indices:
                    outs.append(x)
            return outs
        main = shortcut = x
        for i, stage in enumerate(stages):
            for j, block in enumerate(stage):
                feature = j == len(stage) - 1 and i in self.out_indices
                following = not (i == len(stages) - 1 and j == len(stage) - 1)  # a next block reads it
                aliases = 2 * following + feature
                y = block.forward_aliased(main, shortcut, aliases)
                ys = (y,) if aliases == 1 else y
                if following:
                    main, shortcut = ys[0], ys[1]
                if feature:
                    outs.append(ys[-1])
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.fc is None:
            return self.forward_features(x)
        x = self.forward_stem(x)
        for stage in self.stages():
            x = stage(x)
        return self.fc(torch.flatten(x.mean(dim=(2, 3)), 1))  # global average pool -> (B, C) -> (B, classes)

    @torch.no_grad()
    def fuse_for_inference(self) -> "ResNeSt":
        """Folds every foldable norm into the conv before it and switches split attention to the fused ops.

        Needs eval mode. Folds eval-mode BatchNorm/SyncBatchNorm and FrozenBatchNorm2d (GroupNorm stays): the
        stem pairs ``conv1.0/1``, ``conv1.3/4``, ``conv1.6/bn1``; per block ``conv1/bn1``, ``conv3/bn3``,
        ``conv2.conv/bn0``, ``conv2.fc1/bn1`` and ``downsample.1/2``. Folded norms become ``nn.Identity``, so the
        state dict changes; the model can no longer train. Returns self.
        """
        if self.training:
            raise RuntimeError("fuse_for_inference() needs eval mode: call model.eval() first")
        _fold_pair(self.conv1, "0", "1")
        _fold_pair(self.conv1, "3", "4")
        fused = fold_norm_into_conv(self.conv1[6], self.bn1)
        if fused is not None:
            self.conv1[6], self.bn1 = fused, nn.Identity()
        for stage in self.stages():
            for block in stage:
                block.fuse_norms()
                block.conv2.impl = "fused"
        self.fused = True
        return self


def resnest14(**kwargs) -> ResNeSt:
    """ResNeSt-14: blocks (1, 1, 1, 1), stem width 32. Keyword arguments go to ``ResNeSt``."""
    return ResNeSt((1, 1, 1, 1), stem_width=32, **kwargs)


def resnest26(**kwargs) -> ResNeSt:
    """ResNeSt-26: blocks (2, 2, 2, 2), stem width 32."""
    return ResNeSt((2, 2, 2, 2), stem_width=32, **kwargs)


def resnest50(**kwargs) -> ResNeSt:
    """ResNeSt-50: blocks (3, 4, 6, 3), stem width 32."""
    return ResNeSt((3, 4, 6, 3), stem_width=32, **kwargs)


def resnest101(**kwargs) -> ResNeSt:
    """ResNeSt-101: blocks (3, 4, 23, 3), stem width 64."""
    return ResNeSt((3, 4, 23, 3), stem_width=64, **kwargs)


def resnest200(**kwargs) -> ResNeSt:
    """ResNeSt-200: blocks (3, 24, 36, 3), stem width 64."""
    return ResNeSt((3, 24, 36, 3), stem_width=64, **kwargs)


def resnest269(**kwargs) -> ResNeSt:
    """ResNeSt-269: blocks (3, 30, 48, 8), stem width 64."""
    return ResNeSt((3, 30, 48, 8), stem_width=64, **kwargs)
