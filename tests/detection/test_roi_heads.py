"""R-CNN training targets: matching with GT added as proposals, sampling, background label, encoding."""

import torch

from detection.modeling.box_head import ConvFCBoxHead
from detection.modeling.box_ops import BoxCoder
from detection.modeling.matcher import Matcher
from detection.modeling.roi_heads import box_head_losses, label_and_sample_proposals
from detection.modeling.sampler import RandomSampler

CODER = BoxCoder(stds=(0.1, 0.1, 0.2, 0.2))


def test_gt_added_as_proposals_labels_and_targets():
    proposals = [
        torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0], [50.0, 50.0, 60.0, 60.0], [0, 0, 10, 14.0]]),
        torch.tensor([[5.0, 5.0, 25.0, 25.0]]),
    ]
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 12.0]]), "labels": torch.tensor([7])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    matcher = Matcher(0.5, 0.5, 0.5, match_low_quality=False)
    samples = label_and_sample_proposals(proposals, targets, matcher, RandomSampler(512, 0.25, True), CODER, 80)
    # image 0: GT itself + proposals 0 (IoU 10/12), 1 (IoU 12/20 = 0.6) and 3 (12/14) positive; 2 negative.
    # image 1: no GT -> its proposal is a negative.
    assert samples.rois.shape == (6, 5)
    assert samples.rois[:, 0].tolist() == [0, 0, 0, 0, 0, 1]
    assert samples.pos.tolist() == [True] * 4 + [False] * 2
    assert samples.labels.tolist() == [7, 7, 7, 7, 80, 80]
    pos_boxes = samples.rois[:4, 1:]
    torch.testing.assert_close(samples.box_targets[:4], CODER.encode(pos_boxes, targets[0]["boxes"].expand(4, 4)))
    assert samples.box_targets[4:].eq(0).all()
    # the GT box itself is among the positives, with zero targets
    assert any(torch.equal(b, targets[0]["boxes"][0]) for b in pos_boxes)


def test_sampling_caps_positives():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    proposals = [gt.repeat(20, 1)]
    targets = [{"boxes": gt, "labels": torch.tensor([1])}]
    samples = label_and_sample_proposals(
        proposals, targets, Matcher(0.5, 0.5, 0.5, False), RandomSampler(8, 0.25, True), CODER, 3
    )
    assert samples.pos.sum() == 2 and samples.labels.shape == (2,)  # no negatives exist to fill up


def test_box_head_losses_normalised_by_sampled_rois():
    head = ConvFCBoxHead(in_channels=1, roi_size=1, num_classes=2, num_convs=0, num_fcs=0)
    samples = label_and_sample_proposals(
        [torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]])],
        [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}],
        Matcher(0.5, 0.5, 0.5, False), RandomSampler(8, 0.25, False), CODER, 2,
    )
    cls_logits = torch.zeros(2, 3)
    box_deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0], [9.0] * 8])
    loss_cls, loss_box = box_head_losses(head, cls_logits, box_deltas, samples, "l1")
    torch.testing.assert_close(loss_cls, torch.log(torch.tensor(3.0)))
    # only the positive (class 1, columns 4..7) counts: |1| + |2| over 2 sampled RoIs
    torch.testing.assert_close(loss_box, torch.tensor(1.5))
