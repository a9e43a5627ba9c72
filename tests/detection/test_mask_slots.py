"""The mask head's rows on the fixed-size training path (`mask_slots_per_image`): the batch's positives share
num_images * cap rows instead of pos_limit rows per image.

With no positive dropped, the loss and gradients equal those of the uncapped fixed-size path and of the compacted
path (fp64); a cap below the positives keeps exactly `capacity` of them, counts the others, and keeps the same
ones on both paths (keys that depend on each RoI alone); the head sees the capped number of rows; no host sync."""

import pytest
import torch

import resnest_cuda
from benchmarks.count_syncs import count_syncs
from detection.modeling import roi_heads
from detection.modeling.box_ops import BoxCoder
from detection.modeling.layers import make_norm_factory
from detection.modeling.mask_head import FCNMaskHead
from detection.modeling.matcher import Matcher
from detection.modeling.poolers import MultiScaleRoIAlign
from detection.modeling.roi_heads import label_and_sample_proposals, mask_head_loss, select_mask_rois
from detection.modeling.sampler import RandomSampler

from .test_static_shapes import box_hash_keys

pytestmark = pytest.mark.skipif(not hasattr(resnest_cuda, "roi_align"), reason="needs the detection ops")

SIZES = [(64, 96), (48, 80)]
NUM_CLASSES = 3
SAMPLER = RandomSampler(64, 0.25, True)  # pos_limit 16
MATCHER = Matcher(0.5, 0.5, 0.5, True)


@pytest.fixture()
def hashed_keys(monkeypatch):
    """The samplers' and the mask rows' random keys as functions of each box (see test_static_shapes), so that
    padded and compacted samples draw the same RoIs and keep the same positives."""
    monkeypatch.setattr(roi_heads, "sampling_keys", box_hash_keys)
    monkeypatch.setattr(
        roi_heads, "mask_keep_keys", lambda rois: box_hash_keys(rois[:, 1:])[0] * 0.999 + rois[:, 0] * 1e-4
    )


def batch(num_gt=(3, 2), jitter=4, seed=0):
    """Targets (bitmap masks) and proposals around the GT boxes (so that there are positives) plus random ones."""
    g = torch.Generator().manual_seed(seed)
    targets, proposals = [], []
    for n, (h, w) in zip(num_gt, SIZES):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 10 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w - 1.0, h - 1.0]))], 1).double()
        masks = torch.zeros(n, h, w, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
            masks[i, y1:y2, (x1 + x2) // 2 : x2] = 1  # half the box: targets that are not all ones
        targets.append({"boxes": boxes, "labels": torch.randint(0, NUM_CLASSES, (n,), generator=g), "masks": masks})
        near = boxes.repeat(jitter, 1) + torch.randn(n * jitter, 4, generator=g, dtype=torch.float64)
        far = torch.rand(8, 2, generator=g, dtype=torch.float64) * torch.tensor([w * 0.7, h * 0.7])
        far = torch.cat([far, far + 12], 1)
        proposals.append(torch.cat([near, far]).clamp(min=0))
    return proposals, targets


def head_and_features(seed=0):
    torch.manual_seed(seed)
    head = FCNMaskHead(4, NUM_CLASSES, num_convs=2, conv_channels=6, norm=make_norm_factory("bn")).double().train()
    pooler = MultiScaleRoIAlign(7, (4, 8), 0, True, 56.0)
    features = [
        torch.randn(2, 4, h // s, w // s, dtype=torch.float64, requires_grad=True)
        for s, (h, w) in zip((4, 8), [max(SIZES)] * 2)
    ]
    return head, pooler, features


def run(samples, targets, cap, seed=0):
    """Loss, dropped, gradients (head parameters and features) and the head's input rows of one mask loss."""
    head, pooler, features = head_and_features(seed)
    rows = []
    head.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    gt_masks = roi_heads.gt_mask_inputs(targets, torch.float64)
    loss, dropped = mask_head_loss(pooler, head, features, samples, gt_masks, SAMPLER.pos_limit, cap)
    params = [*head.parameters(), *features]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), dropped, grads, rows[0]


def sample(proposals, targets, compact):
    return label_and_sample_proposals(proposals, targets, MATCHER, SAMPLER, BoxCoder(), NUM_CLASSES, compact=compact)


def assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-15)
    for ga, gb in zip(a[2], b[2]):
        assert (ga is None) == (gb is None)
        if ga is not None:
            torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-13)


