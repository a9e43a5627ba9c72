"""The training loop: SGD with linear LR scaling, linear warmup and step decay by epoch; optional bf16 autocast;
metrics, checkpoints and evaluation per epoch (and, with solver.checkpoint_iters, checkpoints inside an epoch);
exact resume from the last checkpoint.

Reproducibility: the data order and each sample's augmentation are functions of (seed, epoch, index), the learning
rate is a function of (iteration, epoch), and the RNG states are saved with each checkpoint — so resuming from a
checkpoint written after batch b of epoch k replays batch b+1 of epoch k and everything after it exactly as an
uninterrupted run does (the batches already trained are skipped without being loaded).
"""

import dataclasses
import math
import os
import random
import time

import numpy as np
import torch

from ..config import Config, SolverConfig
from ..data.build import build_dataset, prepare_data
from ..data.loader import build_test_loader, build_train_loader, set_loader_epoch
from . import distributed as dist_utils
from .checkpoint import LATEST, get_rng_states, load_checkpoint, save_checkpoint, set_rng_states
from .evaluate import evaluate
from .metrics import MetricsWriter, progress_bar, setup_logging
from .resources import peak_memory_mb

MODEL_TARGET_KEYS = ("boxes", "labels", "masks")


class NonFiniteLossError(RuntimeError):
    """Raised when the (rank-averaged) loss is NaN or infinite; the message names the iteration."""


def check_solver(solver: SolverConfig) -> None:
    """Reject solver settings the loop cannot honour, naming the field and what it expects."""
    positive = ("lr", "base_batch_size", "epochs", "checkpoint_interval", "eval_interval", "log_interval")
    for name in positive:
        if not getattr(solver, name) > 0:
            raise ValueError(f"solver.{name}: expected a positive number, got {getattr(solver, name)!r}")
    for name in ("momentum", "weight_decay", "warmup_iters", "warmup_ratio", "keep_checkpoints", "checkpoint_iters"):
        if getattr(solver, name) < 0:
            raise ValueError(f"solver.{name}: expected a number >= 0, got {getattr(solver, name)!r}")
    if solver.grad_clip is not None and not solver.grad_clip > 0:
        raise ValueError(f"solver.grad_clip: expected a positive max norm or None, got {solver.grad_clip!r}")
    if list(solver.lr_steps) != sorted(solver.lr_steps) or any(step < 1 for step in solver.lr_steps):
        raise ValueError(f"solver.lr_steps: expected increasing epoch counts >= 1, got {solver.lr_steps!r}")


def scaled_lr(solver: SolverConfig, total_batch: int) -> float:
    """Linear scaling rule: solver.lr is for solver.base_batch_size images per iteration."""
    return solver.lr * total_batch / solver.base_batch_size


def lr_at(base_lr: float, solver: SolverConfig, iteration: int, epoch: int) -> float:
    """LR of optimizer step `iteration` (0-based, global) in `epoch` (0-based): ×gamma for each step epoch already
    reached (lr_steps are counted in completed epochs), times a linear warmup factor from warmup_ratio to 1."""
    lr = base_lr * solver.gamma ** sum(epoch >= step for step in solver.lr_steps)
    if iteration < solver.warmup_iters:
        alpha = iteration / solver.warmup_iters
        lr *= solver.warmup_ratio * (1 - alpha) + alpha
    return lr


def build_optimizer(model: torch.nn.Module, solver: SolverConfig, lr: float) -> torch.optim.SGD:
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: one multi-tensor update instead of a Python loop over parameters (the default only on CUDA).
    return torch.optim.SGD(params, lr=lr, momentum=solver.momentum, weight_decay=solver.weight_decay, foreach=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _to_device(images, targets, device):
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{k: t[k].to(device, non_blocking=True) for k in MODEL_TARGET_KEYS if k in t} for t in targets]
    return images, targets


def _any_rank_empty(has_batch: bool, device: torch.device) -> bool:
    """Skip the step on every rank if any rank has no readable image (DDP needs all ranks in each step)."""
    if not dist_utils.is_distributed():
        return not has_batch
    flag = torch.tensor([0.0 if has_batch else 1.0], device=device)
    torch.distributed.all_reduce(flag)
    return flag.item() > 0


