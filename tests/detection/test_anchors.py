import math

import torch

from detection.modeling.anchors import AnchorGenerator, base_anchors, in_grid_mask, inside_image_mask


def test_base_anchors_hand_computed():
    # stride 4, scale 8 -> side 32; ratio h/w 0.5 -> w = 32 * sqrt(2), h = 32 / sqrt(2)
    base = base_anchors(4, (8.0,), (0.5, 1.0, 2.0))
    s = 32 * math.sqrt(2) / 2
    t = 32 / math.sqrt(2) / 2
    expected = torch.tensor([[-s, -t, s, t], [-16.0, -16.0, 16.0, 16.0], [-t, -s, t, s]])
    torch.testing.assert_close(base, expected)


def test_grid_order_and_centres():
    gen = AnchorGenerator(strides=(4, 8), scales=(8.0,), ratios=(0.5, 1.0, 2.0))
    level0, level1 = gen([(2, 3), (1, 2)])
    assert level0.shape == (2 * 3 * 3, 4) and level1.shape == (1 * 2 * 3, 4)
    centres = (level0[:, :2] + level0[:, 2:]) / 2
    # (H, W, A) order, centres at (j * stride, i * stride): offset 0 as mmdetection 2.x
    expected = torch.tensor([[x * 4.0, y * 4.0] for y in range(2) for x in range(3) for _ in range(3)])
    torch.testing.assert_close(centres, expected)
    # the square anchor of level 1 at cell (0, 1): centre (8, 0), side 64
    torch.testing.assert_close(level1[4], torch.tensor([-24.0, -32.0, 40.0, 32.0]))


def test_valid_and_inside_masks():
    gen = AnchorGenerator(strides=(4, 16), scales=(8.0,), ratios=(0.5, 2.0))
    (_, _), (cells0, cells1) = gen.anchors_and_cells([(2, 3), (1, 2)])
    valid = in_grid_mask(torch.cat([cells0, cells1]), valid_size=(8, 5))
    # level 0: ceil(8/4) = 2 rows, ceil(5/4) = 2 columns valid; level 1: ceil(8/16) = 1 row, ceil(5/16) = 1 column
    assert valid[:12].view(2, 3, 2)[:, :, 0].tolist() == [[True, True, False], [True, True, False]]
    assert valid[:12].view(2, 3, 2).all(-1).eq(valid[:12].view(2, 3, 2).any(-1)).all()  # both anchors of a cell
    assert valid[12:].tolist() == [True, True, False, False]
    # the rule i < min(ceil(h / s), H), j < min(ceil(w / s), W) over sizes and strides
    for stride, (fh, fw) in ((4, (5, 7)), (8, (3, 4)), (32, (2, 2))):
        (_,), (cells,) = AnchorGenerator(strides=(stride,), scales=(1.0,), ratios=(1.0,)).anchors_and_cells([(fh, fw)])
        for h in range(1, fh * stride + 3, 3):
            for w in range(1, fw * stride + 3, 5):
                rows, cols = min(math.ceil(h / stride), fh), min(math.ceil(w / stride), fw)
                expected = (torch.arange(fh)[:, None] < rows) & (torch.arange(fw)[None, :] < cols)
                assert torch.equal(in_grid_mask(cells, (h, w)), expected.reshape(-1))
    anchors = torch.tensor([[-1.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 10.0]])
    assert inside_image_mask(anchors, (10, 20), allowed_border=-1).tolist() == [True, True, True]
    assert inside_image_mask(anchors, (11, 20), allowed_border=0).tolist() == [False, True, False]
    assert inside_image_mask(anchors, (11, 20), allowed_border=1).tolist() == [True, True, True]