def test_no_drop_equals_the_uncapped_and_the_compacted_loss(hashed_keys):
    proposals, targets = batch()
    fixed, compacted = sample(proposals, targets, False), sample(proposals, targets, True)
    num_pos = int(fixed.pos.sum())
    assert 4 < num_pos <= 2 * SAMPLER.pos_limit and fixed.pos[: SAMPLER.pos_limit].sum() > 0
    cap = (num_pos + 1) // 2 + 1  # room for every positive of the batch, fewer rows than pos_limit per image
    assert cap < SAMPLER.pos_limit
    today = run(fixed, targets, None)
    assert today[1] is None and today[3] == 2 * SAMPLER.pos_limit
    capped = run(fixed, targets, cap)
    assert int(capped[1]) == 0 and capped[3] == 2 * cap  # the head sees the capped rows
    assert_same(capped, today)
    assert_same(capped, run(compacted, targets, None))
    assert_same(capped, run(compacted, targets, cap))
    assert run(fixed, targets, SAMPLER.pos_limit * 4)[3] == 2 * SAMPLER.pos_limit  # never above pos_limit


def test_dropped_positives_are_counted_and_the_same_on_both_paths(hashed_keys):
    proposals, targets = batch(num_gt=(4, 3), jitter=6)
    fixed, compacted = sample(proposals, targets, False), sample(proposals, targets, True)
    num_pos = int(fixed.pos.sum())
    cap = 3
    assert num_pos > 2 * cap
    chosen = select_mask_rois(fixed, 2, SAMPLER.pos_limit, cap)
    assert chosen.slots.shape == (2 * cap,) and chosen.weights.all()
    assert fixed.pos[chosen.slots].all() and chosen.slots.unique().numel() == 2 * cap
    assert int(chosen.dropped) == num_pos - 2 * cap
    # kept rows stay in slot order (image by image)
    assert torch.equal(chosen.slots, chosen.slots.sort().values)
    capped = run(fixed, targets, cap)
    assert int(capped[1]) == num_pos - 2 * cap and capped[3] == 2 * cap
    on_compacted = run(compacted, targets, cap)
    assert int(on_compacted[1]) == num_pos - 2 * cap and on_compacted[3] == 2 * cap
    assert_same(capped, on_compacted)


def test_the_kept_positives_are_a_uniform_draw():
    """Without substituted keys each positive is kept with probability capacity / positives, whatever its image
    or slot (the sampler's slot order is not random: GT boxes first, then proposals in index order)."""
    pos = torch.zeros(2 * 64, dtype=torch.bool)
    pos[:40] = True  # image 0: 40 positives
    pos[64:70] = True  # image 1: 6 positives
    samples = roi_heads.SampledRoIs(
        rois=torch.cat([torch.arange(128).div(64, rounding_mode="floor")[:, None].double(), torch.zeros(128, 4)], 1),
        labels=torch.zeros(128, dtype=torch.int64),
        box_targets=torch.zeros(128, 4),
        pos=pos,
        matched_idxs=torch.zeros(128, dtype=torch.int64),
        is_gt=torch.zeros(128, dtype=torch.bool),
        valid=torch.ones(128, dtype=torch.bool),
        slots_per_image=64,
    )
    torch.manual_seed(0)
    kept = torch.zeros(128)
    trials = 400
    for _ in range(trials):
        chosen = select_mask_rois(samples, 2, 16, 10)
        assert int(chosen.dropped) == 46 - 20 and chosen.weights.sum() == 20
        kept[chosen.slots[chosen.weights]] += 1
    rate = kept[pos] / trials  # expected 20 / 46 = 0.435 for every positive
    assert (rate - 20 / 46).abs().max() < 0.1, rate
    assert kept[~pos].sum() == 0


