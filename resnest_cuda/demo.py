"""`python -m resnest_cuda.demo`: runs the fused split-attention ops against the reference and times both."""

import argparse
import time

import torch

import resnest_cuda
from resnest_cuda import reference as ref


def _time(fn, iters):
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)
    batch, radix, channels, h, w = 2, 2, 64, 100, 152  # a ResNeSt-50 stage-2 map of an 800x1216 batch of 2
    x = torch.randn(batch, radix * channels, h, w, device=args.device, requires_grad=True)
    logits = torch.randn(batch, radix * channels, device=args.device, requires_grad=True)

    def fused():
        gap = resnest_cuda.split_attention_pool(x, radix)
        out = resnest_cuda.split_attention_combine(x, logits, radix, 1)
        (out.sum() + gap.sum()).backward()
        return gap, out

    def eager():
        gap = ref.split_attention_pool(x, radix)
        out = ref.split_attention_combine(x, logits, radix, 1)
        (out.sum() + gap.sum()).backward()
        return gap, out

    (g1, o1), (g2, o2) = fused(), eager()
    err = max((g1 - g2).abs().max().item(), (o1 - o2).abs().max().item())
    print(f"x {tuple(x.shape)} on {args.device}: max |fused - reference| = {err:.2e}")
    t_fused, t_eager = _time(fused, args.iters), _time(eager, args.iters)
    print(f"forward+backward: fused {t_fused:.2f} ms, eager reference {t_eager:.2f} ms ({t_eager / t_fused:.1f}x)")


if __name__ == "__main__":
    main()
