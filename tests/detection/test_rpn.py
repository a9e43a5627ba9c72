"""RPN proposal generation and targets on hand-made head outputs."""

import torch

from detection.modeling.anchors import AnchorGenerator
from detection.modeling.box_ops import BoxCoder
from detection.modeling.matcher import Matcher
from detection.modeling.rpn import ProposalSettings, RPNHead
from detection.modeling.sampler import RandomSampler


def _rpn(nms_pre=2, max_per_img=10, num=8):
    return RPNHead(
        in_channels=4, feat_channels=4,
        anchor_generator=AnchorGenerator(strides=(4, 8), scales=(2.0,), ratios=(1.0,)),
        coder=BoxCoder(), matcher=Matcher(0.7, 0.3, 0.3, True), sampler=RandomSampler(num, 0.5),
        train_settings=ProposalSettings(nms_pre, 0.7, max_per_img), test_settings=ProposalSettings(nms_pre, 0.7, 1),
    )


def test_proposals_topk_per_level_nms_per_level_and_clip():
    rpn = _rpn()
    level0 = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    level1 = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 100.0, 100.0]])
    logits = [torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[0.0, 0.5]])]
    deltas = [torch.zeros(1, 3, 4), torch.zeros(1, 2, 4)]
    settings = ProposalSettings(nms_pre=2, nms_iou=0.7, max_per_img=10)
    (proposals,), valid = rpn._generate_proposals([level0, level1], logits, deltas, [(50, 60)], settings)
    assert valid is None
    # level 0: top-2 = boxes 0, 1 (box 2 cut by nms_pre); box 1 suppressed by box 0 (IoU 0.82).
    # level 1: its copy of box 0 is kept (levels never suppress each other); the big box is clipped to 60 x 50.
    expected = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 60.0, 50.0], [0.0, 0.0, 10.0, 10.0]])
    torch.testing.assert_close(proposals, expected)
    (capped,), _ = rpn._generate_proposals(
        [level0, level1], logits, deltas, [(50, 60)], settings._replace(max_per_img=1)
    )
    torch.testing.assert_close(capped, expected[:1])
    # Padded: exactly max_per_img rows, the same boxes first, padding marked invalid.
    (padded,), (valid,) = rpn._generate_proposals(
        [level0, level1], logits, deltas, [(50, 60)], settings, compact=False
    )
    assert padded.shape == (10, 4) and valid.tolist() == [True] * 3 + [False] * 7
    torch.testing.assert_close(padded[valid], expected)


def test_rpn_losses_hand_computed():
    rpn = _rpn(num=4)
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0], [40.0, 40.0, 50.0, 50.0]])
    valid = torch.tensor([[True, True, False]])
    logits = torch.zeros(1, 3)
    deltas = torch.zeros(1, 3, 4)
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 11.0]]), "labels": torch.tensor([0])}]
    losses = rpn._losses(anchors, valid, logits, deltas, targets)
    # anchor 0 (IoU 10/11) and 1 (IoU 11/12) are positive, anchor 2 is invalid: 2 samples, both positive.
    torch.testing.assert_close(losses["loss_rpn_cls"], torch.log(torch.tensor(2.0)))
    # targets dy: (5.5 - 5) / 10 and (5.5 - 6) / 12; dh: log(11/10), log(11/12); L1 sum / 2 samples
    dy0, dy1 = 0.05, 0.5 / 12
    dh0, dh1 = abs(torch.log(torch.tensor(1.1))), abs(torch.log(torch.tensor(11 / 12)))
    torch.testing.assert_close(losses["loss_rpn_bbox"], (dy0 + dy1 + dh0 + dh1) / 2)
