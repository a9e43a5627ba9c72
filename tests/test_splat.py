import pytest
import torch
import torch.nn as nn

from resnest_cuda import FrozenBatchNorm2d, SplitAttentionConv2d, norm


def _randomize_norms(module: nn.Module) -> None:
    """Non-trivial affine parameters and running statistics, so that norm folding is actually exercised."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _pair(radix, cardinality, channels=8, **kwargs):
    torch.manual_seed(0)
    fused = SplitAttentionConv2d(8, channels, radix=radix, groups=cardinality, impl="fused", **kwargs).double()
    ref = SplitAttentionConv2d(8, channels, radix=radix, groups=cardinality, impl="reference", **kwargs).double()
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def test_submodules_shapes_and_names():
    m = SplitAttentionConv2d(16, 64, radix=2, groups=2)
    assert [k for k, _ in m.named_children() if k != "relu"] == ["conv", "bn0", "fc1", "bn1", "fc2"]
    assert m.conv.groups == 4 and m.conv.out_channels == 128 and m.conv.bias is None
    assert m.fc1.out_channels == 32 and m.fc1.groups == 2 and m.fc1.bias is not None  # max(64*2//4, 32)
    assert m.fc2.out_channels == 128 and m.fc2.groups == 2
    assert SplitAttentionConv2d(16, 256, radix=2).fc1.out_channels == 128
    assert m(torch.randn(2, 16, 5, 7)).shape == (2, 64, 5, 7)
    assert SplitAttentionConv2d(16, 64, stride=2)(torch.randn(2, 16, 6, 6)).shape == (2, 64, 3, 3)


@pytest.mark.parametrize("radix", [1, 2, 4])
def test_uniform_attention_averages_the_splits(radix):
    # With fc2 = 0 every logit is 0: softmax gives 1/R per split, sigmoid (R = 1) gives 1/2.
    m = SplitAttentionConv2d(8, 8, radix=radix).double().eval()
    nn.init.zeros_(m.fc2.weight)
    nn.init.zeros_(m.fc2.bias)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    u = m.relu(m.bn0(m.conv(x))).view(2, radix, 8, 5, 5)
    expected = u.mean(1) if radix > 1 else u[:, 0] * 0.5
    torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("radix", [1, 2, 4])
@pytest.mark.parametrize("cardinality", [1, 2])
def test_fused_matches_reference_forward_and_backward(radix, cardinality):
    fused, ref = _pair(radix, cardinality)
    x = torch.randn(3, 8, 6, 5, dtype=torch.float64)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = [m(xi) for m, xi in zip((fused, ref), xs)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(outs[0])
    for out in outs:
        out.backward(grad)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-10, atol=1e-10)
    for (name, p_fused), p_ref in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p_fused.grad, p_ref.grad, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_channels_last_matches_nchw(impl):
    torch.manual_seed(0)
    m = SplitAttentionConv2d(8, 16, radix=2, groups=2, impl=impl).eval()
    x = torch.randn(2, 8, 7, 6)
    out = m(x)
    out_cl = m(x.to(memory_format=torch.channels_last))
    if impl == "fused":
        assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out, rtol=1e-5, atol=1e-6)


def test_batch_one_training_gives_clear_error():
    m = SplitAttentionConv2d(4, 8).train()
    with pytest.raises(ValueError, match=r"batch size 1 in training mode.*\[1, 32, 1, 1\].*norm_layer='gn'"):
        m(torch.randn(1, 4, 5, 5))
    # The fixes the message names all work at batch 1.
    assert m.eval()(torch.randn(1, 4, 5, 5)).shape == (1, 8, 5, 5)
    frozen = SplitAttentionConv2d(4, 32, norm_layer="frozen_bn").train()
    assert frozen(torch.randn(1, 4, 5, 5)).shape == (1, 32, 5, 5)
    # GroupNorm(32, inter) needs inter > 32 at batch 1 (torch rejects one value per group): inter = 64 here.
    gn = SplitAttentionConv2d(4, 128, norm_layer="gn").train()
    assert gn(torch.randn(1, 4, 5, 5)).shape == (1, 128, 5, 5)


def test_batch_one_allowed_with_syncbn_over_several_processes(monkeypatch):
    m = SplitAttentionConv2d(4, 8, norm_layer="syncbn").train()
    with pytest.raises(ValueError, match="batch size 1"):
        m._check_bn1_batch(1)  # no process group: statistics are local
    monkeypatch.setattr(norm.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(norm.dist, "get_world_size", lambda group=None: 8)
    assert not norm.batch_statistics_are_local(m.bn1)
    m._check_bn1_batch(1)  # statistics gathered over 8 processes
    monkeypatch.setattr(norm.dist, "get_world_size", lambda group=None: 1)
    assert norm.batch_statistics_are_local(m.bn1)


@pytest.mark.parametrize("radix,cardinality", [(1, 1), (2, 2), (4, 1)])
def test_fuse_norms_keeps_eval_output(radix, cardinality):
    m = SplitAttentionConv2d(8, 8, radix=radix, groups=cardinality).double().eval()
    _randomize_norms(m)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    expected = m(x)
    m.fuse_norms()
    assert isinstance(m.bn0, nn.Identity) and isinstance(m.bn1, nn.Identity) and m.conv.bias is not None
    torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10)


def test_group_norm_under_bf16_autocast():
    # GroupNorm runs in fp32 under autocast while the 1x1 convs run in bf16; the logits follow u's dtype.
    m = SplitAttentionConv2d(8, 32, norm_layer="gn").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(2, 8, 5, 5))
    assert out.shape == (2, 32, 5, 5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="impl must be one of"):
        SplitAttentionConv2d(4, 8, impl="cuda")
    with pytest.raises(ValueError, match=r"divisible by groups\*radix"):
        SplitAttentionConv2d(6, 8, groups=2, radix=2)
    with pytest.raises(ValueError, match="norm_layer must be a callable or one of"):
        SplitAttentionConv2d(4, 8, norm_layer="layernorm")


def test_fused_training_under_torch_compile_fullgraph():
    """Under torch.compile the fused module traces as the two registered ops (no graph break), forward and
    backward, and matches eager (which runs the single-node autograd path)."""
    torch.manual_seed(0)
    module = SplitAttentionConv2d(16, 16, radix=2, groups=2)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    eager_out = module(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), [x, module.fc1.weight, module.conv.weight])
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), [x, module.fc1.weight, module.conv.weight])
    torch.testing.assert_close(out, eager_out)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)


def test_fused_norms_add_no_backward_work_to_the_attention_branch():
    """The split-attention tail differentiates its attention branch itself; the outer backward must not run that
    branch again (a norm that materialised zeros for its undefined gradient would add a conv backward and a pool
    backward per block)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    m = SplitAttentionConv2d(16, 16, radix=2).train()
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    y = m(x)
    with Ops() as ops_seen:
        y.sum().backward()
    assert "resnest_cuda.split_attention_pool_backward" not in ops_seen.names
    assert "aten.zeros" not in ops_seen.names
    assert ops_seen.names.count("aten.convolution_backward") == 3  # fc2, fc1 (in the tail's backward), conv
