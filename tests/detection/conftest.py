import pytest

import resnest_cuda

from . import stand_ins

_OPS = ("nms", "batched_nms", "roi_align")


@pytest.fixture(autouse=True)
def detection_ops(monkeypatch):
    """Use resnest_cuda's ops when this build has them, otherwise the pure-PyTorch stand-ins."""
    for name in _OPS:
        if not hasattr(resnest_cuda, name):
            monkeypatch.setattr(resnest_cuda, name, getattr(stand_ins, name), raising=False)
    yield
