"""Property-based fuzzing of the fused split-attention ops over random shapes (hypothesis)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import resnest_cuda
from resnest_cuda import reference as ref


@st.composite
def problems(draw):
    radix = draw(st.sampled_from([1, 2, 3, 4]))
    cardinality = draw(st.sampled_from([1, 2, 4]))
    per_group = draw(st.integers(1, 5))
    return dict(
        batch=draw(st.integers(0, 3)),
        radix=radix,
        cardinality=cardinality,
        channels=cardinality * per_group,
        h=draw(st.integers(1, 9)),
        w=draw(st.integers(1, 9)),
        channels_last=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=60, deadline=None)
@given(problems())
def test_fuzz_forward_backward(p):
    g = torch.Generator().manual_seed(p["seed"])
    x = torch.randn(p["batch"], p["radix"] * p["channels"], p["h"], p["w"], generator=g, dtype=torch.float64)
    logits = torch.randn(p["batch"], p["radix"] * p["channels"], generator=g, dtype=torch.float64) * 3
    if p["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    logits.requires_grad_()
    r, k = p["radix"], p["cardinality"]
    gap = resnest_cuda.split_attention_pool(x, r)
    out = resnest_cuda.split_attention_combine(x, logits, r, k)
    ref_gap = ref.split_attention_pool(x, r)
    ref_out = ref.split_attention_combine(x, logits, r, k)
    torch.testing.assert_close(gap, ref_gap)
    torch.testing.assert_close(out, ref_out)
    if x.numel():
        gg, go = torch.randn_like(gap), torch.randn_like(out)
        got = torch.autograd.grad([gap, out], [x, logits], [gg, go])
        want = torch.autograd.grad([ref_gap, ref_out], [x, logits], [gg, go])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
