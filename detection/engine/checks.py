"""Checks run before any work starts, so a mistake costs seconds, not a training run: the device, and the
model's class count against the dataset's categories."""

import torch

from .errors import UserError


def parse_device(device: str) -> torch.device:
    """torch.device(`device`), refusing a malformed name or CUDA where this torch build or machine has none."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"--device {device!r}: not a device name (e.g. cpu, cuda, cuda:1): {err}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise UserError(f"--device {device}: CUDA is not available (torch {torch.__version__} is {build}); "
                            "use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    return parsed


def model_num_classes(model_cfg) -> int | None:
    """Object classes of a model config: a detector's box heads, or a `num_classes` field; None if neither."""
    from ..modeling.config import ModelConfig, num_classes_of

    if isinstance(model_cfg, ModelConfig):
        return num_classes_of(model_cfg)
    value = getattr(model_cfg, "num_classes", None)
    return value if isinstance(value, int) else None


def check_num_classes(model_cfg, dataset, what: str) -> None:
    """The model must predict exactly the dataset's categories (contiguous labels 0..K-1 of the sorted ids)."""
    expected = len(dataset.cat_ids)
    actual = model_num_classes(model_cfg)
    if actual is None or actual == expected:
        return
    ids = ", ".join(str(i) for i in dataset.cat_ids[:12]) + (", ..." if expected > 12 else "")
    names = ", ".join(dataset.class_names[:6]) + (", ..." if expected > 6 else "")
    raise UserError(f"the model has {actual} classes but the {what} annotations have {expected} categories "
                    f"(ids {ids}: {names}); set model.num_classes={expected}")
