"""One training step and one eval forward of the tiny Faster and Mask R-CNN, with and without ground truth."""

import pytest
import torch

from .stand_ins import random_batch, tiny_model

KINDS = ["faster_rcnn", "mask_rcnn"]
LOSS_KEYS = {
    "faster_rcnn": {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"},
    "mask_rcnn": {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"},
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_boxes", [(3, 1), (2, 0), (0, 0)])
def test_training_step(kind, num_boxes):
    model, _ = tiny_model(kind)
    model.train()
    images, targets = random_batch(num_boxes)
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS[kind]
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    total = sum(losses.values())
    total.backward()
    head_grads = [p.grad for p in model.roi_head.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in head_grads)
    if sum(num_boxes) == 0:
        assert losses["loss_rpn_bbox"] == 0 and losses["loss_bbox"] == 0
    else:
        assert losses["loss_rpn_bbox"] > 0 and losses["loss_cls"] > 0


@pytest.mark.parametrize("kind", KINDS)
def test_eval_forward(kind):
    model, cfg = tiny_model(kind)
    model.eval()
    images, _ = random_batch((1, 1))
    # A barely trained head scores near 1/(C+1); lower the threshold so the post-processing produces detections.
    model.roi_head.score_thr = 0.0
    with torch.no_grad():
        outputs = model(images)
        rescaled = model(images, original_sizes=[(256, 320), (48, 64)])
    assert len(outputs) == 2
    for out, image in zip(outputs, images):
        n = out["boxes"].shape[0]
        assert 0 < n <= cfg.roi_head.test.max_per_img
        assert out["scores"].shape == (n,) and out["labels"].dtype == torch.int64
        assert (out["scores"][:-1] >= out["scores"][1:]).all()
        assert out["labels"].min() >= 0 and out["labels"].max() < cfg.roi_head.stages[0].box_head.num_classes
        h, w = image.shape[1:]
        assert (out["boxes"][:, 2] <= w).all() and (out["boxes"][:, 3] <= h).all()
        if kind == "mask_rcnn":
            assert out["masks"].shape == (n, h, w) and out["masks"].dtype == torch.bool
        else:
            assert "masks" not in out
    for out, big, size in zip(outputs, rescaled, [(256, 320), (48, 64)]):
        scale = torch.tensor([size[1] / 160, size[0] / 128] * 2) if size[0] == 256 else torch.tensor([0.5] * 4)
        torch.testing.assert_close(big["boxes"], out["boxes"] * scale)
        if kind == "mask_rcnn":
            assert big["masks"].shape[1:] == size


def test_training_needs_targets_and_validates():
    model, _ = tiny_model("faster_rcnn")
    model.train()
    images, targets = random_batch((1, 1))
    with pytest.raises(ValueError, match="targets"):
        model(images)
    bad = [{**targets[0], "labels": targets[0]["labels"].int()}, targets[1]]
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        model(images, bad)
    with pytest.raises(ValueError, match=r"images\[0\]"):
        model([images[0].to(torch.int32)], targets[:1])  # uint8 and float are images; int32 is not


def test_image_transform_normalises_and_pads_to_32():
    from detection.modeling.rcnn import ImageTransform

    transform = ImageTransform((123.68, 116.779, 103.939), (58.393, 57.12, 57.375), size_divisor=32)
    a = torch.full((3, 50, 70), 255.0)
    b = torch.zeros(3, 64, 33)
    batch, sizes, padded = transform([a, b])
    assert batch.shape == (2, 3, 64, 96)
    assert sizes == [(50, 70), (64, 33)] and padded == [(64, 96), (64, 64)]
    torch.testing.assert_close(batch[0, :, 0, 0], torch.tensor([(255 - 123.68) / 58.393, (255 - 116.779) / 57.12,
                                                                (255 - 103.939) / 57.375]))
    torch.testing.assert_close(batch[1, 0, 5, 5], torch.tensor(-123.68 / 58.393))
    assert batch[0, :, 50:].eq(0).all() and batch[0, :, :, 70:].eq(0).all()  # zero padding after normalising
    with pytest.raises(ValueError, match="images"):
        transform([])
    # uint8 images (what the loaders deliver where pixels stay integers) give the float batch of their float copies
    g = torch.Generator().manual_seed(0)
    pixels = [torch.randint(0, 256, (3, 50, 70), generator=g, dtype=torch.uint8),
              torch.randint(0, 256, (3, 64, 33), generator=g, dtype=torch.uint8)]
    from_uint8, _, _ = transform(pixels)
    assert from_uint8.dtype == torch.float32
    assert torch.equal(from_uint8, transform([p.float() for p in pixels])[0])
    with pytest.raises(ValueError, match=r"images\[0\]: expected a float or uint8 tensor"):
        transform([pixels[0].int()])


@pytest.mark.parametrize("kind", ["mask_rcnn", "cascade_mask_rcnn"])
def test_channels_last_model_matches_nchw(kind):
    """model.channels_last: the batch, conv weights and activations are NHWC; losses, gradients and detections are
    those of the NCHW model with the same weights. fp64, so that only the layout differs (in fp32 the summation
    order alone moves the gradients of a from-scratch model by up to a few percent after a dozen BN layers)."""
    from dataclasses import replace

    from detection.build import build_model

    nchw, cfg = tiny_model(kind)
    nhwc = build_model(replace(cfg, channels_last=True))
    nchw, nhwc = nchw.double(), nhwc.double()
    nhwc.load_state_dict(nchw.state_dict())
    assert nhwc.backbone.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    images, targets = random_batch((3, 1))
    images = [image.double() for image in images]
    targets = [{**t, "boxes": t["boxes"].double()} for t in targets]
    nhwc.eval()  # no BN statistics update
    with torch.no_grad():
        features = nhwc.neck(nhwc.backbone(nhwc.transform(images)[0]))
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in features)

    losses = {}
    for name, model in (("nchw", nchw), ("nhwc", nhwc)):
        model.train()
        torch.manual_seed(1)  # the RPN and RoI samplers draw the same samples
        losses[name] = model(images, targets)
        sum(losses[name].values()).backward()
    for key, value in losses["nchw"].items():
        torch.testing.assert_close(losses["nhwc"][key], value, rtol=1e-10, atol=1e-12, msg=key)
    grads = dict(nhwc.named_parameters())
    for name, p in nchw.named_parameters():
        if p.grad is not None:  # atol: biases in front of a BN have a zero gradient up to rounding
            torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-8, atol=1e-12, msg=name)

    outputs = {}
    for name, model in (("nchw", nchw), ("nhwc", nhwc)):
        model.eval()
        model.roi_head.score_thr = 0.0
        with torch.no_grad():
            outputs[name] = model(images)
    for a, b in zip(outputs["nchw"], outputs["nhwc"]):
        assert a["scores"].shape[0] > 0
        torch.testing.assert_close(b["scores"], a["scores"], rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(b["boxes"], a["boxes"], rtol=1e-8, atol=1e-8)
        assert torch.equal(b["labels"], a["labels"]) and torch.equal(b["masks"], a["masks"])