def test_degenerate_batches(hashed_keys):
    head, pooler, features = head_and_features()
    # no positive at all: no GT, no GT proposals
    empty = [
        {
            "boxes": torch.zeros(0, 4, dtype=torch.float64),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, h, w, dtype=torch.uint8),
        }
        for h, w in SIZES
    ]
    proposals = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 10.0, 40.0, 30.0]], dtype=torch.float64)] * 2
    samples = sample(proposals, empty, False)
    loss, dropped, grads, rows = run(samples, empty, 4)
    assert loss == 0 and int(dropped) == 0 and rows == 8
    assert all(g is None or g.isfinite().all() for g in grads)
    # every image full: more positives than pos_limit in each, cap = pos_limit (nothing to save, nothing dropped
    # beyond the sampler's own limit) and a cap below it
    proposals, targets = batch(num_gt=(6, 6), jitter=12)
    samples = sample(proposals, targets, False)
    assert (samples.pos.view(2, -1).sum(1) == SAMPLER.pos_limit).all()
    full = run(samples, targets, SAMPLER.pos_limit)
    assert int(full[1]) == 0 and full[3] == 2 * SAMPLER.pos_limit
    assert_same(full, run(samples, targets, None))
    capped = run(samples, targets, 5)
    assert int(capped[1]) == 2 * SAMPLER.pos_limit - 10 and capped[3] == 10 and torch.isfinite(capped[0])
    with pytest.raises(ValueError, match="mask_slots_per_image"):
        select_mask_rois(samples, 2, SAMPLER.pos_limit, 0)


def test_no_host_sync(hashed_keys, monkeypatch):
    proposals, targets = batch()
    samples = sample(proposals, targets, False)
    head, pooler, features = head_and_features()
    gt_masks = roi_heads.gt_mask_inputs(targets, torch.float64)
    monkeypatch.setattr(roi_heads, "mask_keep_keys", lambda rois: None)  # the default: torch.rand, on the device
    with count_syncs() as counter:
        loss, dropped = mask_head_loss(pooler, head, features, samples, gt_masks, SAMPLER.pos_limit, 5)
        loss.backward()
    assert counter.total == 0, counter.sites


@pytest.mark.parametrize(
    "kind, names",
    [("mask_rcnn", ["mask_dropped"]), ("cascade_mask_rcnn", ["mask_dropped_s0", "mask_dropped_s1", "mask_dropped_s2"])],
)
def test_model_step_reports_the_dropped_positives(kind, names):
    """A fixed-size training step of the tiny Mask R-CNN with a cap: no host sync in the model (counted for Mask
    R-CNN; a cascade's stages run the same code), and the model's `train_stats` holds `mask_dropped` (the training
    loop logs it with the losses); a cascade one per stage. Without a cap there is none."""
    from .stand_ins import random_batch, tiny_model

    model, _ = tiny_model(kind)
    model.train().static_shapes = True
    model.roi_head.mask_slots_per_image = 1
    images, targets = random_batch(num_boxes=(4, 3))
    if kind == "mask_rcnn":
        with count_syncs() as counter:
            losses = model(images, targets)
            sum(losses.values()).backward()
        assert counter.total == 0, counter.sites
    else:
        with torch.no_grad():
            model(images, targets)
    stats = model.train_stats
    assert sorted(stats) == names
    assert all(v.dtype == torch.int64 and v.dim() == 0 and v >= 0 for v in stats.values())
    assert stats[names[0]] > 0  # 1 row per image cannot hold the GT boxes added as proposals
    model.roi_head.mask_slots_per_image = None
    with torch.no_grad():
        model(images, targets)
    assert model.train_stats == {}
