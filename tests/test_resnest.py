import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import resnest_cuda
from resnest_cuda import FrozenBatchNorm2d, ResNeSt, resnest14, resnest26, resnest50
from resnest_cuda.norm import SyncBatchNorm

from .test_splat import _randomize_norms

DEPTHS = {
    "resnest14": ((1, 1, 1, 1), 32),
    "resnest26": ((2, 2, 2, 2), 32),
    "resnest50": ((3, 4, 6, 3), 32),
    "resnest101": ((3, 4, 23, 3), 64),
    "resnest200": ((3, 24, 36, 3), 64),
    "resnest269": ((3, 30, 48, 8), 64),
}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def expected_resnest_keys(blocks, with_fc=True):
    """The official ResNeSt / timm state-dict keys (SPEC §4), in module order."""
    keys = ["conv1.0.weight", *(f"conv1.1.{b}" for b in BN), "conv1.3.weight", *(f"conv1.4.{b}" for b in BN)]
    keys += ["conv1.6.weight", *(f"bn1.{b}" for b in BN)]
    for stage, n in enumerate(blocks, start=1):
        for i in range(n):
            p = f"layer{stage}.{i}."
            keys += [p + "conv1.weight", *(p + f"bn1.{b}" for b in BN), p + "conv2.conv.weight"]
            keys += [p + f"conv2.bn0.{b}" for b in BN]
            keys += [p + "conv2.fc1.weight", p + "conv2.fc1.bias", *(p + f"conv2.bn1.{b}" for b in BN)]
            keys += [p + "conv2.fc2.weight", p + "conv2.fc2.bias", p + "conv3.weight", *(p + f"bn3.{b}" for b in BN)]
            if i == 0:
                keys += [p + "downsample.1.weight", *(p + f"downsample.2.{b}" for b in BN)]
    return keys + (["fc.weight", "fc.bias"] if with_fc else [])


def test_resnest50_state_dict_keys_match_the_official_names():
    assert list(resnest50().state_dict()) == expected_resnest_keys((3, 4, 6, 3))
    assert list(resnest50(num_classes=None).state_dict()) == expected_resnest_keys((3, 4, 6, 3), with_fc=False)


@pytest.mark.parametrize("name", list(DEPTHS))
def test_depths_shapes_and_strides(name):
    blocks, stem_width = DEPTHS[name]
    model = getattr(resnest_cuda, name)(num_classes=None).eval()
    assert [len(s) for s in model.stages()] == list(blocks)
    assert model.conv1[0].out_channels == stem_width and model.bn1.num_features == 2 * stem_width
    assert model.out_channels == [256, 512, 1024, 2048] and model.strides == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 256, 8, 8), (2, 512, 4, 4), (2, 1024, 2, 2), (2, 2048, 1, 1)]


def test_classifier_and_out_indices():
    model = resnest14(num_classes=7).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    backbone = resnest14(num_classes=None, out_indices=(1, 3))
    assert backbone.out_channels == [512, 2048] and backbone.strides == [8, 32] and not hasattr(backbone.fc, "weight")
    assert [f.shape[1:] for f in backbone(torch.randn(2, 3, 64, 48))] == [(512, 8, 6), (2048, 2, 2)]


def test_radix_cardinality_width_variant():
    # timm's resnest50d_4s2x40d shape of block: R=4, K=2, 40 channels per group -> width 80 in layer1.
    model = ResNeSt((1, 1, 1, 1), radix=4, cardinality=2, bottleneck_width=40, num_classes=5)
    assert model.layer1[0].conv2.conv.out_channels == 4 * 80 and model.layer1[0].conv2.conv.groups == 8
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "build,kwargs",
    [(resnest14, {}), (resnest26, {}), (resnest14, {"radix": 1}), (resnest14, {"radix": 4, "cardinality": 2})],
)
def test_fused_matches_reference_model(build, kwargs):
    torch.manual_seed(0)
    fused = build(num_classes=10, impl="fused", **kwargs).double()
    ref = build(num_classes=10, impl="reference", **kwargs).double()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    outs = [m(x) for m in (fused, ref)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-9, atol=1e-9)
    for out in outs:
        out.square().sum().backward()
    g_fused, g_ref = _grads(fused), _grads(ref)
    assert g_fused.keys() == g_ref.keys() and len(g_fused) == len(list(fused.parameters()))
    for name in g_fused:
        # Batch-2 BatchNorm on 1x1 maps amplifies float64 rounding (gradients reach 1e6): compare against each
        # tensor's own scale. fc1.bias gradients are ~0 by construction (bn1 cancels them): hence the max(., 1).
        atol = 1e-7 * max(g_ref[name].abs().max().item(), 1.0)
        torch.testing.assert_close(g_fused[name], g_ref[name], rtol=1e-6, atol=atol, msg=name)


