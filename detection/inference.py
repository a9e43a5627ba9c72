"""Using a trained detector from Python: `Detector`.

    from detection import Detector
    detector = Detector.from_config("shapes_mask_rcnn_s14", "work_dirs/shapes_mask_rcnn_s14/latest.pth")
    result = detector("image.jpg", score_threshold=0.5)   # or a list of paths / PIL images / arrays / tensors
    print(result.boxes, result.scores, result.names)       # xyxy boxes in the image's own pixels
    detector.draw("image.jpg", result).save("out.png")

Images are resized by the config's test resize (`detection.data.build.build_test_transform`, the one evaluation
uses), batched, run, and the detections mapped back to each image's original size.
"""

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .data.build import build_test_transform
from .visualize import draw_detections, enlarge
from .weights import load_checkpoint

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Detections:
    """The detections of one image, by descending score, in that image's original pixels."""

    boxes: torch.Tensor  # float32 [D, 4] xyxy
    scores: torch.Tensor  # float32 [D]
    labels: torch.Tensor  # int64 [D], 0-based class indices
    names: list[str]  # class name of each detection
    masks: torch.Tensor | None  # bool [D, H, W] for mask models, else None
    image_size: tuple[int, int]  # (H, W)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def as_dict(self) -> dict[str, torch.Tensor]:
        out = {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}
        return out if self.masks is None else {**out, "masks": self.masks}


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file as RGB (grayscale, palette, CMYK and RGBA images are converted; alpha is dropped) ->
    float32 [3, H, W] in 0-255. Raises FileNotFoundError or ValueError naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path!r}: no such file")
    try:
        with Image.open(path) as img:
            return image_to_tensor(img)
    except UnidentifiedImageError:
        raise ValueError(f"image {path!r}: not an image file (Pillow cannot identify its format)") from None
    except (OSError, SyntaxError) as err:  # truncated or corrupt data
        raise ValueError(f"image {path!r}: cannot be decoded ({err})") from None


def image_to_tensor(image, name: str = "image") -> torch.Tensor:
    """One image -> float32 [3, H, W], RGB 0-255. Accepted: a file path; a PIL image (any mode); a numpy array
    HxW (gray) or HxWxC with C in (1, 3, 4) (RGBA: alpha dropped), uint8 or float in 0-255; a torch tensor
    CxHxW with C in (1, 3, 4) or HxW, uint8 or float in 0-255."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float()
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise ValueError(f"{name}: expected a numpy array HxW or HxWxC with C in (1, 3, 4), got {image.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        tensor = image[None] if image.dim() == 2 else image
        if tensor.dim() != 3 or tensor.shape[0] not in (1, 3, 4):
            raise ValueError(f"{name}: expected a tensor CxHxW with C in (1, 3, 4) or HxW, got {tuple(image.shape)}")
        tensor = tensor.detach().cpu()
    else:
        raise TypeError(f"{name}: expected a path, PIL image, numpy array or tensor, got {type(image).__name__}")
    if not (tensor.dtype == torch.uint8 or tensor.is_floating_point()):
        raise TypeError(f"{name}: expected uint8 or floating pixel values (0-255), got {tensor.dtype}")
    if tensor.shape[1] == 0 or tensor.shape[2] == 0:
        raise ValueError(f"{name}: the image is empty ({tuple(tensor.shape[1:])})")
    tensor = tensor[:3] if tensor.shape[0] == 4 else tensor.expand(3, -1, -1) if tensor.shape[0] == 1 else tensor
    return tensor.float().contiguous()


def class_names_from(checkpoint, num_classes: int, dataset: str) -> list[str]:
    """Class names stored in a checkpoint (ours: meta.class_names; mmdetection 2.x: meta.CLASSES; 3.x:
    meta.dataset_meta.classes), else the shapes dataset's names, else "class <i>"."""
    meta = checkpoint.get("meta", {}) if isinstance(checkpoint, dict) else {}
    meta = meta if isinstance(meta, dict) else {}
    names = meta.get("class_names") or meta.get("CLASSES") or (meta.get("dataset_meta") or {}).get("classes")
    if not names and dataset == "shapes":
        from .data.shapes import CLASSES as names
    if not names or len(names) != num_classes:
        names = [f"class {i}" for i in range(num_classes)]
    return [str(n) for n in names]


def checkpoint_num_classes(checkpoint) -> int | None:
    """Foreground classes a checkpoint was trained for: its class names (ours), else the rows of a box
    classifier (`...fc_cls.weight`, background included); None when neither is there."""
    meta = checkpoint.get("meta", {}) if isinstance(checkpoint, dict) else {}
    names = meta.get("class_names") if isinstance(meta, dict) else None
    if names:
        return len(names)
    weights = checkpoint.get("state_dict", checkpoint.get("model", checkpoint)) if isinstance(checkpoint, dict) else {}
    for key, value in (weights.items() if isinstance(weights, dict) else ()):
        if key.endswith("fc_cls.weight") and hasattr(value, "shape"):
            return int(value.shape[0]) - 1
    return None


def num_classes_hint(checkpoint, model_classes: int) -> str:
    """'; the checkpoint has N classes, ...: add model.num_classes=N' when the class counts differ, else ''."""
    count = checkpoint_num_classes(checkpoint)
    if count is None or count == model_classes:
        return ""
    return (f"; the checkpoint has {count} classes and the config {model_classes}: add model.num_classes={count} "
            "to the command")


def _num_classes(model, cfg) -> int:
    """Foreground classes of a built model (stand-in models may carry the count in their config only)."""
    roi_head = getattr(model, "roi_head", None)
    if roi_head is not None:
        return roi_head.num_classes
    return getattr(model, "num_classes", None) or cfg.model.num_classes


