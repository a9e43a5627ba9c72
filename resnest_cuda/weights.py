"""Loads ResNeSt weights from the official/timm, mmdetection and detectron2-ResNeSt checkpoint layouts.

All three layouts are converted to the official names used by ``resnest_cuda.ResNeSt`` (SPEC §4):

- official / timm: ``conv1.{0,1,3,4,6}``, ``bn1``, ``layer{1-4}.{i}.*``, ``fc`` (a ``module.`` prefix is stripped).
- mmdetection: ``backbone.`` prefix, ``stem.{0,1,3,4,6,7}`` for ``conv1.{0,1,3,4,6}`` and ``bn1``; the detector's
  other keys (``neck.*``, ``rpn_head.*``, ``roi_head.*``) are ignored. A top-level ``state_dict`` is unwrapped.
  A bare mmdetection backbone (the ImageNet files its configs start from: ``stem.*``, ``layer{1-4}.*`` without the
  ``backbone.`` prefix) is this layout too.
- detectron2-ResNeSt: ``backbone.bottom_up.`` prefix; ``stem.conv1_{1,2,3}`` with ``.norm``; ``res{2-5}`` for
  ``layer{1-4}``; ``conv1.norm`` / ``conv3.norm`` for ``bn1`` / ``bn3``; ``shortcut`` / ``shortcut.norm`` for
  ``downsample.1`` / ``downsample.2``; ``conv2.*`` unchanged. FPN and heads are ignored; ``model`` is unwrapped.
"""

import logging
import os
import pickle
import re
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn

__all__ = ["load_pretrained", "convert_state_dict", "detect_layout", "mmdet_stem_key", "LAYOUTS"]

logger = logging.getLogger(__name__)

LAYOUTS = ("resnest", "mmdet", "detectron2")

# mmdetection's deep stem (the one statement of this map; detection.weights uses it through mmdet_stem_key).
_MMDET_STEM = {"0": "conv1.0", "1": "conv1.1", "3": "conv1.3", "4": "conv1.4", "6": "conv1.6", "7": "bn1"}
_D2_STEM = {"conv1_1": ("conv1.0", "conv1.1"), "conv1_2": ("conv1.3", "conv1.4"), "conv1_3": ("conv1.6", "bn1")}
_MMDET_BARE_STEM = re.compile(r"^stem\.[0-7]\.")
_D2_BLOCK = re.compile(r"^res([2-5])\.(\d+)\.(.+)$")
# detectron2 sub-module (conv or its norm) -> official name.
_D2_BLOCK_PARTS = {
    "conv1.norm.": "bn1.",
    "conv1.": "conv1.",
    "conv3.norm.": "bn3.",
    "conv3.": "conv3.",
    "shortcut.norm.": "downsample.2.",
    "shortcut.": "downsample.1.",
    "conv2.": "conv2.",
}


