"""One process of tests/test_batch_norm_sync.py (run by torch.distributed.run with gloo): the fused
SyncBatchNorm (+ residual) (+ ReLU) on this process's share of a batch, against one process's BatchNorm (or the
masked specification) on the whole batch. Rank 0 writes the largest differences to the JSON file argv[1]."""

import contextlib
import json
import sys

import torch
import torch.distributed as dist
from torch import nn

from resnest_cuda import SplitAttentionConv2d, emulation
from resnest_cuda.batch_norm import batch_norm_act
from resnest_cuda.norm import SyncBatchNorm
from resnest_cuda.reference import batch_norm as reference

PER_RANK = 3


def _init(bn: nn.Module) -> None:
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, bn.num_features))
        bn.bias.copy_(torch.linspace(-0.5, 0.5, bn.num_features))
        bn.running_mean.copy_(torch.linspace(-0.1, 0.1, bn.num_features))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def run_case(case: str, rank: int, world: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    shape = (world * PER_RANK, 4, 5, 5)
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    rows_all = torch.tensor([True, False, True] * world) if case == "rows" else None
    relu = case != "plain"
    bn, ref = SyncBatchNorm(4).double(), nn.BatchNorm2d(4).double()
    _init(bn)
    _init(ref)
    diffs: dict[str, float] = {}
    for _ in range(2):  # twice: the second update starts from updated running statistics
        x_all = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1
        res_all = torch.randn(shape, generator=gen, dtype=torch.float64)
        probe = torch.randn(shape, generator=gen, dtype=torch.float64)
        residual = case == "residual"
        x = x_all[mine].clone().requires_grad_(True)
        rows = rows_all[mine] if rows_all is not None else None
        y = batch_norm_act(bn, x, res_all[mine] if residual else None, relu, rows)
        (y * probe[mine]).sum().backward()
        xr = x_all.clone().requires_grad_(True)
        if rows_all is None:
            yr = ref(xr)
            yr = torch.relu(yr + res_all if residual else yr) if relu else yr
        else:
            yr, mean, var, count = reference.batch_norm_act(xr, ref.weight, ref.bias, None, rows_all, ref.eps, relu)
            reference.update_running_stats(
                ref.running_mean, ref.running_var, ref.num_batches_tracked, ref.momentum, mean, var, count
            )
        (yr * probe).sum().backward()
        grads = torch.cat([bn.weight.grad, bn.bias.grad])
        dist.all_reduce(grads)  # the weight and bias gradients are local: their sum is the whole batch's
        found = {
            "y": _max_diff(y, yr[mine]),
            "grad_x": _max_diff(x.grad, xr.grad[mine]),
            "grad_weight_bias": _max_diff(grads, torch.cat([ref.weight.grad, ref.bias.grad])),
            "running_mean": _max_diff(bn.running_mean, ref.running_mean),
            "running_var": _max_diff(bn.running_var, ref.running_var),
            "num_batches_tracked": float(bn.num_batches_tracked.item() - ref.num_batches_tracked.item()),
        }
        for key, value in found.items():
            diffs[key] = max(diffs.get(key, 0.0), value)
        for m in (bn, ref):
            m.zero_grad()
    return diffs


def run_split_attention(rank: int, world: int) -> dict[str, float]:
    """SplitAttentionConv2d with SyncBatchNorm (bn0 through the fused tail, norm_split_attention; bn1 through
    batch_norm_act) against one process's BatchNorm2d module on the whole batch."""
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    module = SplitAttentionConv2d(8, 8, radix=2, groups=2, norm_layer=SyncBatchNorm).double()
    ref = SplitAttentionConv2d(8, 8, radix=2, groups=2, norm_layer=nn.BatchNorm2d).double()
    ref.load_state_dict(module.state_dict())
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    diffs: dict[str, float] = {}
    for _ in range(2):
        x_all = torch.randn(world * PER_RANK, 8, 5, 5, generator=gen, dtype=torch.float64)
        probe = torch.randn(world * PER_RANK, 8, 5, 5, generator=gen, dtype=torch.float64)
        x = x_all[mine].clone().requires_grad_(True)
        y = module(x)
        (y * probe[mine]).sum().backward()
        xr = x_all.clone().requires_grad_(True)
        yr = ref(xr)
        (yr * probe).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in module.parameters()])
        dist.all_reduce(grads)  # every parameter gradient is local: their sum is the whole batch's
        found = {
            "y": _max_diff(y, yr[mine]),
            "grad_x": _max_diff(x.grad, xr.grad[mine]),
            "grad_parameters": _max_diff(grads, torch.cat([p.grad.flatten() for p in ref.parameters()])),
            "running_statistics": max(_max_diff(a, b) for a, b in zip(module.buffers(), ref.buffers())),
        }
        for key, value in found.items():
            diffs[key] = max(diffs.get(key, 0.0), value)
        module.zero_grad()
        ref.zero_grad()
    return diffs


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    variants = ["cpu"] + (["emu"] if emulation.available() else [])
    for variant in variants:
        kernels = emulation.kernels() if variant == "emu" else contextlib.nullcontext()
        with kernels:
            for case in ("plain", "relu", "residual", "rows", "split_attention"):
                diffs = run_split_attention(rank, world) if case == "split_attention" else run_case(case, rank, world)
                table = torch.tensor(list(diffs.values()), dtype=torch.float64)
                dist.all_reduce(table, op=dist.ReduceOp.MAX)
                results[f"{variant}/{case}"] = dict(zip(diffs, table.tolist()))
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