def test_frozen_stages_no_grad_and_eval_mode():
    model = resnest14(num_classes=None, frozen_stages=1)
    frozen = [model.conv1, model.bn1, model.layer1]
    model.train()
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
        assert all(not m.training for m in module.modules())
    assert model.layer2.training and model.layer2[0].bn1.training
    stats = model.layer1[0].bn1.running_mean.clone()
    sum(f.sum() for f in model(torch.randn(2, 3, 32, 32))).backward()
    torch.testing.assert_close(model.layer1[0].bn1.running_mean, stats, rtol=0, atol=0)  # eval BN: no update
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert all(p.grad is not None for p in model.layer2.parameters())


def test_norm_eval_keeps_every_norm_in_eval():
    model = resnest14(num_classes=None, norm_eval=True).train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.training for m in norms)
    assert model.layer1[0].conv2.training  # only the norms change mode
    model(torch.randn(1, 3, 32, 32))  # batch 1 works: BN uses running statistics


@pytest.mark.parametrize("norm", ["bn", "syncbn", "gn", "frozen_bn", nn.BatchNorm2d])
def test_norm_layer_choices_train(norm):
    model = resnest14(num_classes=3, norm_layer=norm).train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()


def test_syncbn_without_process_group_behaves_as_batchnorm():
    bn, sync = nn.BatchNorm2d(6), SyncBatchNorm(6)
    x = torch.randn(3, 6, 4, 4)
    torch.testing.assert_close(sync.train()(x), bn.train()(x))
    torch.testing.assert_close(sync.running_mean, bn.running_mean)
    torch.testing.assert_close(sync.eval()(x), bn.eval()(x))


def test_frozen_batchnorm_loads_batchnorm_and_matches_eval():
    bn = nn.BatchNorm2d(5)
    _randomize_norms(bn)
    frozen = FrozenBatchNorm2d(5)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is accepted and dropped
    x = torch.randn(2, 5, 3, 3).to(memory_format=torch.channels_last)
    out = frozen(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, bn.eval()(x))
    torch.testing.assert_close(out, F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias))


@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
def test_fuse_for_inference_keeps_eval_outputs(norm):
    # Folding is done in float64; with a float64 model the outputs agree to 1e-9 (relative and absolute).
    torch.manual_seed(0)
    model = resnest14(num_classes=10, norm_layer=norm, impl="reference").double().eval()
    _randomize_norms(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    expected = model(x)
    assert model.fuse_for_inference() is model
    assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in model.modules())
    assert all(block.conv2.impl == "fused" for stage in model.stages() for block in stage)
    torch.testing.assert_close(model(x), expected, rtol=1e-9, atol=1e-9)
    with pytest.raises(RuntimeError, match="fused for inference"):
        model.train()


def test_fuse_for_inference_needs_eval_and_skips_group_norm():
    with pytest.raises(RuntimeError, match="needs eval mode"):
        resnest14().fuse_for_inference()
    model = resnest14(num_classes=None, norm_layer="gn").eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    model.fuse_for_inference()
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) > 0
    for a, b in zip(model(x), expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("fuse", [False, True])
def test_channels_last_matches_nchw(fuse):
    torch.manual_seed(0)
    model = resnest14(num_classes=None).eval()
    if fuse:
        model.fuse_for_inference()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    for a, b in zip(out, ref):
        assert a.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if not fuse:  # folding a channels_last model keeps its conv weights channels_last
        model.fuse_for_inference()
        assert model.layer1[0].conv2.conv.weight.is_contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            for a, b in zip(model(x.to(memory_format=torch.channels_last)), ref):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_batch_one_training_error_from_model():
    with pytest.raises(ValueError, match="batch size 1 in training mode cannot be normalized by bn1"):
        resnest14().train()(torch.randn(1, 3, 32, 32))


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    plain = resnest14(num_classes=10).double()
    cp = resnest14(num_classes=10, with_cp=True).double()
    cp.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for model in (plain, cp):
        model(x).square().sum().backward()
    g_plain, g_cp = _grads(plain), _grads(cp)
    assert g_plain.keys() == g_cp.keys()
    for name in g_plain:
        torch.testing.assert_close(g_cp[name], g_plain[name], rtol=1e-10, atol=1e-12, msg=name)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="out_indices"):
        resnest14(out_indices=(4,))
    with pytest.raises(ValueError, match="frozen_stages"):
        resnest14(frozen_stages=5)
    with pytest.raises(ValueError, match="impl"):
        resnest14(impl="triton")
    with pytest.raises(ValueError, match="4 positive block counts"):
        ResNeSt((1, 1, 1))


