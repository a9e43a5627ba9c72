"""What a run says about itself: the schedule it uses (warmup capped for short epochs, lr steps never reached), a
loss that grows tenfold (the iteration, the lr and what to try), and the traceback of an error that ends it, in
train.log."""

import os

import pytest
from standin import build_standin

from detection import train
from detection.config import SolverConfig
from detection.configs import get_config
from detection.engine.schedule import describe_schedule, effective_warmup_iters, lr_at
from detection.engine.step_stats import DivergenceWatch
from detection.engine.train import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "standin_config.py")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("shapes"))


def _train(work_dir, data_root, *extra):
    argv = ["--config", CONFIG, "--data-root", data_root, "--work-dir", str(work_dir), "--no-progress", *extra]
    return train.main(argv, model_builder=build_standin)


def test_warmup_is_capped_for_short_epochs():
    solver = SolverConfig(warmup_iters=50, warmup_max_epochs=3)
    assert effective_warmup_iters(solver, 10) == 30  # 40 images at 4 per batch: 3 epochs, not 5
    assert effective_warmup_iters(solver, 100) == 50  # long epochs: the config's warmup
    assert effective_warmup_iters(solver, 0) == 1
    assert effective_warmup_iters(SolverConfig(warmup_iters=50), 2) == 50  # 0: no cap
    assert lr_at(1.0, solver, 15, 0, warmup_iters=30) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_at(1.0, solver, 30, 3, warmup_iters=30) == 1.0


@pytest.mark.parametrize("name", ["shapes_mask_rcnn_s14", "shapes_faster_rcnn_s14",
                                  "mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco"])
def test_the_shipped_configs_keep_their_warmup(name):
    """The default run (400 images at 4 per batch: 100 iterations per epoch) and the COCO configs are unchanged."""
    cfg = get_config(name)
    iters_per_epoch = cfg.data.shapes_num_train // cfg.data.images_per_gpu if cfg.data.dataset == "shapes" else 7000
    assert effective_warmup_iters(cfg.solver, iters_per_epoch) == cfg.solver.warmup_iters


def test_the_schedule_is_described_with_its_pitfalls():
    solver = SolverConfig(lr=0.01, warmup_iters=50, warmup_max_epochs=3, lr_steps=(9, 11), epochs=12)
    line, warning = describe_schedule(solver, 0.0025, 10)
    assert line.startswith("schedule: 12 epochs × 10 iterations = 120 iterations; warmup 30 iterations "
                           "(solver.warmup_iters 50 capped at solver.warmup_max_epochs=3 epochs)")
    assert "lr ×0.1 after epochs 9 (iteration 90), 11 (iteration 110)" in line and warning is None
    _, warning = describe_schedule(SolverConfig(lr_steps=(18, 21), epochs=12, warmup_iters=500), 0.01, 10)
    assert "solver.lr_steps=(18, 21) has steps at or after the last epoch" in warning
    assert "the warmup (500 iterations) lasts the whole run (120 iterations)" in warning


def test_divergence_watch_reports_a_tenfold_growth_once():
    watch = DivergenceWatch()
    seen = [watch.update({"loss_cls": v, "loss_bbox": 0.01 * (i + 1), "grad_norm": 1000.0 * i})
            for i, v in enumerate([1.0, 0.4, 0.2, 0.07, 0.82, 2.5, 9.0])]
    assert seen == [[], [], [], [], [("loss_cls", 0.82, 0.07)], [], []]  # the run; loss_bbox is small


def test_divergence_watch_is_quiet_when_a_small_term_grows_to_its_share_of_the_loss():
    """The default run's first 100 iterations: the box loss grows from 0.03 to 0.58 as the RPN starts to find
    positives, while the total stays near 2: no divergence."""
    names = ("loss", "loss_bbox", "loss_cls", "loss_mask", "loss_rpn_bbox", "loss_rpn_cls")
    lines = [
        (2.6621, 0.1305, 0.8450, 0.9857, 0.0082, 0.6927), (2.2891, 0.1265, 0.5692, 0.9194, 0.0088, 0.6652),
        (1.6085, 0.0327, 0.1933, 0.8191, 0.0097, 0.5538), (1.1667, 0.0353, 0.1368, 0.7230, 0.0130, 0.2586),
        (1.4290, 0.2059, 0.4061, 0.6811, 0.0113, 0.1246), (1.7487, 0.3873, 0.5792, 0.6621, 0.0136, 0.1065),
        (1.7203, 0.4274, 0.5674, 0.6363, 0.0116, 0.0777), (1.9370, 0.5787, 0.6647, 0.6134, 0.0099, 0.0703),
        (1.8798, 0.5649, 0.6613, 0.5765, 0.0124, 0.0647), (1.9119, 0.5721, 0.6862, 0.5698, 0.0118, 0.0720),
    ]
    watch = DivergenceWatch()
    assert [watch.update(dict(zip(names, line))) for line in lines] == [[]] * len(lines)
    # The same history, then the classification loss of a diverging run: reported.
    grown = watch.update(dict(zip(names, (12.0, 0.57, 10.5, 0.57, 0.012, 0.07))))
    assert grown == [("loss_cls", 10.5, 0.5674)]  # the total grew 7x: below the factor


def test_divergence_watch_is_quiet_on_a_converging_run():
    watch = DivergenceWatch()
    for i in range(50):
        assert watch.update({"loss": 3.0 / (1 + i) + 0.1 * (i % 3), "loss_rpn_bbox": 0.001 * (i % 7)}) == []


def test_a_diverging_run_says_so_in_the_log(tmp_path, data_root, monkeypatch):
    step = Trainer._step

    def growing(self, *args):
        names, stacked = step(self, *args)
        return names, stacked * (1000.0 if self.iteration >= 9 else 1.0)  # logged losses x1000 from iteration 10

    monkeypatch.setattr(Trainer, "_step", growing)
    assert _train(tmp_path, data_root) == 0
    log = (tmp_path / "train.log").read_text()
    assert "schedule: 2 epochs × 8 iterations = 16 iterations; warmup 3 iterations" in log
    warning = next(line for line in log.splitlines() if "the run may be diverging" in line)
    assert " at iteration 12 (epoch 2) " in warning and "at lr 0.002" in warning, warning
    assert "solver.lr=0.005" in warning and "solver.warmup_iters" in warning


def test_an_error_that_ends_a_run_is_in_train_log(tmp_path, data_root, monkeypatch):
    step = Trainer._step

    def failing(self, images, targets, *args):
        if self.iteration == 5:
            raise RuntimeError("the sixth step failed")
        return step(self, images, targets, *args)

    monkeypatch.setattr(Trainer, "_step", failing)
    with pytest.raises(RuntimeError, match="the sixth step failed") as caught:
        _train(tmp_path, data_root)
    log = (tmp_path / "train.log").read_text()
    assert "training failed:\nTraceback (most recent call last):" in log
    assert "RuntimeError: the sixth step failed" in log and "in failing" in log
    if hasattr(caught.value, "__notes__"):  # Python 3.11+: the batch is named
        note = caught.value.__notes__[0]
        assert note.startswith("in training iteration 6 (epoch 1, batch 6), image ids [") and note in log
