"""Training checkpoints: atomic writes, full resume state, and the one loader for our own files.

A checkpoint is a dict: `model` (state_dict), `optimizer`, `iteration` (optimizer steps done), `epoch` (epochs
completed), `epoch_step` (batches of the next epoch already trained: 0 at an epoch's end, > 0 for a checkpoint
written in the middle of an epoch), `rng` (python / numpy / torch / cuda states), `config` (the config name), `meta`
(free-form).
The learning rate is a pure function of (iteration, epoch), so no separate scheduler object is stored.
"""

import os
import random
import re
import shutil
import zipfile

import numpy as np
import torch

from .errors import MissingPathError, UserError

LATEST = "latest.pth"
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pth")


def _intact(path: str) -> bool:
    """Whether `path` is a complete torch.save zip archive (a truncated one has no central directory)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def newest_intact_epoch_file(folder: str) -> str | None:
    """The highest-numbered epoch_<n>.pth of `folder` that is a complete archive, or None."""
    if not os.path.isdir(folder):
        return None
    epochs = sorted((int(m.group(1)) for name in os.listdir(folder) if (m := _EPOCH_FILE.fullmatch(name))),
                    reverse=True)
    for epoch in epochs:
        path = os.path.join(folder, f"epoch_{epoch}.pth")
        if _intact(path):
            return path
    return None


def read_checkpoint_file(path: str, map_location="cpu"):
    """torch.load a trusted checkpoint file; a missing, truncated or foreign file raises a UserError that names
    the path (and, for a broken file, the newest intact epoch_<n>.pth beside it)."""
    if not os.path.isfile(path):
        raise MissingPathError(f"checkpoint not found: {path}")
    try:
        # weights_only=False: our checkpoints hold RNG states, mmdetection's a `meta` dict. Only load trusted files.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch.load raises many kinds for a broken file
        if _looks_like_zip_start(path) and not _intact(path):
            what = "truncated (an interrupted save or copy)"
        else:
            what = f"not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        alternative = newest_intact_epoch_file(os.path.dirname(os.path.abspath(path)))
        hint = ""
        if alternative and os.path.abspath(alternative) != os.path.abspath(path):
            hint = f"; the newest intact checkpoint beside it is {alternative}"
            if os.path.basename(path) == LATEST:
                hint += f" (copy it to {path} to resume from it)"
        raise UserError(f"checkpoint {path} is {what}{hint}") from None


def _looks_like_zip_start(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def get_rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def atomic_save(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: readers never see a partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(work_dir: str, model: torch.nn.Module, optimizer, *, epoch: int, iteration: int,
                    config_name: str, rng: dict | None = None, meta: dict | None = None, keep: int = 0,
                    epoch_step: int = 0) -> str:
    """At an epoch's end (epoch_step == 0): write epoch_<epoch>.pth and refresh latest.pth (a copy, atomically
    replaced — no symlinks); with keep > 0, only the `keep` newest epoch_<n>.pth files are kept afterwards.
    In the middle of an epoch (epoch_step > 0 batches of epoch index `epoch` done): write latest.pth only.
    Returns the path written."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "epoch_step": epoch_step,
        "iteration": iteration,
        "rng": rng if rng is not None else get_rng_states(),
        "config": config_name,
        "meta": meta or {},
    }
    latest = os.path.join(work_dir, LATEST)
    if epoch_step > 0:
        atomic_save(state, latest)
        return latest
    path = os.path.join(work_dir, f"epoch_{epoch}.pth")
    atomic_save(state, path)
    tmp = os.path.join(work_dir, f".{LATEST}.tmp{os.getpid()}")
    shutil.copyfile(path, tmp)
    os.replace(tmp, latest)
    if keep > 0:
        prune_checkpoints(work_dir, keep)
    return path


def prune_checkpoints(work_dir: str, keep: int) -> list[str]:
    """Delete all but the `keep` highest-numbered epoch_<n>.pth files of work_dir; returns the deleted paths."""
    if keep < 1:
        raise ValueError(f"keep: expected a positive number of checkpoints, got {keep}")
    epochs = sorted(int(m.group(1)) for name in os.listdir(work_dir) if (m := _EPOCH_FILE.fullmatch(name)))
    removed = [os.path.join(work_dir, f"epoch_{n}.pth") for n in epochs[:-keep]]
    for path in removed:
        os.remove(path)
    return removed


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint` (or a bare state_dict, returned as {"model": ...}).

    weights_only=False because our checkpoints hold RNG states and numpy objects; only call this on files this
    project wrote — unpickling an untrusted file can execute code."""
    state = read_checkpoint_file(path, map_location)
    if isinstance(state, dict) and "model" not in state and all(isinstance(v, torch.Tensor) for v in state.values()):
        state = {"model": state}
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not a checkpoint of this project (no 'model' entry)")
    return state


def load_model_weights(model: torch.nn.Module, path: str, config_name: str | None = None) -> dict:
    """Load only the model weights (strict) from `path`, one of our checkpoints or an mmdetection checkpoint of a
    seed model (see `detection.load_checkpoint`); returns the whole checkpoint dict. Weights that do not fit the
    model raise a UserError naming the config that wrote the checkpoint (stored in our files) and `config_name`."""
    from ..weights import load_checkpoint as load_detector_weights

    state = read_checkpoint_file(path)
    try:
        load_detector_weights(model, state)
    except (ValueError, TypeError, RuntimeError) as err:
        raise UserError(f"checkpoint {path} does not fit {describe_config(config_name)}{trained_by(state)}: "
                        f"{str(err)[:400]}") from None
    return state if isinstance(state, dict) else {}


def describe_config(config_name: str | None) -> str:
    return f"the model of config {config_name!r}" if config_name else "this model"


def trained_by(state) -> str:
    """' (written by config X)' for our checkpoints, '' for others."""
    name = state.get("config") if isinstance(state, dict) else None
    return f" (written by config {name!r})" if isinstance(name, str) else ""
