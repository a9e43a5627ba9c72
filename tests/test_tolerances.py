"""The reference comparison of tests/tolerances.py rejects wrong results that a fixed bf16 atol lets through."""

import pytest
import torch

import resnest_cuda
from resnest_cuda import reference as ref

from .tolerances import REL_TOL, assert_matches_reference


@pytest.fixture(scope="module")
def pooled_bf16():
    """The bf16 pool of a detection-shape input (2, 2, 128, 100, 152) and its fp64 reference."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2 * 128, 100, 152, generator=g).to(torch.bfloat16)
    return resnest_cuda.split_attention_pool(x, 2), ref.split_attention_pool(x.double(), 2)


def test_fixed_atol_would_accept_zeros(pooled_bf16):
    """Why the scaled check exists: most pooled values are below a fixed bf16 atol of 1.6e-2."""
    _, expected = pooled_bf16
    passes = (expected.abs() <= 1.6e-2 + 1.6e-2 * expected.abs()).float().mean().item()
    assert passes > 0.5


def test_kernel_output_passes(pooled_bf16):
    actual, expected = pooled_bf16
    assert_matches_reference(actual, expected)
    assert_matches_reference(expected.to(torch.bfloat16), expected)  # plain rounding to bf16 passes


@pytest.mark.parametrize("corrupt", ["zeros", "scaled", "one_element", "nan"])
def test_wrong_outputs_fail(pooled_bf16, corrupt):
    actual, expected = pooled_bf16
    wrong = actual.clone()
    if corrupt == "zeros":
        wrong.zero_()
    elif corrupt == "scaled":
        wrong *= 0.95
    elif corrupt == "one_element":
        wrong[0, 3] += 0.05
    else:
        wrong[1, 7] = float("nan")
    with pytest.raises(AssertionError):
        assert_matches_reference(wrong, expected)


def test_tolerances_order_and_shape_check():
    assert REL_TOL[torch.float32] < REL_TOL[torch.float16] < REL_TOL[torch.bfloat16] < 0.05
    with pytest.raises(AssertionError, match="shape"):
        assert_matches_reference(torch.zeros(2, 3), torch.zeros(3, 2))
