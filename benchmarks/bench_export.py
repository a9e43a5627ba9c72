"""Inference latency of a detector in PyTorch (eager, fused ops) and as its exported ONNX graph in onnxruntime
(CPU), on the same image, with the agreement of their detections.

    python benchmarks/bench_export.py --config mask_rcnn_s50_fpn_syncbn-backbone+head_mstrain_1x_coco \
        --height 800 --width 1216 --threads 2 --repeats 3 --json out.json

Random weights unless --checkpoint is given. The randomly initialised box head scores each of the 80 COCO classes
about 1/81, below the test score_thr of 0.05: no detections. `model.roi_head.test.score_thr=0.01` keeps max_per_img
of them, so that the two runtimes' detections can be compared. The image is a random
RGB image of the given size, already at the config's test scale. PyTorch and onnxruntime calls are interleaved
(A, B, A, B, ...) so that load from other processes affects both alike; the median of `--repeats` calls each is
reported. Both run whole detections through `detection.Detector` (resize, batch, post-processing included).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.common import environment, save_json  # noqa: E402
from detection import Detector  # noqa: E402
from detection.export import _onnxruntime_runner, export_onnx  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="mask_rcnn_s50_fpn_syncbn-backbone+head_mstrain_1x_coco")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--onnx", default=None, help="reuse this exported model instead of exporting")
    parser.add_argument("--json", default=None)
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (model.roi_head.test.score_thr=0.01)")
    return parser.parse_args(argv)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1e3


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.manual_seed(0)
    detector = Detector.from_config(args.config, args.checkpoint, overrides=args.overrides)
    image = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    path = args.onnx or os.path.join(tempfile.mkdtemp(), "model.onnx")
    export_ms = None
    if args.onnx is None:
        _, export_ms = _timed(lambda: export_onnx(detector.model, path))
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    runtime = Detector.from_exported(path, args.config, class_names=detector.class_names, overrides=args.overrides)
    session_options = onnxruntime.SessionOptions()
    session_options.intra_op_num_threads = args.threads
    session_options.inter_op_num_threads = 1
    runtime.model.run = _onnxruntime_runner(path, session_options)

    ref, _ = _timed(lambda: detector(image))  # warm-up both
    got, _ = _timed(lambda: runtime(image))
    torch_ms, onnx_ms = [], []
    for _ in range(args.repeats):
        torch_ms.append(_timed(lambda: detector(image))[1])
        onnx_ms.append(_timed(lambda: runtime(image))[1])
    same = len(ref) == len(got)
    result = {
        "config": args.config, "overrides": args.overrides, "image": [args.height, args.width], "threads": args.threads,
        "torch_ms": statistics.median(torch_ms), "onnxruntime_ms": statistics.median(onnx_ms),
        "torch_ms_all": torch_ms, "onnxruntime_ms_all": onnx_ms, "export_s": export_ms and export_ms / 1e3,
        "detections": [len(ref), len(got)],
        "max_box_diff_px": float((ref.boxes - got.boxes).abs().max()) if same and len(ref) else None,
        "max_score_diff": float((ref.scores - got.scores).abs().max()) if same and len(ref) else None,
        "labels_equal": bool(same and torch.equal(ref.labels, got.labels)),
        "environment": environment("cpu"),
    }
    if same and ref.masks is not None and len(ref):
        inter = (ref.masks & got.masks).flatten(1).sum(1).float()
        union = (ref.masks | got.masks).flatten(1).sum(1).float().clamp(min=1)
        result["min_mask_iou"] = float((inter / union).min())
    for key in ("torch_ms", "onnxruntime_ms", "export_s", "detections", "max_box_diff_px", "max_score_diff",
                "labels_equal", "min_mask_iou"):
        print(f"{key}: {result.get(key)}")
    save_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
