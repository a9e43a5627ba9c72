"""The training loop: SGD with linear LR scaling, linear warmup and step decay by epoch; optional bf16 autocast;
metrics, checkpoints and evaluation per epoch (and, with solver.checkpoint_iters, checkpoints inside an epoch);
exact resume from the last checkpoint.

Reproducibility: the data order and each sample's augmentation are functions of (seed, epoch, index), the learning
rate is a function of (iteration, epoch), and the RNG states are saved with each checkpoint — so resuming from a
checkpoint written after batch b of epoch k replays batch b+1 of epoch k and everything after it exactly as an
uninterrupted run does (the batches already trained are skipped without being loaded).

Ctrl-C (SIGINT) in a single-process run lets the current step finish, saves latest.pth where the run stands and
raises TrainingInterrupted (a second Ctrl-C stops at once, keeping the last checkpoint). The work dir rules (no
silent overwrite, no silent restart, metrics cut back on resume) are in work_dir.py.
"""

import dataclasses
import os
import random
import signal
import threading
import time
import traceback

import numpy as np
import torch

from ..config import Config, SolverConfig
from ..data.build import build_dataset, prepare_data
from ..data.loader import build_test_loader, build_train_loader, set_loader_epoch
from . import distributed as dist_utils
from .checkpoint import LATEST, get_rng_states, load_checkpoint, save_checkpoint, set_rng_states, trained_by
from .checks import check_num_classes
from .errors import UserError
from .evaluate import evaluate
from .metrics import MetricsWriter, progress_bar, setup_logging
from .resources import peak_memory_mb
from .schedule import describe_schedule, effective_warmup_iters, lr_at
from .step_stats import DivergenceWatch, FiniteWatch, LossWindow, stack_losses
from .threads import choose_threads
from .work_dir import check_work_dir, remove_stale_temporaries, truncate_metrics

MODEL_TARGET_KEYS = ("boxes", "labels", "masks")


class NonFiniteLossError(RuntimeError):
    """Raised when the (rank-averaged) loss is NaN or infinite; the message names the iteration."""


class TrainingInterrupted(RuntimeError):
    """Raised after Ctrl-C; the message says what was saved."""


def check_solver(solver: SolverConfig) -> None:
    """Reject solver settings the loop cannot honour, naming the field and what it expects."""
    positive = ("lr", "base_batch_size", "epochs", "checkpoint_interval", "eval_interval", "log_interval")
    for name in positive:
        if not getattr(solver, name) > 0:
            raise UserError(f"solver.{name}: expected a positive number, got {getattr(solver, name)!r}")
    for name in ("momentum", "weight_decay", "warmup_iters", "warmup_ratio", "warmup_max_epochs", "keep_checkpoints",
                 "checkpoint_iters"):
        if getattr(solver, name) < 0:
            raise UserError(f"solver.{name}: expected a number >= 0, got {getattr(solver, name)!r}")
    if solver.grad_clip is not None and not solver.grad_clip > 0:
        raise UserError(f"solver.grad_clip: expected a positive max norm or None, got {solver.grad_clip!r}")
    if list(solver.lr_steps) != sorted(solver.lr_steps) or any(step < 1 for step in solver.lr_steps):
        raise UserError(f"solver.lr_steps: expected increasing epoch counts >= 1, got {solver.lr_steps!r}")


def scaled_lr(solver: SolverConfig, total_batch: int) -> float:
    """Linear scaling rule: solver.lr is for solver.base_batch_size images per iteration."""
    return solver.lr * total_batch / solver.base_batch_size


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


def _any_rank_short(full_batch: bool) -> bool:
    """Skip the step on every rank if any rank's batch lost images it could not replace (a batch of one image
    cannot train batch-statistics BatchNorm; DDP needs all ranks in each step). The ranks agree over the host
    gloo group: a CPU flag, so the step never waits for the GPU here."""
    if not dist_utils.is_distributed():
        return not full_batch
    flag = torch.tensor([0 if full_batch else 1], dtype=torch.int32)
    torch.distributed.all_reduce(flag, group=dist_utils.host_group())
    return bool(flag.item())


