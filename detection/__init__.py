"""A lean two-stage detection stack (Faster/Mask/Cascade R-CNN) on ResNeSt-FPN backbones."""
