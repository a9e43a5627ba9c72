"""CPU time of the fused BatchNorm (+ residual) + ReLU ops against the norm modules they replace, interleaved A/B.

Three measurements, each alternating the two variants repetition by repetition (a shared machine's drift hits
both):
- `ops`: forward + backward of BatchNorm2d -> (+ residual) -> ReLU at backbone and head shapes;
- `tail`: forward + backward of SplitAttentionConv2d (conv, bn0 + ReLU, split attention) at the S-50 stages' shapes,
  the tail after bn0 fused (ops.norm_split_attention: u never written) against batch_norm_act followed by
  split_attention (ops.norm_split_attention_applies patched to False);
- `step`: a whole training step (forward + backward, no optimizer) of a detector config on a synthetic batch, with
  every norm -> ReLU fused, then with the modules (resnest_cuda.batch_norm.fused_applies patched to False; masked
  head norms then run the plain-PyTorch specification, the former masked_batch_norm); `--baseline unfused-tail`
  compares with the same step whose split-attention tails run unfused instead.

    python -m benchmarks.bench_norm_act ops
    python -m benchmarks.bench_norm_act tail
    python -m benchmarks.bench_norm_act step --config shapes_mask_rcnn_s14 --batch 4 --size 112x112 --reps 10

Reports the median time of each variant and the ratio fused / baseline (< 1: the fused ops are faster).
"""

import argparse
import contextlib
import statistics
import time

import torch
from torch import nn

import resnest_cuda.batch_norm as fused
from resnest_cuda import SplitAttentionConv2d, ops

OP_SHAPES = [
    ((2, 64, 200, 304), "nchw"),
    ((2, 64, 200, 304), "channels_last"),
    ((2, 256, 50, 76), "nchw"),
    ((512, 256, 7, 7), "nchw"),
]


@contextlib.contextmanager
def modules_only():
    """Every batch_norm_act call runs the modules (or the specification, with rows) instead of the fused ops."""
    applies = fused.fused_applies
    fused.fused_applies = lambda *args: False
    try:
        yield
    finally:
        fused.fused_applies = applies


@contextlib.contextmanager
def unfused_tail():
    """Every split-attention tail runs batch_norm_act followed by split_attention (u written and saved)."""
    applies = ops.norm_split_attention_applies
    ops.norm_split_attention_applies = lambda *args, **kwargs: False
    try:
        yield
    finally:
        ops.norm_split_attention_applies = applies


# SplitAttentionConv2d of the S-50 stages at 2 x 800x1216 / 4 (in channels = channels, radix 2), input shapes.
TAIL_SHAPES = [((2, 128, 200, 304), 128), ((2, 256, 100, 152), 256), ((2, 512, 50, 76), 512)]


def bench_tail(reps: int) -> None:
    print("| split-attention conv, fwd + bwd | fused tail ms | unfused tail ms | fused / unfused |")
    print("|---|---|---|---|")
    for shape, channels in TAIL_SHAPES:
        for layout in ("nchw", "channels_last"):
            torch.manual_seed(0)
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            module = SplitAttentionConv2d(shape[1], channels, radix=2).to(memory_format=fmt)
            x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_(True)
            grad = torch.randn(shape[0], channels, *shape[2:]).contiguous(memory_format=fmt)

            def step(module=module, x=x, grad=grad):
                module(x).backward(grad)

            def reference(step=step):
                with unfused_tail():
                    step()

            a, b = interleaved(step, reference, reps)
            report(f"{list(shape)} {layout}", a, b)


def interleaved(fn_a, fn_b, reps: int) -> tuple[list[float], list[float]]:
    """Times fn_a and fn_b alternately (after one warm-up call each), in ms."""
    fn_a()
    fn_b()
    a, b = [], []
    for _ in range(reps):
        for fn, out in ((fn_a, a), (fn_b, b)):
            start = time.perf_counter()
            fn()
            out.append((time.perf_counter() - start) * 1e3)
    return a, b


def report(name: str, a: list[float], b: list[float]) -> None:
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"| {name} | {ma:.1f} | {mb:.1f} | {ma / mb:.2f} |", flush=True)


def bench_ops(reps: int) -> None:
    print("| BN (+ residual) + ReLU, fwd + bwd | fused ms | modules ms | fused / modules |")
    print("|---|---|---|---|")
    for shape, layout in OP_SHAPES:
        torch.manual_seed(0)
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_(True)
        res, grad = torch.randn_like(x), torch.randn_like(x)
        bn = nn.BatchNorm2d(shape[1])

        def step(res=res, grad=grad, x=x, bn=bn):
            fused.batch_norm_act(bn, x, res).backward(grad)

        def reference(step=step):
            with modules_only():
                step()

        a, b = interleaved(step, reference, reps)
        report(f"{list(shape)} {layout}", a, b)


def bench_step(config: str, batch: int, size: tuple[int, int], reps: int, baseline: str = "modules") -> None:
    from benchmarks.bench_detector import synthetic_batch
    from detection.build import build_model
    from detection.configs import get_config

    cfg = get_config(config).model
    torch.manual_seed(0)
    model = build_model(cfg).train()
    num_classes = cfg.roi_head.stages[0].box_head.num_classes
    images, targets = synthetic_batch(batch, size, num_classes, cfg.roi_head.mask_head is not None, "cpu")

    def step():
        losses = model(images, targets)
        sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)

    def reference():
        with modules_only() if baseline == "modules" else unfused_tail():
            step()

    a, b = interleaved(step, reference, reps)
    print(f"| training step | fused ms | {baseline} ms | fused / {baseline} |")
    print("|---|---|---|---|")
    report(f"{config}, {batch} x {size[0]}x{size[1]}, static={model.static_shapes}", a, b)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["ops", "tail", "step"])
    parser.add_argument("--baseline", default="modules", choices=["modules", "unfused-tail"], help="step: against")
    parser.add_argument("--config", default="shapes_mask_rcnn_s14")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", default="112x112", help="HxW of the synthetic images")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(True)
    if args.what == "ops":
        bench_ops(args.reps)
    elif args.what == "tail":
        bench_tail(args.reps)
    else:
        h, w = (int(v) for v in args.size.split("x"))
        bench_step(args.config, args.batch, (h, w), args.reps, args.baseline)


if __name__ == "__main__":
    main()