class Trainer:
    """Holds what one run needs; `run()` trains all remaining epochs and returns the last evaluation metrics."""

    def __init__(self, cfg: Config, work_dir: str, *, model_builder, data_root: str | None = None,
                 resume: bool = False, overwrite: bool = False, device: str | None = None, progress: bool = True,
                 threads: int = 0):
        check_solver(cfg.solver)
        self.cfg, self.work_dir, self.progress = cfg, work_dir, progress
        self.info = dist_utils.init_distributed(device)
        if self.info.is_main or resume:  # rank 0 removes an overwritten run; the others only check a resume
            check_work_dir(work_dir, resume, overwrite)
        stale = remove_stale_temporaries(work_dir) if self.info.is_main else []
        self.log = setup_logging(work_dir, self.info.is_main)
        if stale:
            self.log.info(f"removed temporary files left by an interrupted save: {', '.join(stale)}")
        solver, data = cfg.solver, cfg.data
        seed_everything(solver.seed)
        choice = choose_threads(threads, data.workers_per_gpu, int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                                on_cuda=self.info.device.type == "cuda")
        torch.set_num_threads(choice.threads)
        self.log.info(choice.describe())
        # The model first: a config mistake is reported before any data is generated or read (no data step uses
        # the global RNG, so the initial weights are the same in either order).
        self.model = build_checked(model_builder, cfg.model).to(self.info.device)

        self._build_data(data_root, choice.workers)
        world = self.info.world_size
        total_batch = data.images_per_gpu * world
        self.base_lr = scaled_lr(solver, total_batch)
        self.optimizer = build_optimizer(self.model, solver, self.base_lr)
        self.log.info(f"config {cfg.name}: {len(self.train_set)} train / {len(self.val_set)} val images, "
                      f"{world} process(es) × {data.images_per_gpu} images = total batch {total_batch}; "
                      f"lr {solver.lr} × {total_batch}/{solver.base_batch_size} = {self.base_lr:.6g} "
                      f"(linear scaling); device {self.info.device}")
        iters_per_epoch = self.train_loader.batch_sampler.num_batches()
        self.warmup_iters = effective_warmup_iters(solver, iters_per_epoch)
        schedule, schedule_warning = describe_schedule(solver, self.base_lr, iters_per_epoch)
        self.log.info(schedule)
        if schedule_warning:
            self.log.warning(f"schedule: {schedule_warning}")
        filled = self.train_loader.batch_sampler.filled_per_epoch()
        if filled:
            self.log.info(f"the last batch of each epoch is completed with {filled} image(s) repeated from the start "
                          f"of the epoch ({len(self.train_loader.batch_sampler.sampler)} images per process do not "
                          f"divide into batches of {data.images_per_gpu}); no batch has fewer images")
        self.start_epoch, self.start_step, self.iteration = 0, 0, 0
        if resume:
            self._resume()
        self.saved_iteration = self.iteration
        self.ddp_model = dist_utils.wrap_model(self.model, self.info)
        self.metrics = MetricsWriter(work_dir, self.info.is_main, purge_step=self.iteration + 1 if resume else None)
        self.in_step = self.stop_requested = False
        self.watch = FiniteWatch(self.info.device)  # non-finite losses, read at log steps and before a save
        self.divergence = DivergenceWatch()  # losses growing tenfold, checked on the logged averages

    def _build_data(self, data_root: str | None, workers: int) -> None:
        """Datasets (checked against the model's class count) and loaders: full training batches, evaluation at
        data.test_images_per_gpu."""
        data, seed = self.cfg.data, self.cfg.solver.seed
        root = prepare_data(data, data_root) if self.info.is_main else None
        dist_utils.barrier()
        root = root or prepare_data(data, data_root)  # other ranks: the files exist now, this only resolves
        self.train_set = build_dataset(data, root, train=True, seed=seed)
        self.val_set = build_dataset(data, root, train=False)
        check_num_classes(self.cfg.model, self.train_set, "training")
        check_num_classes(self.cfg.model, self.val_set, "validation")
        world, rank = self.info.world_size, self.info.rank
        # Pinned batches on CUDA: the non_blocking copies in _to_device then overlap with the queued kernels.
        pin = self.info.device.type == "cuda"
        self.train_loader = build_train_loader(self.train_set, data.images_per_gpu, workers, seed, rank, world, pin)
        self.val_loader = build_test_loader(self.val_set, data.test_images_per_gpu, workers, rank, world, pin)
        self.min_batch = min(2, data.images_per_gpu)

    def _resume(self) -> None:
        path = os.path.join(self.work_dir, LATEST)
        state = load_checkpoint(path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"--resume: {path}{trained_by(state)} does not fit config {self.cfg.name!r}: "
                            f"{str(err)[:400]}") from None
        if state.get("config") != self.cfg.name:
            self.log.warning(f"resume: {path} was written by config {state.get('config')!r}, this run is "
                             f"{self.cfg.name!r}")
        self.start_epoch, self.iteration = state["epoch"], state["iteration"]
        self.start_step = state.get("epoch_step", 0)
        set_rng_states(state["rng"])
        where = f", batch {self.start_step} of epoch {self.start_epoch + 1}" if self.start_step else ""
        self.log.info(f"resumed from {path}: epoch {self.start_epoch} done{where}, iteration {self.iteration}")
        if self.info.is_main:
            cut = truncate_metrics(self.work_dir, self.iteration)
            if cut:
                self.log.info(f"metrics.jsonl: removed {cut} record(s) after iteration {self.iteration}, which this "
                              "run repeats")

    def run(self) -> dict:
        solver = self.cfg.solver
        metrics = {}
        previous_handler = self._install_interrupt_handler()
        try:
            for epoch in range(self.start_epoch, solver.epochs):
                start_step, self.start_step = self.start_step, 0
                self.train_one_epoch(epoch, start_step)
                last = epoch + 1 == solver.epochs
                # The state a resumed run restores is the one right after training this epoch: evaluation must not
                # change what follows, so the RNG states are snapshotted here and put back after it.
                rng = get_rng_states()
                try:
                    if last or (epoch + 1) % solver.checkpoint_interval == 0:
                        self._save(epoch + 1, 0, rng)
                    dist_utils.barrier()
                    if last or (epoch + 1) % solver.eval_interval == 0:
                        metrics = self.evaluate(epoch + 1)
                except KeyboardInterrupt:
                    self._stop_interrupted(epoch + 1, 0, rng, "after its training epoch")
                set_rng_states(rng)
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            self.metrics.close()
        return metrics

    def _install_interrupt_handler(self):
        """First Ctrl-C during a step: finish the step, then stop and save. Otherwise KeyboardInterrupt at once.
        Single-process runs in the main thread only (several ranks cannot agree on where to stop here)."""
        if dist_utils.is_distributed() or threading.current_thread() is not threading.main_thread():
            return None

        def on_sigint(signum, frame):
            if self.in_step and not self.stop_requested:
                self.stop_requested = True
                self.log.warning("interrupt: finishing this step, then saving (Ctrl-C again stops at once, "
                                 "without saving this step)")
                return
            raise KeyboardInterrupt

        return signal.signal(signal.SIGINT, on_sigint)

    def _stop_interrupted(self, epoch: int, epoch_step: int, rng: dict | None, where: str) -> None:
        """Save the state after `epoch` epochs and `epoch_step` batches (when it is consistent and new), then raise
        TrainingInterrupted saying what the work dir holds."""
        latest = os.path.join(self.work_dir, LATEST)
        if self.in_step or dist_utils.is_distributed():
            kept = f"the last checkpoint is {latest}" if os.path.isfile(latest) else "no checkpoint was saved"
            raise TrainingInterrupted(f"stopped during iteration {self.iteration + 1}; {kept}") from None
        if self.iteration != self.saved_iteration:
            self._save(epoch, epoch_step, rng if rng is not None else get_rng_states())
        if not os.path.isfile(latest):
            raise TrainingInterrupted("stopped before the first step; nothing was saved") from None
        raise TrainingInterrupted(f"stopped at iteration {self.iteration} (epoch {epoch + (epoch_step > 0)}, "
                                  f"{where}); {latest} holds this state") from None

    def _save(self, epoch: int, epoch_step: int, rng: dict) -> None:
        """Checkpoint (rank 0 only) after `epoch` completed epochs and `epoch_step` batches of the next one, once
        every step since the last check is known to have been finite."""
        self._check_finite()
        if not self.info.is_main:
            return
        path = save_checkpoint(self.work_dir, self.model, self.optimizer, epoch=epoch, epoch_step=epoch_step,
                               iteration=self.iteration, config_name=self.cfg.name, rng=rng,
                               keep=self.cfg.solver.keep_checkpoints,
                               meta={"class_names": self.train_set.class_names,
                                     "config_values": dataclasses.asdict(self.cfg)})
        self.saved_iteration = self.iteration
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
        solver = self.cfg.solver
        set_loader_epoch(self.train_loader, epoch, start_step)
        self.ddp_model.train()
        skipped, start = 0, time.time()
        num_steps = self.train_loader.batch_sampler.num_batches()
        bar = progress_bar(self.train_loader, self.progress and self.info.is_main,
                           desc=f"epoch {epoch + 1}/{solver.epochs}", initial=start_step, total=num_steps)
        window = LossWindow()  # losses since the last log line, on the device, averaged in it
        done = short = 0  # batches of this epoch done (trained or dropped); batches dropped as too small
        try:
            for step, (images, targets, dropped) in enumerate(bar, start=start_step):
                skipped += dropped
                if _any_rank_short(len(images) >= self.min_batch):
                    short, done = short + 1, step + 1
                    continue
                lr = lr_at(self.base_lr, solver, self.iteration, epoch, self.warmup_iters)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.in_step = True  # a first Ctrl-C from here on lets the step finish
                try:
                    losses = self._step(images, targets, epoch, step)
                except Exception as err:
                    if not dist_utils.is_distributed():  # an error caused by an earlier non-finite step names it
                        self._check_finite()
                    _add_note(err, f"in training iteration {self.iteration + 1} (epoch {epoch + 1}, batch {step + 1}), "
                                   f"image ids {[t.get('image_id') for t in targets]}")
                    raise
                self.iteration, done = self.iteration + 1, step + 1
                self.in_step = False
                window.add(*losses)
                if self.iteration % solver.log_interval == 0 or step + 1 == num_steps:
                    averages = self._log_train(epoch, step, start_step, num_steps, lr, window, start)
                    bar.set_postfix(loss=f"{averages['loss']:.3f}", lr=f"{lr:.2e}", refresh=False)
                if solver.checkpoint_iters > 0 and self.iteration % solver.checkpoint_iters == 0 and done < num_steps:
                    self._save(epoch, done, get_rng_states())
                if self.stop_requested:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            bar.close()
            self._stop_interrupted(epoch, max(done, start_step), None, f"batch {max(done, start_step)} of {num_steps}")
        bar.close()
        skipped, short = (sum(values) for values in zip(*dist_utils.all_gather_objects((skipped, short))))
        if skipped:
            self.log.warning(f"epoch {epoch + 1}: {skipped} unreadable image(s) skipped (replaced in their batch by "
                             "the next readable image)")
        if short:
            self.log.warning(f"epoch {epoch + 1}: {short} batch(es) dropped: fewer than {self.min_batch} readable "
                             "images")
        self.log.info(f"epoch {epoch + 1} done in {time.time() - start:.1f} s")

    def _check_finite(self) -> None:
        """Raise NonFiniteLossError if a step since the last check had a non-finite loss (collective under DDP)."""
        bad = self.watch.first_bad()
        if bad is None:
            return
        iteration, epoch, step, values = bad
        latest = os.path.join(self.work_dir, LATEST)
        kept = f"the last good checkpoint is {latest}" if os.path.isfile(latest) else "no checkpoint was saved yet"
        raise NonFiniteLossError(f"non-finite loss at iteration {iteration} (epoch {epoch + 1}, step {step + 1}): "
                                 f"{values}; training stopped, {kept}")

    def _log_train(self, epoch, step, start_step, num_steps, lr, window, start) -> dict[str, float]:
        """Check the steps since the last log line were finite, write their averaged losses (clearing `window`)
        and return the averages. The loop's one host synchronisation per `log_interval` iterations."""
        self._check_finite()
        averages = window.averages()
        total_iters = num_steps * self.cfg.solver.epochs
        eta = (time.time() - start) / (step + 1 - start_step) * (total_iters - epoch * num_steps - step - 1)
        memory = peak_memory_mb(self.info.device)  # MB since the previous log line, as mmdetection's `memory`
        extra = {} if memory is None else {"memory": memory}
        self.metrics.write("train", self.iteration, {"epoch": epoch + 1, "lr": lr, **averages, **extra})
        self.log.info(f"epoch {epoch + 1} iter {self.iteration} lr {lr:.3e} "
                      + " ".join(f"{k} {v:.4f}" for k, v in averages.items())
                      + (f" memory {memory} MB" if extra else "") + f" eta {eta / 60:.1f} min")
        for name, value, reference in self.divergence.update(averages):
            self.log.warning(
                f"{name} {value:.4g} at iteration {self.iteration} (epoch {epoch + 1}) is {value / reference:.0f}× "
                f"its recent level {reference:.4g}, at lr {lr:.3g}: the run may be diverging. Try a lower "
                f"learning rate (solver.lr={self.cfg.solver.lr / 4:g}, a quarter of {self.cfg.solver.lr:g}), a "
                f"longer warmup (solver.warmup_iters) or gradient clipping (solver.grad_clip=10)")
        return averages

    def _step(self, images, targets, epoch: int, step: int) -> tuple[tuple[str, ...], torch.Tensor]:
        """One optimizer step with no host synchronisation of its own; returns this rank's losses (and grad_norm
        when clipping) as (names, one detached device tensor of their values), see step_stats.stack_losses. Their
        finiteness is recorded on the device (self.watch) and checked at the next log step or checkpoint, which
        never saves weights from after a non-finite step."""
        device, solver = self.info.device, self.cfg.solver
        images, targets = _to_device(images, targets, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=solver.amp and device.type == "cuda"):
            loss_dict = self.ddp_model(images, targets)
        loss = sum(loss_dict.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        logged = {"loss": loss.detach(), **{name: value.detach() for name, value in loss_dict.items()}}
        logged.update(getattr(self.model, "train_stats", {}))  # e.g. mask_dropped: positives without a mask row
        if solver.grad_clip is not None:
            params = [p for p in self.model.parameters() if p.grad is not None]
            logged["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, solver.grad_clip)
        self.optimizer.step()
        names, stacked = stack_losses(logged)
        self.watch.update(self.iteration + 1, epoch, step, names, stacked)
        return names, stacked


def train(cfg: Config, work_dir: str, *, model_builder=None, data_root: str | None = None, resume: bool = False,
          overwrite: bool = False, device: str | None = None, progress: bool = True, threads: int = 0) -> dict:
    """Train `cfg` in `work_dir` (resuming from latest.pth when `resume`; over a previous run only with
    `overwrite`) and return the final evaluation metrics {"bbox": {"AP": ...}, "segm": {...}}.
    `model_builder(cfg.model)` defaults to detection.build.build_model. `threads` > 0 fixes the intra-op threads
    (else they are chosen from the free cores); the caller's thread count is restored afterwards."""
    if model_builder is None:
        from ..build import build_model

        def model_builder(model_cfg):  # training starts from backbone.pretrained
            return build_model(model_cfg, pretrained=True)
    previous_threads = torch.get_num_threads()
    try:
        trainer = Trainer(cfg, work_dir, model_builder=model_builder, data_root=data_root, resume=resume,
                          overwrite=overwrite, device=device, progress=progress, threads=threads)
        return trainer.run()
    except (UserError, TrainingInterrupted):
        raise
    except Exception as err:
        log_failure(work_dir, err)
        raise
    finally:
        torch.set_num_threads(previous_threads)


def _add_note(err: BaseException, note: str) -> None:
    if hasattr(err, "add_note"):  # Python 3.11+
        err.add_note(note)


def log_failure(work_dir: str, err: BaseException) -> None:
    """Append an error that ends a run to <work_dir>/train.log: the message of a non-finite loss, the traceback of
    anything else (the console shows it as well). Only where this process logs to that file (rank 0, once the log
    is set up)."""
    import logging

    path = os.path.abspath(os.path.join(work_dir, "train.log"))
    handlers = [h for h in logging.getLogger("detection").handlers
                if isinstance(h, logging.FileHandler) and os.path.abspath(h.baseFilename) == path]
    if not handlers:
        return
    if isinstance(err, NonFiniteLossError):
        text = f"error: {err}"
    else:
        text = "training failed:\n" + "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip()
    stamp = time.strftime("%H:%M:%S")
    for handler in handlers:
        handler.acquire()
        try:
            handler.stream.write(f"{stamp} {text}\n")
            handler.flush()
        finally:
            handler.release()


def build_checked(model_builder, model_cfg) -> torch.nn.Module:
    """`model_builder(model_cfg)`; a config the builder rejects (ValueError: unknown kind, backbone name, ...)
    becomes a UserError."""
    try:
        return model_builder(model_cfg)
    except UserError:
        raise
    except ValueError as err:
        raise UserError(f"model config: {err}") from None