class Detector:
    """A detector ready for inference. `model` is a GeneralizedRCNN (eval mode) or a runner of an exported graph
    (`detection.export.GraphRunner`); both are called as `model(images, original_sizes=...)`."""

    def __init__(self, model, cfg, class_names: list[str], device="cpu", precision: str = "fp32",
                 score_threshold: float = 0.0, batch_size: int = 2):
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {tuple(PRECISIONS)}, got {precision!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        self.model = model.eval() if isinstance(model, torch.nn.Module) else model
        self.cfg = cfg
        self.class_names = list(class_names)
        self.device = torch.device(device)
        self.precision = precision
        self.score_threshold = float(score_threshold)
        self.batch_size = batch_size
        self.transform = build_test_transform(cfg.data)

    @classmethod
    def from_config(cls, name_or_path: str, checkpoint: str | None, device="cpu", precision: str = "fp32",
                    overrides=(), model_builder=None, **kwargs) -> "Detector":
        """Build the model of a config (name in detection/configs or a .py path, `key=value` overrides applied)
        and load `checkpoint` (ours or mmdetection's; None keeps the random initialisation). A checkpoint of
        another model is refused with the mismatched keys named."""
        from .configs import get_config
        from .engine.overrides import apply_overrides

        cfg = get_config(name_or_path)
        apply_overrides(cfg, list(overrides))
        if model_builder is None:
            from .build import build_model as model_builder
        model = model_builder(cfg.model)
        state = {}
        if checkpoint is not None:
            if not os.path.isfile(checkpoint):
                raise FileNotFoundError(f"checkpoint {checkpoint!r}: no such file")
            # weights_only=False: our checkpoints hold RNG states, mmdetection's a `meta` dict. Trusted files only.
            state = torch.load(checkpoint, map_location="cpu", weights_only=False)
            try:
                load_checkpoint(model, state)
            except (TypeError, ValueError) as err:
                hint = num_classes_hint(state, _num_classes(model, cfg))
                raise ValueError(f"checkpoint {checkpoint!r} does not fit config {cfg.name!r}: {err}{hint}") from None
        names = kwargs.pop("class_names", None) or class_names_from(state, _num_classes(model, cfg), cfg.data.dataset)
        return cls(model.to(device), cfg, names, device=device, precision=precision, **kwargs)

    @classmethod
    def from_exported(cls, path: str, name_or_path: str, class_names: list[str] | None = None, overrides=(),
                      **kwargs) -> "Detector":
        """A detector over a model written by `detection.export` (.onnx run with onnxruntime on the CPU; .pt2 an
        ExportedProgram or an AOTInductor package). The config gives the test resize and mask threshold."""
        from .configs import get_config
        from .engine.overrides import apply_overrides
        from .export import GraphRunner

        if kwargs.get("precision", "fp32") != "fp32" or torch.device(kwargs.get("device", "cpu")).type != "cpu":
            raise ValueError("from_exported: exported graphs run in fp32 on the CPU (precision='fp32', device='cpu')")
        cfg = get_config(name_or_path)
        apply_overrides(cfg, list(overrides))
        runner = GraphRunner.load(path, cfg.model)
        num_classes = cfg.model.roi_head.stages[0].box_head.num_classes
        names = class_names or class_names_from({}, num_classes, cfg.data.dataset)
        return cls(runner, cfg, names, **kwargs)

    def __call__(self, images, score_threshold: float | None = None):
        """Detect objects in one image (-> Detections) or a list of images (-> list of Detections); see
        `image_to_tensor` for the accepted inputs. Keeps detections scoring >= score_threshold (default: the
        detector's)."""
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if not batch:
            raise ValueError("images: expected an image or a non-empty list of images")
        tensors = [image_to_tensor(im, "image" if single else f"images[{i}]") for i, im in enumerate(batch)]
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        results = []
        for start in range(0, len(tensors), self.batch_size):
            results += self._detect(tensors[start : start + self.batch_size], threshold)
        return results[0] if single else results

    def _detect(self, images: list[torch.Tensor], threshold: float) -> list[Detections]:
        sizes = [tuple(im.shape[1:]) for im in images]
        resized = [self.transform(im, None)[0].to(self.device) for im in images]
        dtype = PRECISIONS[self.precision]
        with torch.no_grad(), torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = self.model(resized, original_sizes=sizes)
        results = []
        for out, size in zip(outputs, sizes):
            keep = out["scores"].float() >= threshold
            out = {k: v[keep].cpu() for k, v in out.items()}
            labels = out["labels"].long()
            results.append(Detections(
                boxes=out["boxes"].float(), scores=out["scores"].float(), labels=labels,
                names=[self._name(i) for i in labels.tolist()], masks=out.get("masks"), image_size=size,
            ))
        return results

    def _name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else f"class {label}"

    def draw(self, image, detections: Detections, score_threshold: float = 0.0, min_canvas: int = 512) -> Image.Image:
        """`image` (any input `__call__` takes) with `detections` drawn: boxes, names, scores, translucent masks.
        A small image is enlarged so that its long side has at least `min_canvas` pixels (labels stay legible);
        0 draws it at its own size."""
        tensor = image_to_tensor(image)
        if tuple(tensor.shape[1:]) != tuple(detections.image_size):
            raise ValueError(f"image: size {tuple(tensor.shape[1:])} is not the detections' {detections.image_size}")
        pil = Image.fromarray(tensor.permute(1, 2, 0).round().clamp(0, 255).byte().numpy())
        pil, output = enlarge(pil, detections.as_dict(), min_canvas)
        return draw_detections(pil, output, self.class_names, score_threshold)
