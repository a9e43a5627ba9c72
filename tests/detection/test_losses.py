import math

import pytest
import torch

from detection.modeling.losses import (
    box_regression_loss,
    l1_loss,
    mask_bce_loss,
    sigmoid_ce_loss,
    smooth_l1_loss,
    softmax_ce_loss,
)


def test_sigmoid_ce_weighted_and_normalised():
    logits = torch.tensor([0.0, 2.0, -1.0])
    targets = torch.tensor([1.0, 0.0, 0.0])
    weights = torch.tensor([1.0, 1.0, 0.0])
    expected = (math.log(2.0) + math.log(1 + math.exp(2.0))) / 4
    torch.testing.assert_close(sigmoid_ce_loss(logits, targets, weights, torch.tensor(4.0)), torch.tensor(expected))


def test_softmax_ce():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 0])
    expected = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    torch.testing.assert_close(softmax_ce_loss(logits, labels), torch.tensor(expected))
    torch.testing.assert_close(softmax_ce_loss(logits, labels, avg_factor=4), torch.tensor(expected / 2))


def test_l1_and_smooth_l1():
    pred = torch.tensor([[0.0, 0.05, 1.0, -3.0]])
    target = torch.zeros(1, 4)
    weights = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(l1_loss(pred, target, weights, 2), torch.tensor(1.05 / 2))
    # beta 1: 0.5 * 0.05^2 + (1 - 0.5); the weighted-out element does not count
    torch.testing.assert_close(smooth_l1_loss(pred, target, weights, 1, beta=1.0), torch.tensor(0.00125 + 0.5))
    # beta 1/9: |0.05| < 1/9 -> 0.5 * 0.0025 * 9; |1| -> 1 - 1/18
    torch.testing.assert_close(
        box_regression_loss("smooth_l1", pred, target, weights, 1, beta=1 / 9), torch.tensor(0.01125 + 1 - 1 / 18)
    )
    with pytest.raises(ValueError, match="box loss"):
        box_regression_loss("giou", pred, target, weights, 1)


def test_zero_avg_factor_and_empty_mask_loss():
    zero = l1_loss(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, 4), torch.tensor(0.0))
    assert zero == 0
    logits = torch.zeros(0, 28, 28, requires_grad=True)
    loss = mask_bce_loss(logits, torch.zeros(0, 28, 28))
    loss.backward()
    assert loss == 0 and logits.grad is not None
    torch.testing.assert_close(mask_bce_loss(torch.zeros(1, 2, 2), torch.ones(1, 2, 2)), torch.tensor(math.log(2.0)))