class Trainer:
    """Holds what one run needs; `run()` trains all remaining epochs and returns the last evaluation metrics."""

    def __init__(self, cfg: Config, work_dir: str, *, model_builder, data_root: str | None = None,
                 resume: bool = False, device: str | None = None, progress: bool = True):
        check_solver(cfg.solver)
        self.cfg, self.work_dir, self.progress = cfg, work_dir, progress
        self.info = dist_utils.init_distributed(device)
        self.log = setup_logging(work_dir, self.info.is_main)
        solver, data = cfg.solver, cfg.data
        seed_everything(solver.seed)

        root = prepare_data(data, data_root) if self.info.is_main else None
        dist_utils.barrier()
        root = root or prepare_data(data, data_root)  # other ranks: the files exist now, this only resolves
        self.train_set = build_dataset(data, root, train=True, seed=solver.seed)
        self.val_set = build_dataset(data, root, train=False)
        world, rank = self.info.world_size, self.info.rank
        self.train_loader = build_train_loader(self.train_set, data.images_per_gpu, data.workers_per_gpu,
                                               solver.seed, rank, world)
        self.val_loader = build_test_loader(self.val_set, data.images_per_gpu, data.workers_per_gpu, rank, world)

        self.model = model_builder(cfg.model).to(self.info.device)
        total_batch = data.images_per_gpu * world
        self.base_lr = scaled_lr(solver, total_batch)
        self.optimizer = build_optimizer(self.model, solver, self.base_lr)
        self.log.info(f"config {cfg.name}: {len(self.train_set)} train / {len(self.val_set)} val images, "
                      f"{world} process(es) × {data.images_per_gpu} images = total batch {total_batch}; "
                      f"lr {solver.lr} × {total_batch}/{solver.base_batch_size} = {self.base_lr:.6g} "
                      f"(linear scaling); device {self.info.device}")
        self.start_epoch, self.start_step, self.iteration = 0, 0, 0
        if resume:
            self._resume()
        self.ddp_model = dist_utils.wrap_model(self.model, self.info)
        self.metrics = MetricsWriter(work_dir, self.info.is_main)

    def _resume(self) -> None:
        path = os.path.join(self.work_dir, LATEST)
        if not os.path.isfile(path):
            self.log.info(f"resume: no checkpoint at {path}, starting from scratch")
            return
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch, self.iteration = state["epoch"], state["iteration"]
        self.start_step = state.get("epoch_step", 0)
        set_rng_states(state["rng"])
        where = f", batch {self.start_step} of epoch {self.start_epoch + 1}" if self.start_step else ""
        self.log.info(f"resumed from {path}: epoch {self.start_epoch} done{where}, iteration {self.iteration}")

    def run(self) -> dict:
        solver = self.cfg.solver
        metrics = {}
        try:
            for epoch in range(self.start_epoch, solver.epochs):
                start_step, self.start_step = self.start_step, 0
                self.train_one_epoch(epoch, start_step)
                last = epoch + 1 == solver.epochs
                # The state a resumed run restores is the one right after training this epoch: evaluation must not
                # change what follows, so the RNG states are snapshotted here and put back after it.
                rng = get_rng_states()
                if last or (epoch + 1) % solver.checkpoint_interval == 0:
                    self._save(epoch + 1, 0, rng)
                dist_utils.barrier()
                if last or (epoch + 1) % solver.eval_interval == 0:
                    metrics = self.evaluate(epoch + 1)
                set_rng_states(rng)
        finally:
            self.metrics.close()
        return metrics

    def _save(self, epoch: int, epoch_step: int, rng: dict) -> None:
        """Checkpoint (rank 0 only) after `epoch` completed epochs and `epoch_step` batches of the next one."""
        if not self.info.is_main:
            return
        path = save_checkpoint(self.work_dir, self.model, self.optimizer, epoch=epoch, epoch_step=epoch_step,
                               iteration=self.iteration, config_name=self.cfg.name, rng=rng,
                               keep=self.cfg.solver.keep_checkpoints,
                               meta={"class_names": self.train_set.class_names,
                                     "config_values": dataclasses.asdict(self.cfg)})
        self.log.info(f"saved {path}" + (f" (iteration {self.iteration})" if epoch_step else ""))

    def evaluate(self, epoch: int) -> dict:
        out_path = os.path.join(self.work_dir, f"results_epoch_{epoch}.json")
        metrics = evaluate(self.ddp_model, self.val_loader, self.info.device, with_masks=self.cfg.data.with_masks,
                           amp=self.cfg.solver.eval_amp, out_path=out_path, is_main=self.info.is_main,
                           progress=self.progress, log=self.log.info)
        for iou_type, stats in metrics.items():
            self.metrics.write(f"eval_{iou_type}", self.iteration, {"epoch": epoch, **stats})
        return metrics

    def train_one_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Train epoch index `epoch` from its batch `start_step` (> 0 when resuming in the middle of it)."""
        solver, device = self.cfg.solver, self.info.device
        set_loader_epoch(self.train_loader, epoch, start_step)
        self.ddp_model.train()
        skipped, start = 0, time.time()
        num_steps = self.train_loader.batch_sampler.num_batches()
        total_iters = num_steps * solver.epochs
        bar = progress_bar(self.train_loader, self.progress and self.info.is_main,
                           desc=f"epoch {epoch + 1}/{solver.epochs}", initial=start_step, total=num_steps)
        window: dict[str, list[float]] = {}  # losses since the last log line, averaged in it
        for step, (images, targets, dropped) in enumerate(bar, start=start_step):
            skipped += dropped
            if _any_rank_empty(bool(images), device):
                continue
            lr = lr_at(self.base_lr, solver, self.iteration, epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            losses = self._step(images, targets, epoch, step)
            self.iteration += 1
            for name, value in losses.items():
                window.setdefault(name, []).append(value)
            bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{lr:.2e}", refresh=False)
            if self.iteration % solver.log_interval == 0 or step + 1 == num_steps:
                averages = {name: sum(values) / len(values) for name, values in window.items()}
                window.clear()
                elapsed = time.time() - start
                eta = elapsed / (step + 1 - start_step) * (total_iters - epoch * num_steps - step - 1)
                memory = peak_memory_mb(device)  # MB since the previous log line, as mmdetection's `memory`
                extra = {} if memory is None else {"memory": memory}
                self.metrics.write("train", self.iteration, {"epoch": epoch + 1, "lr": lr, **averages, **extra})
                self.log.info(f"epoch {epoch + 1} iter {self.iteration} lr {lr:.3e} "
                              + " ".join(f"{k} {v:.4f}" for k, v in averages.items())
                              + (f" memory {memory} MB" if extra else "") + f" eta {eta / 60:.1f} min")
            if solver.checkpoint_iters > 0 and self.iteration % solver.checkpoint_iters == 0 and step + 1 < num_steps:
                self._save(epoch, step + 1, get_rng_states())
        bar.close()
        skipped = sum(dist_utils.all_gather_objects(skipped))
        if skipped:
            self.log.warning(f"epoch {epoch + 1}: {skipped} unreadable image(s) skipped")
        self.log.info(f"epoch {epoch + 1} done in {time.time() - start:.1f} s")

    def _step(self, images, targets, epoch: int, step: int) -> dict[str, float]:
        """One optimizer step; returns the rank-averaged losses (and grad_norm when clipping)."""
        device, solver = self.info.device, self.cfg.solver
        images, targets = _to_device(images, targets, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=solver.amp and device.type == "cuda"):
            loss_dict = self.ddp_model(images, targets)
        loss = sum(loss_dict.values())
        logged = dist_utils.reduce_mean({"loss": loss, **loss_dict})
        if not all(math.isfinite(v) for v in logged.values()):
            values = ", ".join(f"{k}={v}" for k, v in logged.items())
            latest = os.path.join(self.work_dir, LATEST)
            kept = f"the last good checkpoint is {latest}" if os.path.isfile(latest) else "no checkpoint was saved yet"
            raise NonFiniteLossError(f"non-finite loss at iteration {self.iteration + 1} (epoch {epoch + 1}, step "
                                     f"{step + 1}): {values}; training stopped, {kept}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if solver.grad_clip is not None:
            params = [p for p in self.model.parameters() if p.grad is not None]
            logged["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, solver.grad_clip))
        self.optimizer.step()
        return logged


def train(cfg: Config, work_dir: str, *, model_builder=None, data_root: str | None = None, resume: bool = False,
          device: str | None = None, progress: bool = True) -> dict:
    """Train `cfg` in `work_dir` (resuming from latest.pth when `resume`) and return the final evaluation metrics
    {"bbox": {"AP": ...}, "segm": {...}}. `model_builder(cfg.model)` defaults to detection.build.build_model."""
    if model_builder is None:
        from ..build import build_model

        def model_builder(model_cfg):  # training starts from backbone.pretrained
            return build_model(model_cfg, pretrained=True)
    trainer = Trainer(cfg, work_dir, model_builder=model_builder, data_root=data_root, resume=resume, device=device,
                      progress=progress)
    return trainer.run()

