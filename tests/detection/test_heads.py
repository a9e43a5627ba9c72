"""FPN, box head, mask head: shapes, mmdetection parameter names, post-processing and mask pasting."""

import torch

from detection.modeling.box_head import ConvFCBoxHead
from detection.modeling.fpn import FPN
from detection.modeling.layers import make_norm_factory
from detection.modeling.mask_head import FCNMaskHead, mask_targets, paste_masks
from detection.modeling.roi_heads import postprocess_detections
from resnest_cuda.norm import SyncBatchNorm


def test_fpn_levels_names_and_p6():
    fpn = FPN(in_channels=(4, 8, 16, 32), out_channels=8, num_outs=5)
    feats = [torch.randn(2, c, 40 // 2**i, 48 // 2**i) for i, c in enumerate((4, 8, 16, 32))]
    outs = fpn(feats)
    assert [tuple(o.shape[-2:]) for o in outs] == [(40, 48), (20, 24), (10, 12), (5, 6), (3, 3)]
    torch.testing.assert_close(outs[4], outs[3][:, :, ::2, ::2])  # max_pool2d with kernel 1, stride 2
    keys = set(fpn.state_dict())
    assert {"lateral_convs.0.conv.weight", "lateral_convs.3.conv.bias", "fpn_convs.3.conv.weight"} <= keys
    assert all(k.startswith(("lateral_convs.", "fpn_convs.")) for k in keys)


def test_box_head_shapes_and_names():
    head = ConvFCBoxHead(in_channels=8, roi_size=7, num_classes=80, conv_channels=8, fc_channels=16,
                         norm=make_norm_factory("syncbn"))
    cls, reg = head(torch.randn(3, 8, 7, 7))
    assert cls.shape == (3, 81) and reg.shape == (3, 320)
    keys = set(head.state_dict())
    assert {"shared_convs.3.conv.weight", "shared_convs.3.bn.running_var", "shared_fcs.0.weight", "fc_cls.bias",
            "fc_reg.weight"} <= keys
    assert "shared_convs.0.conv.bias" not in keys  # conv bias only without a norm
    assert isinstance(head.shared_convs[0].bn, SyncBatchNorm)
    # class-specific deltas: class 2 is columns 8..11; background (80) rows are clamped, not an error
    reg = torch.arange(2 * 320.0).view(2, 320)
    picked = head.select_deltas(reg, torch.tensor([2, 80]))
    assert picked[0].tolist() == [8.0, 9.0, 10.0, 11.0] and picked.shape == (2, 4)
    agnostic = ConvFCBoxHead(8, 7, 80, num_convs=0, fc_channels=16, class_agnostic=True)
    assert agnostic(torch.randn(2, 8, 7, 7))[1].shape == (2, 4)


def test_mask_head_shapes_and_names():
    head = FCNMaskHead(in_channels=8, num_classes=5, conv_channels=8, norm=make_norm_factory("bn"))
    logits = head(torch.randn(2, 8, 14, 14))
    assert logits.shape == (2, 5, 28, 28)
    assert head.select_class(logits, torch.tensor([4, 0])).shape == (2, 28, 28)
    keys = set(head.state_dict())
    assert {"convs.3.conv.weight", "convs.3.bn.weight", "upsample.weight", "upsample.bias",
            "conv_logits.weight"} <= keys


def test_mask_targets_crop_and_binarise():
    gt = torch.zeros(2, 16, 16, dtype=torch.uint8)
    gt[0, :, :8] = 1  # left half
    gt[1, 4:12, 4:12] = 1
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [4.0, 4.0, 12.0, 12.0]])
    targets = mask_targets(gt, boxes, torch.tensor([0, 1]), 4)
    assert targets[0].tolist() == [[1.0, 1.0, 0.0, 0.0]] * 4
    assert targets[1].eq(1).all()


def test_paste_masks():
    probs = torch.zeros(2, 4, 4)
    probs[0] = 1.0
    probs[1, :, :2] = 1.0  # left half of its box
    boxes = torch.tensor([[2.0, 3.0, 6.0, 5.0], [0.0, 0.0, 8.0, 8.0]])
    masks = paste_masks(probs, boxes, (8, 10), threshold=0.5)
    assert masks.shape == (2, 8, 10) and masks.dtype == torch.bool
    expected0 = torch.zeros(8, 10, dtype=torch.bool)
    expected0[3:5, 2:6] = True
    assert torch.equal(masks[0], expected0)
    expected1 = torch.zeros(8, 10, dtype=torch.bool)
    expected1[:, :4] = True
    assert torch.equal(masks[1], expected1)
    assert paste_masks(probs[:0], boxes[:0], (8, 10)).shape == (0, 8, 10)


def test_postprocess_threshold_classwise_nms_and_cap():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    per_class = boxes[:, None, :].expand(3, 2, 4)  # two classes, same boxes
    scores = torch.tensor([[0.9, 0.8], [0.7, 0.04], [0.3, 0.6]])
    det_boxes, det_scores, det_labels = postprocess_detections(per_class, scores, 0.05, 0.5, 100)
    # class 0: box 0 suppresses box 1 (IoU 0.82); box 2 kept. class 1: box 1 under threshold; boxes 0, 2 kept.
    assert det_scores.tolist() == torch.tensor([0.9, 0.8, 0.6, 0.3]).tolist()
    assert det_labels.tolist() == [0, 1, 1, 0]
    torch.testing.assert_close(det_boxes, boxes[[0, 0, 2, 2]])
    _, capped, _ = postprocess_detections(per_class, scores, 0.05, 0.5, 2)
    assert capped.tolist() == torch.tensor([0.9, 0.8]).tolist()
    empty = postprocess_detections(per_class, scores, 0.95, 0.5, 100)
    assert [t.shape[0] for t in empty] == [0, 0, 0]
