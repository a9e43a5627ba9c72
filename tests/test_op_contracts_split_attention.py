"""Split-attention contracts: double backward, retained graphs, torch.func, saved-tensor hooks, gradient layouts,
on every device (CUDA cases skip without a GPU)."""

import pytest
import torch

import resnest_cuda
from resnest_cuda import SplitAttentionConv2d, reference
from tests.helpers import requires_cuda

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def inputs(device, batch=2, radix=2, channels=4, h=3, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, radix * channels, h, w, generator=g, dtype=torch.float64).to(device)
    logits = torch.randn(batch, radix * channels, generator=g, dtype=torch.float64).to(device)
    return x.requires_grad_(), logits.requires_grad_()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("radix, cardinality", [(1, 1), (2, 2), (3, 1)])
def test_gradgradcheck_combine_and_pool(device, radix, cardinality):
    x, logits = inputs(device, radix=radix)
    combine = lambda a, b: resnest_cuda.split_attention_combine(a, b, radix, cardinality)  # noqa: E731
    assert torch.autograd.gradgradcheck(combine, (x, logits))
    assert torch.autograd.gradgradcheck(lambda a: resnest_cuda.split_attention_pool(a, radix), (x,))


def block_pair(device, seed=0):
    """A fused and a reference SplitAttentionConv2d with the same weights (fp64, training-mode BN)."""
    torch.manual_seed(seed)
    fused = SplitAttentionConv2d(8, 8, radix=2, groups=2, impl="fused").double().to(device)
    ref = SplitAttentionConv2d(8, 8, radix=2, groups=2, impl="reference").double().to(device)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def gradient_penalty_grads(module, x):
    """Second-order gradients: d/d(params, x) of the squared norm of d(loss)/d(params, x)."""
    x = x.clone().requires_grad_()
    params = list(module.parameters())
    loss = (module(x) ** 2).mean()
    first = torch.autograd.grad(loss, [x, *params], create_graph=True)
    penalty = sum(g.square().sum() for g in first)
    return torch.autograd.grad(penalty, [x, *params], allow_unused=True), first


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_create_graph_through_block_matches_reference(device, layout):
    fused, ref = block_pair(device)
    x = torch.randn(3, 8, 5, 6, dtype=torch.float64, device=device).contiguous(memory_format=FORMATS[layout])
    second_f, first_f = gradient_penalty_grads(fused, x)
    second_r, first_r = gradient_penalty_grads(ref, x)
    for a, b in zip(first_f, first_r):
        torch.testing.assert_close(a, b)
    norm_r = torch.sqrt(sum(g.square().sum() for g in second_r if g is not None))
    assert norm_r > 0
    for a, b in zip(second_f, second_r):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0
        else:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_kernels_refuse_double_backward(device):
    x, logits = inputs(device)
    grad_out = torch.randn(2, 4, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    ops = torch.ops.resnest_cuda
    for out in [
        ops.split_attention_combine_backward(grad_out, x, logits, 2, 1)[0],
        ops.split_attention_logits_backward(grad_out, x, logits, 2, 1),
        ops.split_attention_input_backward(grad_out, logits, torch.randn(2, 4, dtype=torch.float64, device=device),
                                           2, 1),
    ]:
        with pytest.raises(RuntimeError, match="double backward is not supported"):
            out.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_retain_graph_then_second_backward(device, impl):
    fused, ref = block_pair(device)
    module = fused if impl == "fused" else ref
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64, device=device, requires_grad=True)
    loss = module(x).square().sum()
    loss.backward(retain_graph=True)
    first = [x.grad.clone()] + [p.grad.clone() for p in module.parameters()]
    loss.backward()
    for a, b in zip(first, [x.grad] + [p.grad for p in module.parameters()]):
        torch.testing.assert_close(b, 2 * a)


@pytest.mark.parametrize("device", DEVICES)
def test_saved_tensors_hooks_are_applied(device):
    """Packing hooks see the tensors the fused node saves; the gradients equal those without hooks."""
    fused, _ = block_pair(device)
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64, device=device, requires_grad=True)
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t.clone()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fused(x)
    assert (2, 8, 4, 4) in packed  # the activation saved by the fused split-attention node
    grads = torch.autograd.grad(out.square().sum(), [x, *fused.parameters()])
    expected = torch.autograd.grad(fused(x).square().sum(), [x, *fused.parameters()])
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b)
    with torch.autograd.graph.save_on_cpu():
        out = fused(x)
    torch.testing.assert_close(torch.autograd.grad(out.square().sum(), x)[0], expected[0])


