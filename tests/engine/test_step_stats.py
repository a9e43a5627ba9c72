"""The loop's per-step numbers stay on the device: LossWindow and FiniteWatch against plain arithmetic, and a
training step that forces no host synchronisation (counted by benchmarks.count_syncs' dispatch mode)."""

import math

import torch

from detection.engine.step_stats import FiniteWatch, LossWindow, stack_losses


def test_loss_window_averages_and_clears():
    window = LossWindow()
    assert window.averages() == {}
    for value in (1.0, 2.0, 6.0):
        window.add(*stack_losses({"loss": torch.tensor(value), "loss_cls": torch.tensor(value / 2)}))
    assert window.averages() == {"loss": 3.0, "loss_cls": 1.5}
    window.add(*stack_losses({"loss": torch.tensor(5.0)}))
    assert window.averages() == {"loss": 5.0}  # the previous window was cleared


def test_finite_watch_keeps_the_first_bad_iteration_and_its_values():
    watch = FiniteWatch(torch.device("cpu"))
    watch.update(1, 0, 0, *stack_losses({"loss": torch.tensor(1.0), "grad_norm": torch.tensor(3.0)}))
    assert watch.first_bad() is None and watch.where == {}  # checked and cleared
    watch.update(2, 0, 1, *stack_losses({"loss": torch.tensor(1.5), "grad_norm": torch.tensor(2.0)}))
    watch.update(3, 1, 0, *stack_losses({"loss": torch.tensor(float("nan")), "grad_norm": torch.tensor(2.0)}))
    watch.update(4, 1, 1, *stack_losses({"loss": torch.tensor(float("inf")), "grad_norm": torch.tensor(float("nan"))}))
    iteration, epoch, step, values = watch.first_bad()
    assert (iteration, epoch, step) == (3, 1, 0)
    assert values == "grad_norm=2.0, loss=nan"
    watch2 = FiniteWatch(torch.device("cpu"))
    watch2.update(7, 2, 3, *stack_losses({"loss": torch.tensor(-math.inf)}))
    assert watch2.first_bad()[:3] == (7, 2, 3)


def test_updates_force_no_host_synchronisation():
    from benchmarks.count_syncs import count_syncs

    watch, window = FiniteWatch(torch.device("cpu")), LossWindow()
    with count_syncs() as counter:
        for i in range(5):
            values = {"loss": torch.tensor(float(i)), "loss_cls": torch.tensor(float("nan") if i == 3 else 1.0)}
            names, stacked = stack_losses(values)
            watch.update(i + 1, 0, i, names, stacked)
            window.add(names, stacked)
    assert counter.total == 0, counter.sites
    assert watch.first_bad()[0] == 4
