"""A tolerance for comparing a kernel's result with its fp64 reference that a wrong result cannot pass.

`torch.testing.assert_close` with a fixed ``atol`` accepts any output whose reference values are all below
``atol``: at the detection shapes most pooled bf16 values are that small, so a kernel returning zeros would pass.
Here both criteria scale with the reference itself:

- the relative error of the whole tensor, ``||a - e|| / ||e||``, must be at most ``tol`` (zeros give 1.0);
- every element must satisfy ``|a - e| <= tol * (|e| + rms(e))``, so no single element may be far off either.
"""

import torch

# Relative tolerance per dtype of the result; bf16 rounds to 8 significant bits (relative step 2^-8 = 0.4 %).
REL_TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 4e-3,
    torch.bfloat16: 1.6e-2,
}


def assert_matches_reference(actual: torch.Tensor, expected: torch.Tensor, tol: float | None = None,
                             name: str = "result") -> None:
    """Asserts `actual` (any dtype, any device) equals `expected` (a reference, ideally fp64) within `tol`
    (default REL_TOL[actual.dtype]) in the two senses of the module docstring. Shapes must be equal."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    tol = REL_TOL[actual.dtype] if tol is None else tol
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if e.numel() == 0:
        return
    assert torch.isfinite(a).all(), f"{name}: non-finite values"
    err = (a - e).abs()
    norm = e.norm().item()
    rel = err.norm().item() / norm if norm > 0 else err.norm().item()
    assert rel <= tol, f"{name}: relative error {rel:.3g} > {tol:.3g}"
    rms = norm / e.numel() ** 0.5
    bound = tol * (e.abs() + rms)
    worst = (err - bound).argmax()
    assert err.flatten()[worst] <= bound.flatten()[worst], (
        f"{name}: element {worst.item()} is {a.flatten()[worst].item():.6g}, expected "
        f"{e.flatten()[worst].item():.6g} (allowed error {bound.flatten()[worst].item():.3g})"
    )
