"""The host-synchronisation counter: each counted op kind is seen once, ops that need no sync are not counted, the
reported line is the caller's, and the script runs end to end on a tiny model."""

import math

import pytest
import torch

from benchmarks import count_syncs

SITE = "tests/test_count_syncs.py"


def _count(fn):
    with count_syncs.count_syncs() as counter:
        fn()
    return {kind: n for (kind, _site), n in counter.sites.items()}, counter


@pytest.mark.parametrize(
    "fn, kind",
    [
        (lambda x: torch.nonzero(x > 0), "nonzero"),
        (lambda x: torch.where(x > 0), "nonzero"),
        (lambda x: x.sum().item(), "item"),
        (lambda x: bool(x.sum() > 0), "item"),
        (lambda x: math.isfinite(x.sum()), "item"),
        (lambda x: x.tolist(), "tolist"),
        (lambda x: x.numpy(), "numpy"),
        (lambda x: x[x > 0], "bool_index"),
        (lambda x: x.masked_select(x > 0), "masked_select"),
        (lambda x: torch.unique(x), "unique"),
        (lambda x: torch.repeat_interleave(x.long().abs()), "repeat_interleave"),
        (lambda x: x.new_tensor([1.0, 2.0]), "host_data"),
        (lambda x: x.clone().index_put_((x > 0,), torch.ones(())[None].expand(int((x > 0).sum()))), None),
    ],
)
def test_each_sync_op_is_counted_once(fn, kind):
    x = torch.tensor([1.0, -2.0, 3.0, 0.5])
    counts, _ = _count(lambda: fn(x))
    if kind is None:  # the index_put case: the mask sum (.item via int()) and the index_put itself
        assert counts == {"item": 1, "bool_index_put": 1}
    else:
        assert counts == {kind: 1}


def test_sync_free_ops_are_not_counted():
    x = torch.randn(6, 4)
    mask = x[:, 0] > 0
    repeats = torch.tensor([1, 2])

    def fn():
        y = x.masked_fill(mask[:, None], 0.0)
        y[mask] = 1.0  # masked_fill_ in ATen
        torch.nonzero_static(mask, size=6)
        torch.repeat_interleave(repeats, output_size=3)
        x.topk(2, dim=0), x.sort(dim=0), x.cumsum(0), torch.where(mask[:, None], x, 0.0)

    counts, _ = _count(fn)
    assert counts == {}


def test_site_is_the_calling_line_and_backward_is_attributed_to_its_forward():
    x = torch.randn(5, requires_grad=True)
    with count_syncs.count_syncs() as counter:
        y = x[x.detach() > -10]  # forward: bool_index; backward: index_put with the mask
        y.sum().backward()
    sites = {kind: site for kind, site in counter.sites}
    assert counter.total == 2
    # The test file lies outside detection/ and resnest_cuda/: the innermost non-torch frame is reported.
    assert sites["bool_index"].startswith(SITE)
    assert sites["bool_index_put"].startswith("backward")
    assert torch.Tensor.tolist is torch._C.TensorBase.tolist  # the wrappers are removed afterwards


def test_script_counts_a_tiny_model_step(capsys):
    # The fixed-size step (the CUDA default) has no host synchronisation; the compacted one (the CPU default) has
    # some, in the model, and the engine's step adds none to either.
    fixed = count_syncs.main(["--models", "faster", "--size", "64x96", "--batch", "2", "--engine"])
    assert fixed["faster resnest14"]["per_step"] == 0
    assert fixed["faster resnest14 Trainer._step"]["per_step"] == 0
    results = count_syncs.main(["--models", "faster", "--size", "64x96", "--batch", "2", "--engine", "--compacted"])
    model_only = results["faster resnest14 compacted"]
    engine = results["faster resnest14 compacted Trainer._step"]
    assert model_only["per_step"] > 0
    assert any(site.startswith("detection/modeling/") for site in model_only["sites"])
    # The engine's step adds no synchronisation of its own: losses and their finiteness stay on the device.
    assert engine["per_step"] == model_only["per_step"]
    assert not any(site.startswith("detection/engine/") for site in engine["sites"])
    assert "host synchronisations per training step" in capsys.readouterr().out
