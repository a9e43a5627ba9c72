"""R-CNN assignment as mmdetection does it: the matcher sees the proposals alone, the GT boxes are added afterwards
as positives of themselves, so low-quality matches (Mask R-CNN's R-CNN assigner) can give a proposal to a GT."""

import torch

from detection.modeling.box_ops import BoxCoder, box_iou
from detection.modeling.matcher import Matcher
from detection.modeling.roi_heads import label_and_sample_proposals
from detection.modeling.sampler import RandomSampler

CODER = BoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
GT = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0]])  # A (class 1), B (class 2)
PROPOSAL = torch.tensor([[0.8, 0.0, 10.8, 10.0]])  # IoU 92/108 with A, 88/112 with B


def _sample(match_low_quality: bool, add_gt: bool = True):
    targets = [{"boxes": GT, "labels": torch.tensor([1, 2])}]
    matcher = Matcher(0.5, 0.5, 0.5, match_low_quality=match_low_quality)
    return label_and_sample_proposals([PROPOSAL], targets, matcher, RandomSampler(512, 0.25, add_gt), CODER, 80)


def _label_of_proposal(samples) -> int:
    rows = [i for i in range(samples.rois.shape[0]) if torch.equal(samples.rois[i, 1:], PROPOSAL[0])]
    assert len(rows) == 1
    return int(samples.labels[rows[0]])


def test_toy_ious():
    torch.testing.assert_close(box_iou(GT, PROPOSAL)[:, 0], torch.tensor([92 / 108, 88 / 112]))


def test_low_quality_match_gives_the_proposal_to_the_last_claiming_gt():
    # Both GTs' best IoU is with the proposal (>= min_pos_iou 0.5): both claim it and B, listed last, wins.
    samples = _sample(match_low_quality=True)
    assert _label_of_proposal(samples) == 2
    assert samples.pos.tolist() == [True, True, True]
    # the two GT boxes come first, each matched to itself
    assert samples.rois[:2, 1:].tolist() == GT.tolist() and samples.labels[:2].tolist() == [1, 2]
    assert samples.matched_idxs.tolist() == [0, 1, 1] and samples.is_gt.tolist() == [True, True, False]


def test_without_low_quality_matching_the_argmax_gt_keeps_it():
    # Faster R-CNN / Cascade (match_low_quality=False): plain max-IoU assignment, A wins.
    assert _label_of_proposal(_sample(match_low_quality=False)) == 1


def test_without_gt_as_proposals_the_same_assignment():
    assert _label_of_proposal(_sample(match_low_quality=True, add_gt=False)) == 2
    assert _label_of_proposal(_sample(match_low_quality=False, add_gt=False)) == 1


def test_gt_forced_positive_even_when_degenerate_or_duplicated():
    gt = torch.tensor([[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    targets = [{"boxes": gt, "labels": torch.tensor([3, 4, 5])}]
    samples = label_and_sample_proposals([torch.tensor([[50.0, 50.0, 60.0, 60.0]])], targets,
                                         Matcher(0.5, 0.5, 0.5, True), RandomSampler(512, 0.25, True), CODER, 80)
    assert samples.pos.tolist() == [True, True, True, False]
    assert samples.labels.tolist() == [3, 4, 5, 80]
    assert samples.matched_idxs[:3].tolist() == [0, 1, 2]
