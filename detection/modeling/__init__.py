"""Detector building blocks: box math, anchors, matching, sampling, losses, FPN, RPN, RoI pooling and heads."""
