"""A lean two-stage detection stack (Faster/Mask/Cascade R-CNN) on ResNeSt-FPN backbones."""

from .inference import Detections, Detector
from .weights import load_checkpoint

__all__ = ["Detections", "Detector", "load_checkpoint"]
