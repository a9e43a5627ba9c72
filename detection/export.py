"""Exporting a detector for inference elsewhere: ONNX (standard ops only), torch.export and AOTInductor.

    python -m detection.export --config NAME --checkpoint CKPT --format onnx --out model.onnx
    python -m detection.export --config NAME --checkpoint CKPT --format exported-program --out model.pt2
    python -m detection.export --config NAME --checkpoint CKPT --format aoti --out model_aoti.pt2

Every format holds the same graph (`InferenceGraph`), for one image of any size:
  inputs  `image` float32 [1, 3, H, W]: RGB 0-255, already resized by the config's test resize, padded at the
          bottom/right to H, W multiples of the model's size divisor (32), at least 2 x that (64); the padding's
          values do not matter. `image_size` int64 [2]: (h, w) of the image inside the padding.
  outputs `boxes` float32 [D, 4] xyxy in the resized image's pixels, `scores` float32 [D], `labels` int64 [D]
          (0-based), and for mask models `mask_probs` float32 [D, M, M] (mask probabilities in box coordinates).
`detection.inference.GraphRunner` pads, runs such a graph and maps its output to the original image (boxes scaled,
masks pasted) exactly as the PyTorch model does.

Before export the norms of the backbone and heads are folded into their convolutions (eval-mode BatchNorm,
SyncBatchNorm, FrozenBatchNorm): BatchNorm on a data-dependent number of RoIs does not trace (GroupNorm does).
For ONNX the split attention runs as its plain PyTorch reference (standard ops), RoIAlign becomes ONNX RoiAlign
(half_pixel for aligned=True) and NMS ONNX NonMaxSuppression; torch.export keeps the fused resnest_cuda ops.
"""

import argparse
import contextlib
import copy
import logging
import os
import sys

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from resnest_cuda.norm import fold_norm_into_conv

from .modeling.layers import ConvBlock
from .modeling.rcnn import GeneralizedRCNN, postprocess

ONNX_OPSET = 18
MAX_SIDE = 4096  # largest padded side the exported graphs accept
FORMATS = ("onnx", "exported-program", "aoti")


class InferenceGraph(nn.Module):
    """The exportable inference of a GeneralizedRCNN in eval mode (see the module docstring for the signature)."""

    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, image_size: torch.Tensor) -> tuple[torch.Tensor, ...]:
        transform = self.model.transform
        padded_h, padded_w = image.shape[-2], image.shape[-1]
        h, w = image_size[0].item(), image_size[1].item()
        torch._check(h >= 1)
        torch._check(w >= 1)
        inside = (torch.arange(padded_h, device=image.device) < h)[:, None] & (
            torch.arange(padded_w, device=image.device) < w
        )[None, :]
        # Zero padding after normalisation, as ImageTransform batches images.
        batch = torch.where(inside, (image - transform.pixel_mean) / transform.pixel_std, 0.0)
        if transform.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = self.model.neck(self.model.backbone(batch))
        proposals, _, _ = self.model.rpn_head(features, [(h, w)])
        detections, _ = self.model.roi_head(features, proposals, [(h, w)])
        det = detections[0]
        out = (det["boxes"], det["scores"], det["labels"])
        return out + (det["mask_probs"],) if "mask_probs" in det else out


def check_exportable(model: nn.Module) -> None:
    """Raise ValueError naming what cannot be exported: a model that is not a GeneralizedRCNN, or a BatchNorm in the
    RoI heads that cannot fold into its convolution (no running statistics): BatchNorm over a data-dependent number
    of RoIs does not trace. GroupNorm needs no folding and exports."""
    if not isinstance(model, GeneralizedRCNN):
        raise ValueError(f"export: expected a detection GeneralizedRCNN, got {type(model).__name__}")
    bad = [
        f"roi_head.{name}.bn ({type(m.bn).__name__})"
        for name, m in model.roi_head.named_modules()
        if isinstance(m, ConvBlock) and isinstance(m.bn, _BatchNorm) and fold_norm_into_conv(m.conv, m.bn) is None
    ]
    if bad:
        raise ValueError(
            "export: BatchNorm layers of the RoI heads must fold into their convolutions (they need running "
            f"statistics); these do not: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"
        )