def _unwrap(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """Strips the ``state_dict`` (mmdetection) / ``model`` (detectron2) wrapper and a ``module.`` prefix.

    Non-tensor entries (metadata) are dropped; numpy arrays become tensors.
    """
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
    # detectron2's model-zoo .pkl files hold numpy arrays: accept them once unpickled by the caller.
    state = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in checkpoint.items()}
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Returns "detectron2", "mmdet" or "resnest" (official/timm) from the key names; raises if none fits."""
    keys = list(state_dict)
    if any(k.startswith("backbone.bottom_up.") for k in keys):
        return "detectron2"
    if any(k.startswith("backbone.") for k in keys) or any(_MMDET_BARE_STEM.match(k) for k in keys):
        return "mmdet"
    if any(k.startswith(("conv1.", "layer1.")) for k in keys):
        return "resnest"
    raise ValueError(
        "unrecognized checkpoint layout: expected official/timm keys (conv1.*, layer1.*), mmdetection keys "
        f"(backbone.*) or detectron2 keys (backbone.bottom_up.*); first keys: {keys[:5]}"
    )


def mmdet_stem_key(key: str) -> str:
    """A backbone key (without ``backbone.``) of mmdetection's layout -> ours: ``stem.{0,1,3,4,6,7}.*`` become
    ``conv1.{0,1,3,4,6}.*`` / ``bn1.*``; every other key is returned unchanged."""
    if key.startswith("stem.") and key.count(".") >= 2:
        index, rest = key[len("stem.") :].split(".", 1)
        if index in _MMDET_STEM:
            return f"{_MMDET_STEM[index]}.{rest}"
    return key


def _d2_key(key: str) -> str:
    if key.startswith("stem."):
        conv, rest = key[len("stem.") :].split(".", 1)
        if conv in _D2_STEM:
            conv_name, norm_name = _D2_STEM[conv]
            return f"{norm_name}.{rest[len('norm.') :]}" if rest.startswith("norm.") else f"{conv_name}.{rest}"
        return key
    match = _D2_BLOCK.match(key)
    if match is None:
        return key
    stage, index, rest = match.groups()
    for d2_part, part in _D2_BLOCK_PARTS.items():
        if rest.startswith(d2_part):
            return f"layer{int(stage) - 1}.{index}.{part}{rest[len(d2_part) :]}"
    return key


def convert_state_dict(checkpoint: Mapping) -> tuple[dict[str, torch.Tensor], str]:
    """Any supported checkpoint (or state dict) -> (state dict with official ResNeSt names, detected layout).

    Keys outside the backbone of a detector checkpoint (FPN, RPN, RoI heads) are dropped.
    """
    state = _unwrap(checkpoint)
    layout = detect_layout(state)
    if layout == "resnest":
        return dict(state), layout
    prefix, rename = ("backbone.", mmdet_stem_key) if layout == "mmdet" else ("backbone.bottom_up.", _d2_key)
    if layout == "mmdet" and not any(k.startswith(prefix) for k in state):
        prefix = ""  # a bare mmdetection backbone
    converted = {rename(k[len(prefix) :]): v for k, v in state.items() if k.startswith(prefix)}
    return converted, layout


def _check_shapes(state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]) -> None:
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(model_state[k].shape)}"
        for k, v in state.items()
        if k in model_state and v.shape != model_state[k].shape
    ]
    if mismatched:
        raise ValueError(
            "load_pretrained: refusing to load tensors whose shapes differ from the model's "
            "(a different depth, width, radix, cardinality or num_classes?):\n  " + "\n  ".join(mismatched)
        )


def load_pretrained(
    model: nn.Module, path_or_state_dict: str | os.PathLike | Mapping, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Loads a ResNeSt checkpoint of any supported layout into ``model`` (a ``ResNeSt``).

    Args:
        model: the model to fill; its parameter names are the official ResNeSt / timm ones.
        path_or_state_dict: a ``.pth`` path (read with ``torch.load(weights_only=True)`` on CPU; nothing is
            downloaded) or an already loaded checkpoint / state dict.
        strict: raise when, after conversion, keys are missing from the checkpoint or left over. As with
            ``nn.Module.load_state_dict``, the matching tensors are loaded before the error is raised.
    Returns:
        ``(missing, unexpected)``: model keys the checkpoint lacked, and converted checkpoint keys the model lacks.
    Raises:
        ValueError: on an unrecognized layout, on any shape mismatch (nothing is loaded then), or when a file
            holds objects that ``weights_only`` loading refuses.
        RuntimeError: with ``strict=True``, when keys are missing or unexpected.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        try:
            checkpoint = torch.load(path_or_state_dict, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"load_pretrained: {os.fspath(path_or_state_dict)!r} holds objects other than tensors and plain "
                "containers (training metadata?), which weights_only loading refuses. If you trust the file, load "
                "it with torch.load(path, weights_only=False) and pass the result instead."
            ) from exc
    else:
        checkpoint = path_or_state_dict
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"load_pretrained: expected a state dict (mapping), got {type(checkpoint).__name__}")
    state, layout = convert_state_dict(checkpoint)
    model_state = model.state_dict()
    if not any(k.startswith("fc.") for k in model_state):
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # backbone: drop the classifier
    _check_shapes(state, model_state)
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    logger.info("loaded a %s checkpoint: %d missing, %d unexpected keys", layout, len(missing), len(unexpected))
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"load_pretrained ({layout} layout): {len(missing)} missing keys {missing[:10]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:10]}; pass strict=False to accept a partial load"
        )
    return missing, unexpected
