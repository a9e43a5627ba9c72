"""A lean two-stage detection stack (Faster/Mask/Cascade R-CNN) on ResNeSt-FPN backbones."""

__all__ = ["Detections", "Detector", "load_checkpoint"]


def __getattr__(name):
    # Imported on first use, so that `python -m detection.train --help` answers without loading torch.
    if name == "load_checkpoint":
        from .weights import load_checkpoint

        return load_checkpoint
    if name in ("Detections", "Detector"):
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'detection' has no attribute {name!r}")