def prepare_for_export(model: GeneralizedRCNN, split_attention: str = "fused") -> GeneralizedRCNN:
    """An eval-mode copy of `model` with its norms folded into the convolutions (backbone `fuse_for_inference`,
    heads' ConvBlocks) and split attention `split_attention` ("fused" ops or plain-PyTorch "reference")."""
    model = copy.deepcopy(model).eval()
    check_exportable(model)
    if hasattr(model.backbone, "fuse_for_inference"):
        model.backbone.fuse_for_inference()
    for module in model.modules():
        if isinstance(module, ConvBlock) and module.bn is not None:
            fused = fold_norm_into_conv(module.conv, module.bn)
            if fused is not None:
                module.conv, module.bn = fused, None
        if hasattr(module, "impl") and hasattr(module, "radix"):  # SplitAttentionConv2d
            module.impl = split_attention
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def example_inputs(model: GeneralizedRCNN, height: int = 320, width: int = 320) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded random image and its size, for tracing: the graph is dynamic in H and W, not specialised to these."""
    divisor = model.transform.size_divisor
    padded = [max(2 * divisor, -(-s // divisor) * divisor) for s in (height, width)]
    generator = torch.Generator().manual_seed(0)
    image = torch.rand((1, 3, *padded), generator=generator) * 255
    return image, torch.tensor([height, width], dtype=torch.int64)


def dynamic_shapes(model: GeneralizedRCNN) -> tuple[dict, None]:
    divisor = model.transform.size_divisor
    rows = torch.export.Dim("rows", min=2, max=MAX_SIDE // divisor)
    cols = torch.export.Dim("cols", min=2, max=MAX_SIDE // divisor)
    return {2: divisor * rows, 3: divisor * cols}, None


def export_program(model: GeneralizedRCNN, example=None) -> torch.export.ExportedProgram:
    """torch.export of InferenceGraph (fused resnest_cuda ops, norms folded), dynamic in the image size."""
    prepared = prepare_for_export(model, "fused")
    example = example if example is not None else example_inputs(prepared)
    with torch.no_grad():
        return torch.export.export(InferenceGraph(prepared).eval(), example, dynamic_shapes=dynamic_shapes(prepared))


def export_onnx(model: GeneralizedRCNN, path: str, example=None) -> None:
    """Write InferenceGraph as an ONNX model of standard ops (opset 18) to `path`."""
    from .onnx_ops import translation_table

    prepared = prepare_for_export(model, "reference")
    example = example if example is not None else example_inputs(prepared)
    outputs = ["boxes", "scores", "labels"] + (["mask_probs"] if prepared.roi_head.mask_head is not None else [])
    with torch.no_grad(), _without_torchvision_notices():
        program = torch.onnx.export(
            InferenceGraph(prepared).eval(), example, dynamo=True, opset_version=ONNX_OPSET,
            dynamic_shapes=dynamic_shapes(prepared), custom_translation_table=translation_table(),
            input_names=["image", "image_size"], output_names=outputs, verbose=False,
        )
    program.save(path)


class _TorchvisionNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "torchvision is not installed" not in record.getMessage()


@contextlib.contextmanager
def _without_torchvision_notices():
    """torch.onnx warns once per torchvision op it cannot register when torchvision is absent; the exported graph
    uses none of them (RoIAlign and NMS are this project's ops), so those warnings are dropped."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    notice = _TorchvisionNotice()
    log.addFilter(notice)
    try:
        yield
    finally:
        log.removeFilter(notice)


def compile_aoti(model: GeneralizedRCNN, path: str, example=None) -> str:
    """AOTInductor-compile the exported program into the package `path` (load it with
    `torch._inductor.aoti_load_package` after `import resnest_cuda`, which registers the ops it calls)."""
    program = export_program(model, example)
    return torch._inductor.aoti_compile_and_package(program, package_path=path)


class GraphRunner:
    """Runs an exported InferenceGraph like GeneralizedRCNN's eval forward: `runner(images, original_sizes)` with
    images a list of float [3, h, w] (0-255, resized) -> per image `boxes`, `scores`, `labels` (+ bool `masks`)
    in original_sizes[i] pixels. `run(image, image_size)` is the graph (onnxruntime session, ExportedProgram
    module or AOTInductor package) returning tensors."""

    def __init__(self, run, size_divisor: int, mask_threshold: float):
        self.run = run
        self.size_divisor = size_divisor
        self.mask_threshold = mask_threshold

    @classmethod
    def load(cls, path: str, model_cfg) -> "GraphRunner":
        """.onnx: onnxruntime (CPU); .pt2: a saved ExportedProgram, or else an AOTInductor package."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"exported model {path!r}: no such file")
        mask_head = model_cfg.roi_head.mask_head
        threshold = mask_head.mask_thr_binary if mask_head is not None else 0.5
        if path.endswith(".onnx"):
            run = _onnxruntime_runner(path)
        elif path.endswith(".pt2"):
            try:
                run = torch.export.load(path).module()
            except Exception:  # noqa: BLE001 - not an ExportedProgram archive: try an AOTInductor package
                run = torch._inductor.aoti_load_package(path)
        else:
            raise ValueError(f"exported model {path!r}: expected a .onnx or .pt2 file")
        return cls(run, model_cfg.size_divisor, threshold)

    def __call__(self, images: list[torch.Tensor], original_sizes: list[tuple[int, int]] | None = None):
        sizes = original_sizes if original_sizes is not None else [tuple(im.shape[1:]) for im in images]
        outputs = []
        for image, out_size in zip(images, sizes):
            h, w = int(image.shape[1]), int(image.shape[2])
            padded = [max(2 * self.size_divisor, -(-s // self.size_divisor) * self.size_divisor) for s in (h, w)]
            batch = image.new_zeros((1, 3, *padded))
            batch[0, :, :h, :w] = image
            with torch.no_grad():
                result = self.run(batch.float().cpu(), torch.tensor([h, w], dtype=torch.int64))
            det = dict(zip(("boxes", "scores", "labels", "mask_probs"), result))
            outputs.append(postprocess(det, (h, w), (int(out_size[0]), int(out_size[1])), self.mask_threshold))
        return outputs


def _onnxruntime_runner(path: str, session_options=None):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, session_options, providers=["CPUExecutionProvider"])

    def run(image: torch.Tensor, image_size: torch.Tensor) -> list[torch.Tensor]:
        outputs = session.run(None, {"image": image.numpy(), "image_size": image_size.numpy()})
        return [torch.from_numpy(o) for o in outputs]

    return run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m detection.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config name in detection/configs or a .py path")
    parser.add_argument("--checkpoint", required=True, help="our checkpoint or an mmdetection one of a seed model")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="output file (.onnx, or .pt2 for the two torch formats)")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        print(f"error: --out {args.out}: folder {folder} does not exist", file=sys.stderr)
        return 2
    from .inference import Detector

    try:
        detector = Detector.from_config(args.config, args.checkpoint, overrides=args.overrides)
        check_exportable(detector.model)
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = detector.model
    if args.format == "onnx":
        export_onnx(model, args.out)
    elif args.format == "exported-program":
        torch.export.save(export_program(model), args.out)
    else:
        compile_aoti(model, args.out)
    print(f"{args.format} model of {args.config} written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
