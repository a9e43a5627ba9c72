"""Calls every kernel of resnest_cuda once per code path, forward and backward, and checks each result against the
CPU kernel: the program that `compute-sanitizer` (memcheck, racecheck) runs over the CUDA kernels.

Paths covered: split attention pool / combine / combine backward (two autograd nodes) and the single-node tail
(logits backward + input backward) in fp32, fp16, bf16 and fp64; NCHW and channels_last; aligned and
storage-offset (scalar) inputs; NCHW rows with a scalar head and tail (odd H*W); channels_last with C not a
multiple of the vector width; short rows (a warp per row) and long rows (reductions split over blocks); radix 1
(sigmoid), 2 and 4 with cardinality 2; the tail after its BatchNorm + ReLU (ops.norm_split_attention: the
split_attention_norm_* ops, forward and backward). RoIAlign forward
and backward in every dtype, both layouts, adaptive and fixed sampling, aligned and legacy, an out-of-range batch
index, and one call above the 65535 x 256 outputs one grid covers (17.6M). NMS in every dtype from 1 box to 10k
(more than 8192: the keep kernel's threads walk several mask words) and batched NMS. The fused BatchNorm ops
(statistics with the running update, act, backward reduce, with the output gradient in one part and in three, and
input) in every dtype, both layouts, masked rows, short and long planes.

    compute-sanitizer --tool memcheck --error-exitcode 1 python -m benchmarks.sanitize_driver   # GPU
    python -m benchmarks.sanitize_driver --device cpu --tiny                                    # dry run

Exits 1 if any result differs from the CPU kernel. Inputs are made on the CPU and copied (few helper kernels), and
no cuBLAS call is made (the attention is elementwise), so a sanitizer run stays short.
"""

import argparse
import sys
import time

import torch

import resnest_cuda
from resnest_cuda import ops

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


class Checker:
    """Compares device results with CPU results and counts the calls."""

    def __init__(self):
        self.calls = 0
        self.failures = []

    def close(self, name, got, want, tol):
        self.calls += 1
        got, want = got.detach().cpu().double(), want.detach().cpu().double()
        scale = want.abs().max().item() if want.numel() else 0.0
        if got.shape != want.shape or (want.numel() and (got - want).abs().max().item() > tol * (1 + scale)):
            self.failures.append(name)
            print(f"MISMATCH {name}", flush=True)

    def equal(self, name, got, want):
        self.calls += 1
        if not torch.equal(got.cpu(), want.cpu()):
            self.failures.append(name)
            print(f"MISMATCH {name}", flush=True)


def place(t, device, layout):
    """`t` on `device` in `layout`: nchw, channels_last, or either with a storage offset of one element."""
    fmt = torch.channels_last if layout.startswith("channels_last") else torch.contiguous_format
    t = t.to(device).contiguous(memory_format=fmt)
    if not layout.endswith("offset"):
        return t
    base = torch.zeros(t.numel() + 1, dtype=t.dtype, device=device)
    view = base[1:].as_strided(t.shape, t.stride())
    view.copy_(t)
    return view


