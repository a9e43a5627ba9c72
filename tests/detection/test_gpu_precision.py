"""Faster R-CNN S-50 in channels_last under bf16 autocast against the same model in fp32, on the GPU: one training
step (losses, gradients, SGD update) and one eval step (FPN features, detections at a score threshold of 0).

Random initialisation, so the comparisons are statistical where sampling or ranking enters: bf16 perturbs RPN
scores, hence which proposals are kept and sampled (loss_bbox moves most). Losses, head and neck gradient
directions, FPN features and detection scores are compared with tolerances that a kernel returning zeros or
garbage would fail. Backbone weight gradients are only checked to be finite and of the fp32 magnitude: behind
batch-statistics norms at random initialisation they are the small remainder left after each norm removes the
mean and scale directions, and bf16 rounding leaves them nearly orthogonal to fp32 (cosine -0.06 to 0.26 measured
on the CPU for ResNeSt-50, with the fused and the plain-PyTorch split attention alike).
"""

import copy

import torch

from detection.build import build_model
from detection.configs import get_config

from ..helpers import requires_cuda
from ..tolerances import assert_matches_reference
from .stand_ins import random_batch

CONFIG = "faster_rcnn_s50_fpn_syncbn_backbone_head_mstrain_range_1x_coco"
PARTS = ("backbone", "neck", "rpn_head", "roi_head")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def run_precision(model, state, images, targets, dtype, device):
    """Loads `state`, runs one training step and one eval step under autocast(dtype) (None: fp32)."""
    autocast = torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)
    model.load_state_dict(state)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(1)  # the same sampler draws in both precisions
    with autocast:
        losses = model(images, targets)
    grads = torch.autograd.grad(sum(losses.values()), params)
    with torch.no_grad():
        updated = [p - 0.02 * g for p, g in zip(params, grads)]
    model.load_state_dict(state)  # eval with the same running statistics in both precisions
    model.eval()
    features = {}
    hook = model.neck.register_forward_hook(lambda m, i, out: features.update(neck=[o.float() for o in out]))
    with torch.no_grad(), autocast:
        detections = model(images)
    hook.remove()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return dict(losses={k: v.float().item() for k, v in losses.items()}, grads=dict(zip(names, grads)),
                updated=updated, features=features["neck"], detections=detections)


def compare_bf16_with_fp32(device: str, size=(800, 1216)):
    cfg = get_config(CONFIG).model
    cfg.channels_last = True
    cfg.roi_head.test.score_thr = 0.0  # random heads score ~1/81 per class: keep all 100 detections
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    state = copy.deepcopy(model.state_dict())
    images, targets = random_batch(num_boxes=(6, 4), sizes=(size, size), num_classes=80, seed=3)
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items() if k != "masks"} for t in targets]
    fp32 = run_precision(model, state, images, targets, None, device)
    bf16 = run_precision(model, state, images, targets, torch.bfloat16, device)

    for name, value in fp32["losses"].items():
        slack = (0.5, 0.05) if name == "loss_bbox" else (0.05, 0.01)  # loss_bbox: other sampled positives
        assert abs(bf16["losses"][name] - value) <= slack[0] * abs(value) + slack[1], (name, bf16["losses"],
                                                                                     fp32["losses"])
    for part, min_cosine in [("backbone", None), ("neck", 0.7), ("rpn_head", 0.9), ("roi_head", 0.9)]:
        names = [n for n in fp32["grads"] if n.startswith(part + ".")]
        a = torch.cat([bf16["grads"][n].flatten().float() for n in names])
        b = torch.cat([fp32["grads"][n].flatten().float() for n in names])
        assert torch.isfinite(a).all(), part
        ratio = (a.norm() / b.norm()).item()
        assert 0.1 < ratio < 10, f"{part}: gradient norm ratio bf16 / fp32 {ratio:.3f}"
        if min_cosine is not None:
            assert cosine(a, b) > min_cosine, f"{part}: gradient cosine {cosine(a, b):.3f}"
    assert all(torch.isfinite(p).all() for p in bf16["updated"])
    for level, (a, b) in enumerate(zip(bf16["features"], fp32["features"])):
        assert_matches_reference(a, b.double(), tol=5e-2, name=f"FPN level {level}")
    for det_a, det_b in zip(bf16["detections"], fp32["detections"]):
        assert len(det_a["scores"]) == len(det_b["scores"]) == 100
        assert torch.isfinite(det_a["boxes"]).all()
        assert_matches_reference(det_a["scores"].sort().values, det_b["scores"].sort().values.double(), tol=2e-2,
                                 name="sorted detection scores")
    return fp32, bf16


@requires_cuda
def test_faster_rcnn_s50_bf16_channels_last_matches_fp32_on_cuda():
    compare_bf16_with_fp32("cuda")
