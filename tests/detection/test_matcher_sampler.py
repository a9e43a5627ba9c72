import pytest
import torch

from detection.modeling.matcher import IGNORE, NEGATIVE, POSITIVE, Matcher
from detection.modeling.sampler import RandomSampler, random_subset_mask


def test_thresholds_and_ignore():
    m = Matcher(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=False)
    iou = torch.tensor([[0.8, 0.5, 0.1, 0.0, 0.3], [0.75, 0.2, 0.29, 0.0, 0.1]])
    matched, labels = m(iou)
    assert labels.tolist() == [POSITIVE, IGNORE, NEGATIVE, NEGATIVE, IGNORE]
    assert matched.tolist() == [0, 0, 0, 0, 0]


def test_low_quality_matches():
    m = Matcher(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=True)
    # gt0 best 0.5 at boxes 1 and 3 (tie: both claimed); gt1 best 0.8 (already positive); gt2 best 0.2 < min_pos
    iou = torch.tensor(
        [
            [0.1, 0.5, 0.0, 0.5, 0.0],
            [0.0, 0.1, 0.8, 0.0, 0.0],
            [0.2, 0.0, 0.0, 0.0, 0.1],
        ]
    )
    matched, labels = m(iou)
    assert labels.tolist() == [NEGATIVE, POSITIVE, POSITIVE, POSITIVE, NEGATIVE]
    assert matched.tolist() == [0, 0, 1, 0, 0]


def test_low_quality_later_gt_wins_and_valid_mask():
    m = Matcher(0.5, 0.5, 0.1, match_low_quality=True)
    iou = torch.tensor([[0.3, 0.2, 0.9], [0.3, 0.1, 0.0]])
    valid = torch.tensor([True, True, False])
    matched, labels = m(iou, valid)
    # box 2 is invalid; gt0's best valid IoU is 0.3 at box 0, gt1's too: gt1 (listed last) takes box 0
    assert labels.tolist() == [POSITIVE, NEGATIVE, IGNORE]
    assert matched.tolist() == [1, 0, 0]


def test_no_gt_all_negative():
    m = Matcher(0.5, 0.5, 0.5, True)
    matched, labels = m(torch.zeros(0, 4), torch.tensor([True, True, False, True]))
    assert labels.tolist() == [NEGATIVE, NEGATIVE, IGNORE, NEGATIVE]
    assert matched.tolist() == [0, 0, 0, 0]


def test_random_subset_counts():
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([True, False, True, True, False, True])
    sub = random_subset_mask(mask, 2, g)
    assert sub.sum() == 2 and not (sub & ~mask).any()
    assert random_subset_mask(mask, torch.tensor(10), g).tolist() == mask.tolist()


def test_sampler_fraction_and_fill():
    sampler = RandomSampler(num=8, pos_fraction=0.25)
    labels = torch.tensor([POSITIVE] * 5 + [NEGATIVE] * 10 + [IGNORE] * 3, dtype=torch.int8)
    pos, neg = sampler(labels, torch.Generator().manual_seed(1))
    assert pos.sum() == 2 and neg.sum() == 6
    assert labels[pos].eq(POSITIVE).all() and labels[neg].eq(NEGATIVE).all()
    # few positives: negatives fill up to num
    labels = torch.tensor([POSITIVE] + [NEGATIVE] * 20, dtype=torch.int8)
    pos, neg = sampler(labels)
    assert pos.sum() == 1 and neg.sum() == 7
    # only negatives (image without GT)
    pos, neg = sampler(torch.zeros(5, dtype=torch.int8))
    assert pos.sum() == 0 and neg.sum() == 5


@pytest.mark.parametrize("n", [1, 5, 18, 40])
def test_sample_slots_are_the_draw_in_a_fixed_size(n):
    """`sample_slots` returns exactly `num` slots holding the draw of `__call__` (same keys): its positives, then
    its negatives, each in index order, then padding (invalid, index 0); positives fit in the first pos_limit."""
    sampler = RandomSampler(num=16, pos_fraction=0.25)
    g = torch.Generator().manual_seed(n)
    labels = torch.randint(-1, 2, (n,), generator=g, dtype=torch.int8)
    keys = torch.rand(2, n, generator=g)
    pos, neg = sampler(labels, keys=keys)
    idx, is_pos, valid = sampler.sample_slots(labels, keys=keys)
    assert idx.shape == is_pos.shape == valid.shape == (16,)
    want = torch.cat([torch.nonzero(pos).squeeze(1), torch.nonzero(neg).squeeze(1)])
    assert idx[valid].tolist() == want.tolist()
    assert is_pos.tolist() == [True] * int(pos.sum()) + [False] * (16 - int(pos.sum()))
    assert valid.tolist() == [True] * len(want) + [False] * (16 - len(want))
    assert idx[~valid].eq(0).all() and not is_pos[sampler.pos_limit:].any()
    with pytest.raises(ValueError, match="match_labels"):
        sampler.sample_slots(labels[:0])
