"""The counting rules of benchmarks/step_census.py (our side only; the peers' environment is not needed)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from census_counters import OpCensus, run_census  # noqa: E402
from step_census import census_ours, make_batch, markdown  # noqa: E402

F32 = 4


def count(fn):
    census = OpCensus()
    with census:
        fn()
    return census


def test_views_and_allocations_are_not_ops():
    a = torch.randn(4, 6)
    census = count(
        lambda: (
            a.view(6, 4),
            a.t(),
            a[1:],
            a[0],
            a.unsqueeze(0),
            a.expand(2, 4, 6),
            a.permute(1, 0),
            a.reshape(24),
            a.detach(),
            torch.empty(3),
            torch.empty_like(a),
        )
    )
    assert census.ops == 0 and census.bytes == 0


def test_bytes_of_plain_in_place_broadcast_and_copy_ops():
    a, b, row = torch.randn(4, 6), torch.randn(4, 6), torch.randn(6)
    n = 24 * F32
    assert count(lambda: a + b).bytes == 3 * n  # reads a and b, writes the sum
    assert count(lambda: a.clone().add_(b)).bytes == 2 * n + 3 * n  # clone; add_ reads a', b and writes a'
    assert count(lambda: a + row).bytes == n + 6 * F32 + n  # the broadcast row is read once
    assert count(lambda: a + row.expand(4, 6)).bytes == n + 6 * F32 + n  # stride 0: its distinct elements
    dst = torch.empty(4, 6)
    assert count(lambda: dst.copy_(b)).bytes == 2 * n  # the destination is only written
    census = count(lambda: torch.add(a, b, out=dst))
    assert (census.ops, census.bytes) == (1, 3 * n)
    assert dict(count(lambda: (a + b, a + b, a * b)).per_op) == {"aten::add": [2, 6 * n], "aten::mul": [1, 3 * n]}


def test_conv_bn_relu_step_counted_by_hand():
    """Conv(2->3, 3x3, no bias) -> BatchNorm2d(3) -> ReLU on [1, 2, 4, 4], loss = sum, fp32."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1, bias=False), torch.nn.BatchNorm2d(3), torch.nn.ReLU()
    ).train()
    x = torch.randn(1, 2, 4, 4)
    result = run_census(lambda: model(x).sum(), model)
    xb, wb, yb, cb, s = 32 * F32, 54 * F32, 48 * F32, 3 * F32, F32  # input, conv weight, activation, channel, scalar
    expected = {
        "convolution": xb + wb + yb,
        "add_ (num_batches_tracked, int64)": 8 + 8,
        "native_batch_norm (+ running stats written)": (yb + 4 * cb) + (yb + 2 * cb) + 2 * cb,
        "relu": 2 * yb,
        "sum": yb + s,
        "ones_like (the loss's gradient)": 2 * s,
        "threshold_backward (gradient broadcast from a scalar)": s + yb + yb,
        "native_batch_norm_backward": (2 * yb + 5 * cb) + (yb + 2 * cb),
        "convolution_backward (weight gradient only)": (yb + xb + wb) + wb,
    }
    assert result["ops"] == len(expected)
    assert result["gb_moved"] * 1e9 == pytest.approx(sum(expected.values()))
    # saved: the input, conv output, ReLU output, BN's save_mean and save_invstd; state: conv weight, BN weight,
    # BN running mean and var
    assert result["saved_mb"] * 2**20 == pytest.approx(xb + yb + yb + 2 * cb)
    assert result["saved_state_mb"] * 2**20 == pytest.approx(wb + cb + 2 * cb)
    conv_flops = 2 * 48 * 2 * 9  # forward; backward computes the weight gradient only (the same count)
    assert result["gflops"] * 1e9 == pytest.approx(2 * conv_flops)
    top = result["top_ops"][0]
    assert (top["op"], top["count"], top["gb"] * 1e9) == ("aten::convolution_backward", 1, pytest.approx(752))


def test_make_batch_is_seeded_and_masks_fill_boxes():
    a, b = make_batch(2, (64, 96), 3), make_batch(2, (64, 96), 3)
    assert torch.equal(a["images"], b["images"]) and a["images"].shape == (2, 3, 64, 96)
    for boxes, masks in zip(a["boxes"], a["masks"]):
        assert boxes.shape == (3, 4) and masks.shape == (3, 64, 96)
        areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).long()
        assert torch.equal(masks.sum((1, 2)), areas)


@pytest.mark.parametrize("static", [True, False], ids=["static", "compacted"])
def test_our_census_on_a_tiny_config(static):
    batch = make_batch(2, (32, 64), 3, num_classes=3)
    result = census_ours("shapes_faster_rcnn_s14", static, batch, "fp32")
    assert result["ops"] > 500 and result["gb_moved"] > 0 and result["gflops"] > 0 and result["saved_mb"] > 0
    names = {t["op"] for t in result["top_ops"]}
    assert "aten::convolution" in names and "aten::convolution_backward" in names
    assert any(name.startswith("resnest_cuda::") for name in result["all_ops"])  # our custom ops count
    row = {"model": "faster", "impl": "ours", **result}
    assert "| faster | ours |" in markdown([row])
