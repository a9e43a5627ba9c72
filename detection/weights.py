"""Loading detector weights: mmdetection checkpoints of the eight ResNeSt seed models, and our own checkpoints.

mmdetection's keys equal ours except the ResNeSt deep stem, which mmdetection calls `backbone.stem.{0,1,3,4,6,7}`
(ours, like the official and timm models: `backbone.conv1.{0,1,3,4,6}` and `backbone.bn1`). Both use background
as the LAST class of `fc_cls` and class-major `fc_reg`, so the heads load unchanged. Cascade stages are
`roi_head.bbox_head.{0,1,2}` / `roi_head.mask_head.{0,1,2}` in both.
"""

from typing import NamedTuple

import torch
from torch import nn

from resnest_cuda.weights import mmdet_stem_key


class LoadResult(NamedTuple):
    missing: list[str]  # model keys the checkpoint did not provide
    unexpected: list[str]  # checkpoint keys the model does not have
    layout: str  # "mmdetection" or "resnest_cuda"


def extract_state_dict(checkpoint) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: mmdetection's {'state_dict': ...}, our {'model': ...}, or a bare dict.
    A DistributedDataParallel `module.` prefix is removed."""
    if not isinstance(checkpoint, dict):
        raise TypeError(f"checkpoint: expected a dict, got {type(checkpoint).__name__}")
    for wrapper in ("state_dict", "model"):
        inner = checkpoint.get(wrapper)
        if isinstance(inner, dict) and all(isinstance(v, torch.Tensor) for v in inner.values()):
            checkpoint = inner
            break
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items()):
        raise ValueError("checkpoint: no state dict found (expected tensors keyed by parameter name)")
    if checkpoint and all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return checkpoint


def convert_mmdet_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename mmdetection's ResNeSt stem keys to ours; every other key is already ours."""
    prefix = "backbone."
    return {
        prefix + mmdet_stem_key(key[len(prefix) :]) if key.startswith(prefix) else key: value
        for key, value in state_dict.items()
    }


def load_checkpoint(model: nn.Module, checkpoint, strict: bool = True, map_location="cpu") -> LoadResult:
    """Load detector weights into `model` from a path or an already loaded checkpoint / state dict.

    Accepts mmdetection checkpoints of the seed models (`{'state_dict': ..., 'meta': ...}` or a bare state dict
    with `backbone.stem.*` keys) and our own (`{'model': ...}` or a bare state dict). Shape mismatches are always
    refused with a message naming each key and both shapes; with `strict` (the default) missing or unexpected keys
    are refused too, otherwise they are returned (and the rest is loaded).
    """
    if isinstance(checkpoint, str):
        # Our training checkpoints also hold optimizer and RNG state (plain Python objects); mmdetection's hold
        # `meta`. Only load files you trust: weights_only=False can run code from the file.
        try:
            checkpoint = torch.load(checkpoint, map_location=map_location, weights_only=True)
        except Exception:  # noqa: BLE001 - fall back for checkpoints with non-tensor metadata
            checkpoint = torch.load(checkpoint, map_location=map_location, weights_only=False)
    state_dict = extract_state_dict(checkpoint)
    converted = convert_mmdet_state_dict(state_dict)
    is_mmdet = list(converted) != list(state_dict)  # some mmdetection stem key was renamed
    state_dict = converted
    own = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and own[k].shape != v.shape
    ]
    if mismatched:
        raise ValueError("checkpoint: shape mismatch for " + "; ".join(mismatched))
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if strict and (missing or unexpected):
        raise ValueError(
            f"checkpoint: {len(missing)} missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
            f"{len(unexpected)} unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} "
            "(pass strict=False to load the matching keys only)"
        )
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return LoadResult(missing, unexpected, "mmdetection" if is_mmdet else "resnest_cuda")
