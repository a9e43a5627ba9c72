"""The learning-rate schedule of a run: linear warmup, then step decay by epoch, sized to the run's epochs.

A config's `solver.warmup_iters` suits the data it was written for; on a dataset of one's own an epoch may be a
few iterations long, and a warmup of hundreds of iterations would then last for most of the run. With
`solver.warmup_max_epochs` > 0 the warmup lasts at most that many epochs (at least one iteration). The schedule a
run uses is described in its log (`describe_schedule`), with a warning when an lr step is never reached.
"""

from ..config import SolverConfig


def effective_warmup_iters(solver: SolverConfig, iters_per_epoch: int) -> int:
    """solver.warmup_iters, capped at solver.warmup_max_epochs epochs of `iters_per_epoch` iterations when set."""
    if solver.warmup_max_epochs <= 0 or solver.warmup_iters == 0:
        return solver.warmup_iters
    cap = max(1, int(solver.warmup_max_epochs * iters_per_epoch))
    return min(solver.warmup_iters, cap)


def lr_at(base_lr: float, solver: SolverConfig, iteration: int, epoch: int, warmup_iters: int | None = None) -> float:
    """LR of optimizer step `iteration` (0-based, global) in `epoch` (0-based): ×gamma for each step epoch already
    reached (lr_steps are counted in completed epochs), times a linear warmup factor from warmup_ratio to 1 over
    `warmup_iters` (default solver.warmup_iters; a run passes `effective_warmup_iters`)."""
    warmup = solver.warmup_iters if warmup_iters is None else warmup_iters
    lr = base_lr * solver.gamma ** sum(epoch >= step for step in solver.lr_steps)
    if iteration < warmup:
        alpha = iteration / warmup
        lr *= solver.warmup_ratio * (1 - alpha) + alpha
    return lr


def describe_schedule(solver: SolverConfig, base_lr: float, iters_per_epoch: int) -> tuple[str, str | None]:
    """(one log line describing the schedule, a warning or None) for a run of `iters_per_epoch` iterations per
    epoch at `base_lr` (after linear scaling)."""
    warmup = effective_warmup_iters(solver, iters_per_epoch)
    total = solver.epochs * iters_per_epoch
    if warmup == solver.warmup_iters:
        warmup_text = f"warmup {warmup} iterations"
    else:
        warmup_text = (f"warmup {warmup} iterations (solver.warmup_iters {solver.warmup_iters} capped at "
                       f"solver.warmup_max_epochs={solver.warmup_max_epochs:g} epochs)")
    reached = [step for step in solver.lr_steps if step < solver.epochs]
    steps_text = ", ".join(f"{step} (iteration {step * iters_per_epoch})" for step in reached)
    decay = f"lr ×{solver.gamma:g} after epochs {steps_text}" if reached else "no lr step"
    line = (f"schedule: {solver.epochs} epochs × {iters_per_epoch} iterations = {total} iterations; {warmup_text} "
            f"from lr {base_lr * solver.warmup_ratio:.3g} to {base_lr:.3g}; {decay}")
    warnings = []
    if len(reached) < len(solver.lr_steps):
        warnings.append(f"solver.lr_steps={tuple(solver.lr_steps)} has steps at or after the last epoch "
                        f"(solver.epochs={solver.epochs}): they never apply; set lr_steps below the epoch count")
    if warmup >= total > 0:
        warnings.append(f"the warmup ({warmup} iterations) lasts the whole run ({total} iterations): lower "
                        "solver.warmup_iters or set solver.warmup_max_epochs (e.g. 1)")
    return line, ("; ".join(warnings) or None)