@pytest.mark.parametrize("avd_first", [False, True])
def test_avd_position(avd_first):
    # Stride-2 blocks: split attention runs at the pre-downsampling resolution unless avd_first.
    model = resnest14(num_classes=None, avd_first=avd_first, out_indices=(1,)).eval()
    seen = []
    model.layer2[0].conv2.register_forward_hook(lambda m, inp, out: seen.append(tuple(out.shape[2:])))
    assert model(torch.randn(2, 3, 32, 32))[0].shape == (2, 512, 4, 4)
    assert seen == [(4, 4) if avd_first else (8, 8)]


def test_bottleneck_pool_keeps_only_the_shape_for_backward():
    """The avd pool after split attention (impl="fused") equals nn.AvgPool2d forward, backward (both layouts) and
    to second order, and the block saves less for backward than the same block with the plain modules."""
    from resnest_cuda.resnest import Bottleneck, _AvgPool

    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 3, 9, 7, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_(True)
        y = _AvgPool.apply(x, 3, 2, 1)
        ref = torch.nn.functional.avg_pool2d(x, 3, 2, 1)
        g = torch.randn_like(ref)
        assert torch.equal(y, ref)
        assert torch.equal(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref, x, g)[0])
        assert torch.autograd.gradgradcheck(lambda t: _AvgPool.apply(t, 3, 2, 1), (x,))

    def saved_bytes(impl):
        torch.manual_seed(0)
        block = Bottleneck(64, 16, stride=2, downsample=nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(64, 64, 1),
                                                                       nn.BatchNorm2d(64)), impl=impl)
        x = torch.randn(2, 64, 16, 16, requires_grad=True)
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = block(x)
        params = {p.untyped_storage().data_ptr() for p in block.parameters()}
        return out, sum(v for k, v in storages.items() if k not in params)

    fused_out, fused_saved = saved_bytes("fused")
    ref_out, ref_saved = saved_bytes("reference")
    torch.testing.assert_close(fused_out, ref_out, rtol=1e-5, atol=1e-5)
    assert fused_saved <= ref_saved - 2 * 16 * 16 * 16 * 4  # at least the split-attention output [2, 16, 16, 16]


class _AddCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten.add calls on 4-D tensors (the gradient sums autograd makes for a tensor with several
    consumers)."""

    def __init__(self):
        super().__init__()
        self.adds = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.add.Tensor and args[0].dim() == 4 and args[1].dim() == 4:
            self.adds += 1
        return func(*args, **(kwargs or {}))


def _features_step(model, x, aliased, monkeypatch):
    with monkeypatch.context() as m:
        if not aliased:  # every consumer reads the one output tensor: autograd sums their gradients
            def plain(self, main, shortcut, aliases):
                y = self._residual(main, shortcut)
                return y if aliases == 1 else (y,) * aliases

            m.setattr(resnest_cuda.resnest.Bottleneck, "forward_aliased", plain)
        x = x.detach().clone().requires_grad_(True)
        outs = model(x)
        counter = _AddCounter()
        with counter:
            sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)).sum() for o in outs).backward()
    grads = [x.grad] + [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return outs, grads, counter.adds


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_block_outputs_reach_their_consumers_as_aliases(layout, monkeypatch):
    """Eager training: each block output reaches the next conv1, the shortcut and the neck as aliases, whose
    gradients the fused BatchNorm backward sums itself. Outputs are bit for bit those of the plain chain, gradients
    equal to fp64 rounding, and the backward makes one 4-D add fewer per alias."""
    torch.manual_seed(0)
    model = resnest14(num_classes=None, out_indices=(0, 1, 2, 3), frozen_stages=1).double().train()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    outs_a, grads_a, adds_a = _features_step(model, x, True, monkeypatch)
    model.load_state_dict(state)
    outs_p, grads_p, adds_p = _features_step(model, x, False, monkeypatch)
    for a, b in zip(outs_a, outs_p):
        assert torch.equal(a, b)
    scale = max(g.abs().max().item() for g in grads_p)
    for a, b in zip(grads_a, grads_p):
        # atol: the split-attention fc1 biases feed a BatchNorm, so their true gradient is 0 (rounding noise).
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13 * scale)
    # resnest14: one block per stage; stages 2 and 3 feed a block's conv1 and shortcut and the neck (two adds each
    # in the plain chain, none aliased), stage 1 is frozen and stage 4 feeds the neck alone.
    assert adds_p - adds_a == 4


def test_aliases_are_not_used_with_checkpointing_or_without_gradients():
    model = resnest14(num_classes=None, out_indices=(0, 1, 2, 3), with_cp=True).train()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    outs = model(x)
    sum(o.sum() for o in outs).backward()  # the checkpointed blocks run on one input tensor, as before
    assert x.grad is not None and x.grad.abs().sum() > 0
    model = resnest14(num_classes=None, out_indices=(0, 1, 2, 3)).train()
    with torch.no_grad():
        assert all(o._base is None for o in model(x))
