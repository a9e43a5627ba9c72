import math

import pytest
import torch

from detection.modeling.box_ops import (
    MAX_LOG_SCALE,
    BoxCoder,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    nonempty_box_mask,
    scale_boxes,
)


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    iou = box_iou(a, b)
    # overlap 5x5 = 25; union 100 + 100 - 25 = 175
    expected = torch.tensor([[25 / 175, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(iou, expected)
    assert box_iou(a, b[:0]).shape == (2, 0)


def test_encode_hand_computed_and_normalised():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), w 10, h 20
    gt = torch.tensor([[2.0, 4.0, 22.0, 24.0]])  # centre (12, 14), w 20, h 20
    deltas = encode_boxes(boxes, gt)
    torch.testing.assert_close(deltas, torch.tensor([[0.7, 0.2, math.log(2.0), 0.0]]))
    normed = encode_boxes(boxes, gt, means=(0.1, 0.0, 0.0, 0.0), stds=(0.1, 0.1, 0.2, 0.2))
    torch.testing.assert_close(normed, torch.tensor([[6.0, 2.0, math.log(2.0) / 0.2, 0.0]]))


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 50], dim=1)
    xy = torch.rand(50, 2, generator=g) * 100
    gt = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 50], dim=1)
    coder = BoxCoder(means=(0.0, 0.0, 0.0, 0.0), stds=(0.1, 0.1, 0.2, 0.2))
    torch.testing.assert_close(coder.decode(boxes, coder.encode(boxes, gt)), gt, atol=1e-4, rtol=1e-5)


def test_decode_clamps_scale_and_runs_in_fp32():
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    deltas = torch.tensor([[0.0, 0.0, 100.0, -100.0]], dtype=torch.float16)
    out = decode_boxes(boxes, deltas)
    assert out.dtype == torch.float32
    w, h = out[0, 2] - out[0, 0], out[0, 3] - out[0, 1]
    assert MAX_LOG_SCALE == pytest.approx(math.log(1000 / 16))
    torch.testing.assert_close(w, torch.tensor(1000.0))
    torch.testing.assert_close(h, torch.tensor(16 * 16 / 1000.0))


def test_decode_broadcasts_and_clips():
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    deltas = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [-2.0, 0.0, 0.0, 0.0]]])  # [1, 2, 4]: two classes
    out = decode_boxes(boxes[:, None, :], deltas, max_shape=(15, 100))
    torch.testing.assert_close(out, torch.tensor([[[10.0, 10.0, 20.0, 15.0], [0.0, 10.0, 0.0, 15.0]]]))


def test_clip_small_and_scale():
    boxes = torch.tensor([[-5.0, 2.0, 50.0, 60.0], [3.0, 3.0, 3.0, 9.0]])
    torch.testing.assert_close(clip_boxes(boxes, (40, 30)), torch.tensor([[0.0, 2.0, 30.0, 40.0], [3, 3, 3, 9.0]]))
    assert nonempty_box_mask(boxes).tolist() == [True, False]
    assert nonempty_box_mask(boxes, min_size=56.0).tolist() == [False, False]
    torch.testing.assert_close(scale_boxes(boxes[:1], (2.0, 0.5)), torch.tensor([[-10.0, 1.0, 100.0, 30.0]]))


def _per_coordinate_encode(boxes, gt, means, stds):
    """The textbook per-coordinate formulas, one coordinate at a time."""
    p_w, p_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    p_x, p_y = boxes[:, 0] + 0.5 * p_w, boxes[:, 1] + 0.5 * p_h
    g_w, g_h = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    g_x, g_y = gt[:, 0] + 0.5 * g_w, gt[:, 1] + 0.5 * g_h
    p_w, p_h, g_w, g_h = (v.clamp(min=1e-2) for v in (p_w, p_h, g_w, g_h))
    raw = ((g_x - p_x) / p_w, (g_y - p_y) / p_h, torch.log(g_w / p_w), torch.log(g_h / p_h))
    return torch.stack([(d - m) / s for d, m, s in zip(raw, means, stds)], dim=1)


def _per_coordinate_decode(boxes, deltas, means, stds):
    d = [deltas[..., i] * stds[i] + means[i] for i in range(4)]
    p_w, p_h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    p_x, p_y = boxes[..., 0] + 0.5 * p_w, boxes[..., 1] + 0.5 * p_h
    g_x, g_y = p_x + p_w * d[0], p_y + p_h * d[1]
    g_w = p_w * torch.exp(d[2].clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE))
    g_h = p_h * torch.exp(d[3].clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE))
    return torch.stack([g_x - 0.5 * g_w, g_y - 0.5 * g_h, g_x + 0.5 * g_w, g_y + 0.5 * g_h], dim=-1)


@pytest.mark.parametrize(
    "means, stds",
    [((0.0,) * 4, (1.0,) * 4), ((0.0,) * 4, (0.1, 0.1, 0.2, 0.2)), ((0.1, 0.0, -0.2, 0.3), (0.1, 0.2, 0.2, 0.5))],
)
def test_pairwise_coder_equals_per_coordinate_formulas(means, stds):
    """The coder works on (x, y) pairs (fewer ops); its values are those of the per-coordinate formulas, bit for
    bit, with shared, mixed and identity normalisations, on sizes that exercise vector bodies and tails."""
    g = torch.Generator().manual_seed(1)
    for n in (0, 1, 7, 33, 1001):
        xy = torch.rand(n, 2, generator=g) * 500
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 200], 1)
        xy = torch.rand(n, 2, generator=g) * 500
        gt = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 200], 1)
        deltas = torch.randn(3, n, 4, generator=g) * 3
        assert torch.equal(encode_boxes(boxes, gt, means, stds), _per_coordinate_encode(boxes, gt, means, stds))
        assert torch.equal(decode_boxes(boxes, deltas, means, stds), _per_coordinate_decode(boxes, deltas, means, stds))