def split_attention_case(check, device, dtype, layout, shape, radix, cardinality):
    b, c, h, w = shape
    g = torch.Generator().manual_seed(b * 1000 + c + h)
    x = torch.randn(b, radix * c, h, w, generator=g).to(dtype)
    logits = (torch.randn(b, radix * c, generator=g) * 2).to(dtype)
    grad_out = torch.randn(b, c, h, w, generator=g).to(dtype)
    grad_gap = torch.randn(b, c, generator=g).to(dtype)
    weight = torch.randn(radix * c, generator=g, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    results = {}
    for dev in (device, "cpu"):
        xd = place(x, dev, layout).requires_grad_()
        ld = logits.to(dev).requires_grad_()
        wd = weight.to(dev).requires_grad_()
        gap = resnest_cuda.split_attention_pool(xd, radix)
        out = resnest_cuda.split_attention_combine(xd, ld, radix, cardinality)
        gx, gl = torch.autograd.grad([gap, out], [xd, ld], [grad_gap.to(dev), place(grad_out, dev, layout)])

        def attention(pooled, wd=wd):  # elementwise: no cuBLAS under the sanitizer
            return (pooled.to(wd.dtype).repeat(1, radix) * wd).to(pooled.dtype)

        tail = resnest_cuda.split_attention(xd, radix, cardinality, attention, [wd])
        tx, tw = torch.autograd.grad(tail, [xd, wd], place(grad_out, dev, layout))
        # The tail after its BatchNorm + ReLU (split_attention_norm_*: u never written), batch statistics.
        bn = torch.nn.BatchNorm2d(radix * c).to(device=dev, dtype=weight.dtype)
        with torch.no_grad():
            bn.weight.copy_(torch.linspace(0.5, 1.5, radix * c))
            bn.bias.copy_(torch.linspace(-0.5, 0.5, radix * c))
        norm_tail = ops.norm_split_attention(bn, xd, radix, cardinality, attention, [wd])
        nx, nw, nbw, nbb = torch.autograd.grad(norm_tail, [xd, wd, bn.weight, bn.bias], place(grad_out, dev, layout))
        results[dev] = [gap, out, gx, gl, tail, tx, tw, norm_tail, nx, nw, nbw, nbb, bn.running_var]
    name = f"split_attention {str(dtype)[6:]} {layout} B{b} R{radix} K{cardinality} C{c} {h}x{w}"
    labels = ["pool", "combine", "grad_x", "grad_logits", "tail", "tail grad_x", "tail grad_w", "norm tail"]
    labels += ["norm tail grad_x", "norm tail grad_w", "norm tail grad_bn_weight", "norm tail grad_bn_bias"]
    labels += ["norm tail running_var"]
    for label, got, want in zip(labels, results[device], results["cpu"]):
        check.close(f"{name} {label}", got, want, TOL[dtype] * (4 if "grad" in label else 1))


def split_attention_cases(check, device, tiny):
    # (B, C, H, W): short rows (vector and scalar widths), long rows with split reductions, C = 6 (channels_last
    # scalar path for every dtype but fp64), a 1x1 map.
    shapes = [(2, 16, 7, 8), (2, 16, 7, 7), (1, 8, 48, 64), (1, 6, 45, 47), (3, 16, 1, 1)]
    if tiny:
        shapes = [(2, 16, 4, 4), (1, 6, 5, 7)]
    layouts = ("nchw", "channels_last", "nchw_offset", "channels_last_offset")
    for dtype in DTYPES:
        for layout in layouts:
            for shape in shapes:
                for radix, cardinality in ((2, 1), (1, 1), (4, 2)) if shape[1] % 2 == 0 else ((2, 1),):
                    split_attention_case(check, device, dtype, layout, shape, radix, cardinality)


def roi_inputs(num_rois, channels, batch, seed, max_size=40.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, 13, 17, generator=g)
    xy = torch.rand(num_rois, 2, generator=g) * torch.tensor([68.0, 52.0]) - 4
    wh = 1 + torch.rand(num_rois, 2, generator=g) * max_size
    idx = torch.randint(0, batch, (num_rois, 1), generator=g).float()
    return x, torch.cat([idx, xy, xy + wh], dim=1)


def roi_align_cases(check, device, tiny):
    x, rois = roi_inputs(30, 8, 2, seed=0)
    rois[0, 0] = 5  # batch index out of range: pools to 0 (on every device), also compared on its own below
    for dtype in DTYPES:
        for layout in ("nchw", "channels_last"):
            for sampling_ratio, aligned in ((0, True), (2, False)):
                outs = {}
                for dev in (device, "cpu"):
                    xd = place(x.to(dtype), dev, layout).requires_grad_()
                    rd = rois.to(dev, dtype)
                    out = resnest_cuda.roi_align(xd, rd[1:], 7, 0.25, sampling_ratio, aligned)
                    (gx,) = torch.autograd.grad(out, xd, torch.ones_like(out))
                    outs[dev] = (out, gx)
                name = f"roi_align {str(dtype)[6:]} {layout} sr{sampling_ratio} aligned={aligned}"
                check.close(f"{name} forward", outs[device][0], outs["cpu"][0], TOL[dtype])
                check.close(f"{name} backward", outs[device][1], outs["cpu"][1], TOL[dtype] * 4)
    if device != "cpu":
        bad = resnest_cuda.roi_align(x.to(device), rois[:1].to(device), 7, 0.25)
        check.close("roi_align out-of-range batch index pools to 0", bad, torch.zeros_like(bad), 0.0)
    # Above one grid of 65535 x 256 threads (one thread per output): 1400 ROIs x 256 channels x 7 x 7 = 17.6M outputs.
    # And, for channels_last maps (a warp per bin), above one grid of 65535 x 8 bins: 11000 ROIs x 7 x 7, 2 channels.
    for layout, (num_rois, channels) in (
        ("nchw", (40, 16) if tiny else (1400, 256)),
        ("channels_last", (40, 2) if tiny else (11000, 2)),
    ):
        x, rois = roi_inputs(num_rois, channels, 2, seed=1, max_size=8.0)
        xd = place(x, device, layout).requires_grad_()
        out = resnest_cuda.roi_align(xd, rois.to(device), 7, 0.25, 1, True)
        (gx,) = torch.autograd.grad(out, xd, torch.ones_like(out))
        want = resnest_cuda.roi_align(x, rois[-50:], 7, 0.25, 1, True)
        check.close(f"roi_align {out.numel()} outputs {layout} forward (last 50 ROIs)", out[-50:], want, 1e-4)
        xc = x.clone().requires_grad_()
        (want_gx,) = torch.autograd.grad(resnest_cuda.roi_align(xc, rois, 7, 0.25, 1, True).sum(), xc)
        check.close(f"roi_align {out.numel()} outputs {layout} backward", gx, want_gx, 1e-4)
    multi_level_cases(check, device, tiny)


def multi_level_cases(check, device, tiny):
    """multi_level_roi_align (forward and backward) against the CPU kernel: RoIs on all four levels, bad RoIs."""
    g = torch.Generator().manual_seed(2)
    channels, size = (8, (64, 96)) if tiny else (64, (256, 384))
    strides = (4, 8, 16, 32)
    feats = [torch.randn(2, channels, -(-size[0] // s), -(-size[1] // s), generator=g) for s in strides]
    k = 60 if tiny else 600
    side = torch.exp(torch.empty(k, 1).uniform_(1.5, 6.4, generator=g))
    xy = torch.rand(k, 2, generator=g) * torch.tensor([size[1], size[0]]) - 8
    rois = torch.cat([torch.randint(0, 2, (k, 1), generator=g).float(), xy, xy + side], 1)
    rois[:3] = torch.tensor([[5.0, 1, 1, 30, 30], [0, float("nan"), 1, 9, 9], [1, 1, 1, float("inf"), 9]])
    for dtype in DTYPES:
        for layout in ("nchw", "channels_last"):
            outs = {}
            for dev in (device, "cpu"):
                fd = [place(f.to(dtype), dev, layout).requires_grad_() for f in feats]
                out = resnest_cuda.multi_level_roi_align(fd, rois.to(dev), 7, strides)
                grads = torch.autograd.grad(out, fd, torch.ones_like(out))
                outs[dev] = (out, grads)
            name = f"multi_level_roi_align {str(dtype)[6:]} {layout}"
            check.close(f"{name} forward", outs[device][0], outs["cpu"][0], TOL[dtype])
            for level, (got, want) in enumerate(zip(outs[device][1], outs["cpu"][1])):
                check.close(f"{name} backward level {level}", got, want, TOL[dtype] * 4)


def nms_cases(check, device, tiny):
    for n in (1, 64, 65, 1000) + (() if tiny else (10_000,)):
        g = torch.Generator().manual_seed(n)
        centres = torch.rand(max(1, n // 20), 2, generator=g) * 1000
        xy = centres[torch.randint(0, len(centres), (n,), generator=g)] + torch.randn(n, 2, generator=g) * 6
        boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 40], dim=1)
        scores = torch.rand(n, generator=g)
        idxs = torch.randint(0, 80, (n,), generator=g)
        for dtype in DTYPES:
            b, s = boxes.to(dtype), scores.to(dtype)
            check.equal(
                f"nms {str(dtype)[6:]} {n} boxes",
                resnest_cuda.nms(b.to(device), s.to(device), 0.7),
                resnest_cuda.nms(b, s, 0.7),
            )
        check.equal(
            f"batched_nms {n} boxes",
            resnest_cuda.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5),
            resnest_cuda.batched_nms(boxes, scores, idxs, 0.5),
        )
        for max_keep in (0, 1, 100):
            check.equal(
                f"nms max_keep={max_keep} {n} boxes",
                resnest_cuda.nms(boxes.to(device), scores.to(device), 0.7, max_keep),
                resnest_cuda.nms(boxes, scores, 0.7, max_keep),
            )
            keep, valid = resnest_cuda.batched_nms_fixed(
                boxes.to(device), scores.to(device), idxs.to(device), 0.5, max_keep
            )
            want_keep, want_valid = resnest_cuda.batched_nms_fixed(boxes, scores, idxs, 0.5, max_keep)
            check.equal(f"batched_nms_fixed max_keep={max_keep} {n} boxes keep", keep, want_keep)
            check.equal(f"batched_nms_fixed max_keep={max_keep} {n} boxes valid", valid, want_valid)


def batch_norm_cases(check, device, tiny):
    """The four fused BatchNorm ops: NCHW (short and long planes: the reduction split over blocks), channels_last
    (a partial 32-channel tile, many rows), a 2-D input, a storage offset; masked rows; every dtype."""
    ops = torch.ops.resnest_cuda
    shapes = [((3, 5, 6, 7), "nchw"), ((2, 40, 5, 3), "channels_last"), ((7, 9), "nchw"), ((3, 6, 4, 5), "nchw_offset")]
    shapes += (
        [] if tiny else [((2, 64, 100, 152), "nchw"), ((2, 64, 100, 152), "channels_last"), ((512, 256, 7, 7), "nchw")]
    )
    for dtype in DTYPES:
        stats = torch.float64 if dtype == torch.float64 else torch.float32
        tol = TOL[dtype]
        for shape, layout in shapes:
            g = torch.Generator().manual_seed(0)
            x, res, grad = (torch.randn(shape, generator=g).to(dtype) for _ in range(3))
            rows = torch.arange(shape[0]) % 3 != 1
            w, b = torch.rand(shape[1], dtype=stats) + 0.5, torch.randn(shape[1], dtype=stats)
            cpu_args = [x, rows, w, b, res, grad]
            dev = [place(t, device, layout) if t.dim() == 4 else t.to(device) for t in cpu_args]
            name = f"batch_norm {dtype} {shape} {layout}"
            rm, rv = torch.zeros(shape[1], dtype=stats), torch.ones(shape[1], dtype=stats)
            nbt = torch.zeros((), dtype=torch.long)
            want = ops.batch_norm_stats(x, rows, rm, rv, nbt, 0.1)
            rm_d, rv_d, nbt_d = (
                rm.clone().fill_(0).to(device),
                rv.clone().fill_(1).to(device),
                nbt.clone().fill_(0).to(device),
            )
            got = ops.batch_norm_stats(dev[0], dev[1], rm_d, rv_d, nbt_d, 0.1)
            for i, (a, e) in enumerate(zip(got, want)):
                check.close(f"{name} stats {i}", a, e, 1e-4 if stats == torch.float32 else 1e-9)
            check.close(f"{name} running_mean", rm_d, rm, 1e-4)
            mean, var, count = want
            y = ops.batch_norm_act(x, mean, var, w, b, res, 1e-5, True)
            dmean, dvar, dcount = (t.to(device) for t in want)
            check.close(
                f"{name} act", ops.batch_norm_act(dev[0], dmean, dvar, dev[2], dev[3], dev[4], 1e-5, True), y, tol
            )
            y_d = place(y, device, layout) if y.dim() == 4 else y.to(device)
            d_stats = (dmean, dvar, dev[2], dev[3])
            # The residual's form (mask read from y, g written) and the plain form (mask recomputed from x).
            for y_cpu, y_dev in ((y, y_d), (None, None)):
                s = ops.batch_norm_act_backward_reduce(grad, x, y_cpu, mean, var, w, b, 1e-5, True)
                s_d = ops.batch_norm_act_backward_reduce(dev[5], dev[0], y_dev, *d_stats, 1e-5, True)
                for i, (a, e) in enumerate(zip(s_d, s)):
                    check.close(f"{name} backward_reduce {i}", a, e, 1e-3 if dtype != torch.float64 else 1e-9)
                relu = y_cpu is None
                if not relu:  # the output gradient in three parts (aliases of y), summed by the reduction
                    parts = [dev[5] * 0.5, dev[5] * 0.25, dev[5] * 0.25]
                    s_p = ops.batch_norm_act_backward_reduce(parts[0], dev[0], y_dev, *d_stats, 1e-5, True, *parts[1:])
                    for i, (a, e) in enumerate(zip(s_p, s)):
                        check.close(f"{name} reduce in parts {i}", a, e, 1e-3 if dtype != torch.float64 else 1e-9)
                g_cpu, g_dev = (grad, dev[5]) if relu else (s[2], s_d[2])
                want_in = ops.batch_norm_act_backward_input(g_cpu, x, mean, var, w, b, *s[:2], count, rows, 1e-5, relu)
                got_in = ops.batch_norm_act_backward_input(
                    g_dev, dev[0], *d_stats, *(t.to(device) for t in s[:2]), dcount, dev[1], 1e-5, relu
                )
                check.close(f"{name} backward_input relu={relu}", got_in, want_in, tol)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="small sizes (CPU dry run)")
    parser.add_argument(
        "--only",
        choices=["split_attention", "roi_align", "nms", "batch_norm"],
        action="append",
        help="run only these op families (repeatable); default: all",
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not resnest_cuda.cuda_kernels_available():
        raise SystemExit("sanitize_driver: resnest_cuda was built without CUDA kernels")
    families = {
        "split_attention": split_attention_cases,
        "roi_align": roi_align_cases,
        "nms": nms_cases,
        "batch_norm": batch_norm_cases,
    }
    check = Checker()
    start = time.perf_counter()
    for name in args.only or families:
        families[name](check, args.device, args.tiny)
        print(f"{name}: done ({check.calls} checks so far, {time.perf_counter() - start:.1f} s)", flush=True)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    print(f"sanitize_driver: {check.calls} checks on {args.device}, {len(check.failures)} mismatches")
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())
