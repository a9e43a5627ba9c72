"""A lean two-stage detection stack (Faster/Mask/Cascade R-CNN) on ResNeSt-FPN backbones."""

from .weights import load_checkpoint

__all__ = ["load_checkpoint"]