@pytest.mark.parametrize(
    "transform",
    [torch.func.grad, torch.func.vmap, torch.func.jacrev, lambda f: lambda t: torch.func.jvp(f, (t,), (t,))],
    ids=["grad", "vmap", "jacrev", "jvp"],
)
@pytest.mark.parametrize("op", ["pool", "combine", "split_attention", "roi_align", "block"])
def test_torch_func_transforms_are_refused_clearly(transform, op):
    """torch.func is not supported: a clear error that names the supported alternatives, on every op."""
    x, logits = inputs("cpu")
    w = torch.randn(8, 4, dtype=torch.float64)
    rois = torch.tensor([[0.0, 0, 0, 2, 2]], dtype=torch.float64)
    block = block_pair("cpu")[0].eval()  # eval: torch.func refuses BatchNorm's running-statistics update anyway
    fns = {
        "pool": lambda t: resnest_cuda.split_attention_pool(t, 2).sum(),
        "combine": lambda t: resnest_cuda.split_attention_combine(t, logits.detach(), 2, 1).sum(),
        "split_attention": lambda t: resnest_cuda.split_attention(t, 2, 1, lambda g: g @ w.T, [w]).sum(),
        "roi_align": lambda t: resnest_cuda.roi_align(t, rois, 2).sum(),
        "block": lambda t: block(t).sum(),
    }
    arg = x.detach().unsqueeze(0) if transform is torch.func.vmap else x.detach()  # vmap maps over a new dim 0
    with pytest.raises(RuntimeError, match=r"torch\.func transforms .* are not supported.*resnest_cuda\.reference"):
        transform(fns[op])(arg)


def test_reference_impl_works_under_torch_func():
    """The documented alternative: the reference block under torch.func.grad equals autograd on the fused one."""
    fused, ref = (m.eval() for m in block_pair("cpu"))
    xin = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    f = lambda p: torch.func.functional_call(ref, p, (xin,)).square().sum()  # noqa: E731
    got = torch.func.grad(f)(dict(ref.named_parameters()))
    expected = torch.autograd.grad(fused(xin).square().sum(), list(fused.parameters()))
    for (name, _), e in zip(fused.named_parameters(), expected):
        torch.testing.assert_close(got[name], e)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("grad_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("path", ["fused_node", "two_ops"])
def test_gradient_has_the_layout_of_x(device, x_layout, grad_layout, path):
    x, _ = inputs(device, h=3, w=5)
    x = x.detach().contiguous(memory_format=FORMATS[x_layout]).requires_grad_()
    w = torch.randn(8, 4, dtype=torch.float64, device=device, requires_grad=True)
    attention = lambda gap: gap @ w.T  # noqa: E731
    if path == "fused_node":
        out = resnest_cuda.split_attention(x, 2, 2, attention, [w])
    else:
        out = resnest_cuda.split_attention_combine(x, attention(resnest_cuda.split_attention_pool(x, 2)), 2, 2)
    g = torch.randn(out.shape, dtype=out.dtype, device=device).contiguous(memory_format=FORMATS[grad_layout])
    (grad,) = torch.autograd.grad(out, x, g)
    assert grad.is_contiguous(memory_format=FORMATS[x_layout])
    xr = x.detach().requires_grad_()
    ref = reference.split_attention_combine(xr, attention(reference.split_attention_pool(xr, 2)), 2, 2)
    torch.testing.assert_close(grad, torch.autograd.grad(ref, xr, g)[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["fused_node", "two_ops"])
def test_create_graph_gradient_has_the_layout_of_x(device, path):
    x, _ = inputs(device, h=3, w=5)
    x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(8, 4, dtype=torch.float64, device=device, requires_grad=True)
    if path == "fused_node":
        out = resnest_cuda.split_attention(x, 2, 2, lambda gap: gap @ w.T, [w])
    else:
        out = resnest_cuda.split_attention_combine(x, resnest_cuda.split_attention_pool(x, 2) @ w.T, 2, 2)
    (grad,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    assert grad.requires_grad and grad.is_contiguous(memory_format=torch.channels_last)
