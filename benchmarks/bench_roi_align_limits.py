"""Time bound of RoIAlign on degenerate ROIs: one ROI that is infinite, NaN, or 3e7 / 1e8 pixels wide, next to a
typical 112-px ROI, with adaptive sampling (sampling_ratio=0), on a 256-channel stride-4 map of an 800x1216 image.

The adaptive grid is capped at 64 samples per bin and axis (kMaxAdaptiveGrid in csrc/roi_align/roi_align.h), so
the worst ROI costs output_size^2 * 64^2 samples per channel; non-finite ROIs cost nothing (no samples). Before the
cap an infinite ROI never finished on the GPU and a 3e7-pixel ROI took seconds on the CPU.

    python -m benchmarks.bench_roi_align_limits                      # every device available
    python -m benchmarks.bench_roi_align_limits --device cpu --iters 3 --out limits.json
"""

import argparse
import math

import torch

import resnest_cuda
from benchmarks.common import environment, save_json, time_ms

ROIS = {
    "typical 112 px": [0.0, 100.0, 100.0, 212.0, 212.0],
    "inf": [0.0, 0.0, 0.0, math.inf, math.inf],
    "nan": [0.0, math.nan, 0.0, 50.0, 50.0],
    "3e7 px": [0.0, 0.0, 0.0, 3e7, 3e7],
    "1e8 px": [0.0, -1e8, -1e8, 1e8, 1e8],
}


def run(device: str, iters: int, output_size: int, channels: int) -> list[dict]:
    feats = torch.randn(1, channels, 200, 304, device=device)
    rows = []
    for name, roi in ROIS.items():
        rois = torch.tensor([roi], device=device)
        call = lambda r=rois: resnest_cuda.roi_align(feats, r, output_size, 0.25, 0, True)  # noqa: E731
        ms = time_ms(call, device, 1, iters)
        rows.append({"device": device, "roi": name, "output_size": output_size, "channels": channels, "ms": ms})
        print(f"{device:5s} {name:15s} {output_size}x{output_size} C={channels}: {ms:9.3f} ms")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: every device available)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--output-size", type=int, default=7)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = [row for d in devices for row in run(d, args.iters, args.output_size, args.channels)]
    save_json(args.out, {"environment": environment(devices[-1]), "results": rows})
    return rows


if __name__ == "__main__":
    main()
