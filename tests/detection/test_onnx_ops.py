"""The ONNX translations of the detection ops, one op at a time in onnxruntime against the op itself: RoIs on every
pyramid level, NaN RoIs, and NMS with and without max_keep."""

import onnxruntime
import pytest
import torch

import resnest_cuda
from detection.onnx_ops import translation_table

STRIDES = (4, 8, 16, 32)


class MultiLevel(torch.nn.Module):
    def forward(self, p2, p3, p4, p5, rois):
        return resnest_cuda.multi_level_roi_align([p2, p3, p4, p5], rois, 7, STRIDES, 56.0, 0, True)


class Nms(torch.nn.Module):
    def __init__(self, max_keep, fixed=False):
        super().__init__()
        self.max_keep, self.op = max_keep, resnest_cuda.nms_fixed if fixed else resnest_cuda.nms

    def forward(self, boxes, scores):
        return self.op(boxes, scores, 0.5, self.max_keep)


def _run_onnx(module, inputs, path, single=True):
    module.eval()
    torch.onnx.export(module, inputs, str(path), dynamo=True, custom_translation_table=translation_table(),
                      opset_version=18)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0 if single else slice(None)]


def test_multi_level_roi_align_translation(tmp_path):
    g = torch.Generator().manual_seed(0)
    size = (512, 640)
    features = tuple(torch.randn(1, 8, size[0] // s, size[1] // s, generator=g) for s in STRIDES)
    sides = torch.tensor([10.0, 30, 60, 90, 130, 200, 250, 300, 40, 70, 480, 560])  # levels 0 to 3
    xy = torch.rand(len(sides), 2, generator=g) * 40
    rois = torch.cat([torch.zeros(len(sides), 1), xy, xy + sides[:, None] * torch.tensor([1.0, 0.9])], 1)
    levels = resnest_cuda.reference.pyramid_levels(rois[:, 1:], 4)
    assert set(levels.tolist()) == {0, 1, 2, 3}  # every level is exercised
    # RoIs the op pools to 0: a NaN and an infinite coordinate, batch indices outside the batch
    bad = torch.tensor([[0.0, float("nan"), 1, 5, 5], [0, 1, 1, float("inf"), 5], [1, 1, 1, 9, 9], [-1, 1, 1, 9, 9]])
    rois = torch.cat([rois, bad])
    want = MultiLevel()(*features, rois)
    got = torch.from_numpy(_run_onnx(MultiLevel(), (*features, rois), tmp_path / "ml.onnx"))
    assert want[:-4].flatten(1).abs().amax(1).min() > 0.1 and torch.all(want[-4:] == 0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("max_keep", [-1, 3])
def test_nms_translation(tmp_path, max_keep):
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(40, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 10 + torch.rand(40, 2, generator=g) * 20], 1)
    scores = torch.rand(40, generator=g)
    everything = Nms(-1)(boxes, scores)
    assert len(everything) > 3  # some boxes are suppressed, more than max_keep survive
    want = Nms(max_keep)(boxes, scores)
    assert torch.equal(want, everything if max_keep < 0 else everything[:max_keep])
    got = torch.from_numpy(_run_onnx(Nms(max_keep), (boxes, scores), tmp_path / "nms.onnx"))
    assert torch.equal(got, want)


@pytest.mark.parametrize("max_keep", [3, 60])  # fewer than NMS keeps (no padding), more than the 40 boxes
def test_nms_fixed_translation(tmp_path, max_keep):
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(40, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 10 + torch.rand(40, 2, generator=g) * 20], 1)
    scores = torch.rand(40, generator=g)
    keep, valid = Nms(max_keep, fixed=True)(boxes, scores)
    assert valid.any() and (max_keep == 3 or not valid.all())
    got_keep, got_valid = _run_onnx(Nms(max_keep, fixed=True), (boxes, scores), tmp_path / "nmsf.onnx", single=False)
    assert torch.equal(torch.from_numpy(got_keep), keep) and torch.equal(torch.from_numpy(got_valid), valid)
