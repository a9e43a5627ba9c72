"""The fixed-size heads' masked BatchNorm (`batch_norm_act(bn, x, rows=rows)`, fused): a training-mode BatchNorm
whose statistics come from the selected rows only equals the BatchNorm of those rows (outputs, gradients, running
statistics), whatever the other rows hold. On the CPU kernels and the emulated CUDA kernels."""

import pytest
import torch
from torch import nn

from detection.modeling.layers import ConvBlock
from resnest_cuda.batch_norm import batch_norm_act
from resnest_cuda.norm import SyncBatchNorm

from ..helpers import devices


def masked_batch_norm(bn, x, rows):
    return batch_norm_act(bn, x, relu=False, rows=rows)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("norm", [nn.BatchNorm2d, SyncBatchNorm])
def test_equals_batch_norm_of_the_selected_rows(norm, momentum, device):
    torch.manual_seed(0)
    x = torch.randn(7, 5, 3, 4, dtype=torch.float64) * 3 + 1
    x[[1, 4]] = 1e3  # unselected rows with values that would move the statistics a lot
    rows = torch.tensor([True, False, True, True, False, True, True])
    x, rows = x.to(device), rows.to(device)
    ref, ours = norm(5, momentum=momentum).double().to(device), norm(5, momentum=momentum).double().to(device)
    with torch.no_grad():
        for bn in (ref, ours):
            bn.weight.copy_(torch.linspace(0.5, 2.0, 5))
            bn.bias.copy_(torch.linspace(-1.0, 1.0, 5))
            bn.running_mean.copy_(torch.linspace(-0.2, 0.3, 5))
    x_ref, x_ours = x[rows].clone().requires_grad_(), x.clone().requires_grad_()
    for _ in range(2):  # twice: the second update starts from non-default running statistics
        want = ref(x_ref)
        got = masked_batch_norm(ours, x_ours, rows)
    torch.testing.assert_close(got[rows], want, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(want)
    (want * probe).sum().backward()
    full_probe = torch.zeros_like(x)
    full_probe[rows] = probe
    (got * full_probe).sum().backward()
    torch.testing.assert_close(x_ours.grad[rows], x_ref.grad, rtol=1e-10, atol=1e-12)
    assert not x_ours.grad[~rows].any()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-12, atol=1e-12)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 2


@pytest.mark.parametrize("device", devices())
def test_one_element_or_none_leaves_the_running_statistics(device):
    bn = nn.BatchNorm2d(3).to(device)
    x = torch.randn(4, 3, 1, 1, device=device)
    for rows in (torch.zeros(4, dtype=torch.bool), torch.tensor([False, True, False, False])):
        rows = rows.to(device)
        out = masked_batch_norm(bn, x, rows)
        assert torch.isfinite(out).all()
    assert bn.running_mean.eq(0).all() and bn.running_var.eq(1).all()


def test_conv_block_uses_it_only_for_batch_statistics():
    torch.manual_seed(0)
    block = ConvBlock(2, 4, 3, norm=nn.BatchNorm2d).double()
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    rows = torch.tensor([True, True, False, True, False])
    torch.testing.assert_close(block(x, rows)[rows], block(x[rows]))
    block.eval()  # running statistics: the rows do not matter
    torch.testing.assert_close(block(x, rows), block(x))
    gn_block = ConvBlock(32, 32, 3, norm=lambda c: nn.GroupNorm(32, c)).double()
    x = torch.randn(3, 32, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(gn_block(x, torch.tensor([True, False, True])), gn_block(x))
