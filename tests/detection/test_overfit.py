"""Training the tiny Mask R-CNN on two fixed images drives every loss down."""

import torch

from .stand_ins import random_batch, tiny_model

STEPS = 30


def test_losses_decrease_when_overfitting_two_images():
    torch.manual_seed(0)
    model, _ = tiny_model("mask_rcnn", seed=0)
    model.train()
    images, targets = random_batch((2, 3), seed=1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    history = []
    for _ in range(STEPS):
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    first = {k: sum(h[k] for h in history[:3]) / 3 for k in history[0]}
    last = {k: sum(h[k] for h in history[-3:]) / 3 for k in history[0]}
    # loss_bbox is left out of the comparison: it starts near zero (the positives are at first mostly the GT boxes
    # added as proposals, whose targets are zero) and grows as the RPN learns and more proposals become positive.
    for name in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_mask"):
        assert last[name] < 0.7 * first[name], (name, first[name], last[name])
    assert all(torch.isfinite(torch.tensor(h["loss_bbox"])) for h in history)
    assert sum(last.values()) < 0.7 * sum(first.values())
