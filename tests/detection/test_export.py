"""Exported detectors: the ONNX graph (standard ops only, run in onnxruntime) and the saved torch.export program
give the PyTorch model's detections on images of other sizes than the traced one; unsupported models are refused."""


import numpy as np
import onnx
import pytest
import torch

from detection import Detector, export
from detection.export import GraphRunner, check_exportable

# Two sizes unlike the traced 320 x 320 example: the graphs are dynamic in H and W.
SIZES = ((100, 150), (130, 90))


FASTER = ["model.kind=faster_rcnn", "model.roi_head.mask_head=none"]


def _detector(config: str, overrides=(), seed: int = 0, checkpoint: str | None = None) -> Detector:
    """A tiny detector with random weights (seeded) or those of `checkpoint`. The randomly initialised box head
    scores each of the 3 classes about 1/4, above the test threshold of 0.05: many detections to compare."""
    torch.manual_seed(seed)
    return Detector.from_config(config, checkpoint, overrides=overrides)


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def _mismatch(a, b) -> str | None:
    """Why detections `a` and `b` of one image differ beyond the export tolerances (boxes within 1e-3 of the image
    size, same labels, scores within 1e-4, mask IoU >= 0.99), or None when they match."""
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} detections"
    box_err = float((a.boxes - b.boxes).abs().max()) / max(a.image_size)
    score_err = float((a.scores - b.scores).abs().max())
    if box_err > 1e-3 or score_err > 1e-4 or not torch.equal(a.labels, b.labels):
        return f"box error {box_err:.2e} of the image size, score error {score_err:.2e}, labels equal: " \
               f"{torch.equal(a.labels, b.labels)}"
    if a.masks is not None:
        inter = (a.masks & b.masks).flatten(1).sum(1).float()
        union = (a.masks | b.masks).flatten(1).sum(1).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), 1.0)
        if float(iou.min()) < 0.99:
            return f"mask IoU {float(iou.min()):.4f}"
    return None


def _assert_same_detections(reference: Detector, exported: Detector, images) -> None:
    for image in images:
        expected, got = reference(image), exported(image)
        assert len(expected) > 10  # a real comparison, not of two empty sets
        assert _mismatch(expected, got) is None, _mismatch(expected, got)


@pytest.mark.parametrize("config,overrides", [("tiny_test", []), ("tiny_test", FASTER), ("tiny_cascade_test", [])],
                         ids=["mask_rcnn", "faster_rcnn", "cascade_mask_rcnn"])
def test_onnx_graph_of_standard_ops_matches_pytorch_in_onnxruntime(tmp_path, capsys, config, overrides):
    checkpoint, path = str(tmp_path / "model.pth"), str(tmp_path / "model.onnx")
    torch.save({"model": _detector(config, overrides).model.state_dict()}, checkpoint)
    assert export.main(["--config", config, "--checkpoint", checkpoint, "--format", "onnx", "--out", path,
                        *overrides]) == 0
    assert "written to" in capsys.readouterr().out
    graph = onnx.load(path).graph
    ops = {node.op_type for node in graph.node}
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}  # standard ONNX operators only
    assert {"RoiAlign", "NonMaxSuppression", "Softmax"} <= ops
    modes = {a.s for n in graph.node if n.op_type == "RoiAlign" for a in n.attribute
             if a.name == "coordinate_transformation_mode"}
    assert modes == {b"half_pixel"}  # aligned=True RoIAlign
    masks = ["mask_probs"] if not overrides else []
    assert [o.name for o in graph.output] == ["boxes", "scores", "labels", *masks]
    detector = _detector(config, overrides, checkpoint=checkpoint)
    onnx_detector = Detector.from_exported(path, config, overrides=overrides)
    _assert_same_detections(detector, onnx_detector, _images())
    # The comparison can fail: other weights give other detections.
    other = _detector(config, overrides, seed=1)
    assert _mismatch(other(_images()[0]), onnx_detector(_images()[0])) is not None


def test_torch_export_program_saved_and_loaded_matches_pytorch(tmp_path):
    detector = _detector("tiny_test")
    program = export.export_program(detector.model)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    for op in ("resnest_cuda.split_attention_pool", "resnest_cuda.split_attention_combine",
               "resnest_cuda.multi_level_roi_align", "resnest_cuda.nms"):
        assert any(t.startswith(op) for t in targets), op  # the fused ops stay in the graph
    path = str(tmp_path / "model.pt2")
    torch.export.save(program, path)
    _assert_same_detections(detector, Detector.from_exported(path, "tiny_test"), _images(1))


def test_unsupported_models_are_refused_with_the_reason():
    detector = _detector("tiny_test")
    with pytest.raises(ValueError, match="expected a detection GeneralizedRCNN"):
        check_exportable(torch.nn.Linear(2, 2))
    detector.model.roi_head.bbox_head.shared_convs[0].bn = torch.nn.BatchNorm2d(32, track_running_stats=False)
    with pytest.raises(ValueError, match=r"must fold.*roi_head\.bbox_head\.shared_convs\.0\.bn \(BatchNorm2d\)"):
        export.export_onnx(detector.model, "unused.onnx")
    with pytest.raises(FileNotFoundError, match="no such file"):
        GraphRunner.load("missing.onnx", detector.cfg.model)
    with pytest.raises(ValueError, match="expected a .onnx or .pt2"):
        GraphRunner.load(__file__, detector.cfg.model)
    with pytest.raises(ValueError, match="fp32 on the CPU"):
        Detector.from_exported("model.onnx", "tiny_test", precision="bf16")


def test_export_command_refuses_bad_arguments(tmp_path, capsys):
    assert export.main(["--config", "tiny_test", "--checkpoint", "x.pth", "--format", "onnx",
                        "--out", str(tmp_path / "nowhere" / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert export.main(["--config", "tiny_test", "--checkpoint", str(tmp_path / "x.pth"), "--format", "onnx",
                        "--out", str(tmp_path / "m.onnx")]) == 2
    assert "x.pth" in capsys.readouterr().err
