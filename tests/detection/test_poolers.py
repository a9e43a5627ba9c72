import pytest
import torch

import resnest_cuda
from detection.modeling.poolers import MultiScaleRoIAlign, assign_levels, boxes_to_rois


def test_assign_levels_hand_computed():
    # sqrt(area) = 20, 111, 112, 224, 448, 1000 -> floor(log2(s / 56 + 1e-6)) = -2, 0, 1, 2, 3, 4 -> clamp [0, 3]
    sides = [20.0, 111.0, 112.0, 224.0, 448.0, 1000.0]
    boxes = torch.tensor([[0.0, 0.0, s, s] for s in sides])
    assert assign_levels(boxes, num_levels=4, finest_scale=56).tolist() == [0, 0, 1, 2, 3, 3]
    # non-square: 56 x 224 has sqrt(area) 112 -> level 1
    assert assign_levels(torch.tensor([[10.0, 10.0, 66.0, 234.0]]), 4).tolist() == [1]


def test_boxes_to_rois():
    rois = boxes_to_rois([torch.ones(2, 4), torch.zeros(0, 4), 2 * torch.ones(1, 4)])
    assert rois[:, 0].tolist() == [0.0, 0.0, 2.0] and rois[2, 1:].tolist() == [2.0] * 4


def test_roi_align_on_a_ramp():
    # f(y, x) = x on an 8x8 map; aligned RoI (0, 0, 8, 8) starts at -0.5, 2 bins of 4 samples: x = 0..3 and 4..7
    feat = torch.arange(8.0).repeat(8, 1)[None, None]
    out = resnest_cuda.roi_align(feat, torch.tensor([[0.0, 0.0, 0.0, 8.0, 8.0]]), 2, 1.0, 0, True)
    torch.testing.assert_close(out, torch.tensor([[[[1.5, 5.5], [1.5, 5.5]]]]))


def test_pooler_routes_rois_to_their_level():
    # Level l holds the constant l + 1, so the pooled value tells which level each RoI used.
    feats = [torch.full((2, 3, 160 // 2**lvl, 160 // 2**lvl), float(lvl + 1)) for lvl in range(5)]
    pooler = MultiScaleRoIAlign(output_size=2, featmap_strides=(4, 8, 16, 32), sampling_ratio=0)
    rois = torch.tensor([[0, 0, 0, 50, 50], [1, 10, 10, 130, 130], [1, 0, 0, 250, 250], [0, 0, 0, 500, 500.0]])
    out = pooler(feats, rois)
    assert out.shape == (4, 3, 2, 2)
    assert out[:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert pooler(feats, rois[:0]).shape == (0, 3, 2, 2)
    with pytest.raises(ValueError, match="features"):
        pooler(feats[:3], rois)
