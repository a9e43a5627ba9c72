"""Run a detector on one image and draw its detections: `python -m detection.demo --config NAME_OR_PATH
--checkpoint FILE --image IMG --out OUT.png [--score-thr 0.5]`. Boxes, class names and scores are drawn, and
translucent masks for mask models.
"""

import argparse
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

from .data.coco import load_rgb
from .data.transforms import TestTransform
from .engine.checkpoint import load_model_weights
from .engine.overrides import load_config

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config name in detection/configs or a .py path")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by detection.train")
    parser.add_argument("--image", required=True, help="input image")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--score-thr", type=float, default=0.5, help="draw detections scoring at least this")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-canvas", type=int, default=512,
                        help="draw small images enlarged so that their long side has at least this many pixels "
                             "(labels stay legible on the 96 px shapes images); 0 draws at the image's size")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    return parser.parse_args(argv)


def draw_detections(image: Image.Image, output: dict, class_names: list[str], score_thr: float) -> Image.Image:
    """Draw `output` (boxes xyxy in this image's pixels, scores, 0-based labels, optional uint8 masks [N, H, W])
    on a copy of `image`; masks are blended at 45% opacity."""
    canvas = image.convert("RGBA")
    keep = (output["scores"] >= score_thr).nonzero().flatten().tolist()
    if "masks" in output:
        overlay = np.zeros((canvas.height, canvas.width, 4), dtype=np.uint8)
        for i in keep:
            mask = output["masks"][i].reshape(canvas.height, canvas.width).cpu().numpy().astype(bool)
            overlay[mask] = (*PALETTE[int(output["labels"][i]) % len(PALETTE)], 115)
        canvas = Image.alpha_composite(canvas, Image.fromarray(overlay, mode="RGBA"))
    draw = ImageDraw.Draw(canvas)
    for i in keep:
        label = int(output["labels"][i])
        colour = PALETTE[label % len(PALETTE)]
        x1, y1, x2, y2 = output["boxes"][i].tolist()
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        name = class_names[label] if label < len(class_names) else f"class {label}"
        text = f"{name} {float(output['scores'][i]):.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        text_y = max(0.0, y1 - (bottom - top) - 2)
        draw.rectangle([x1, text_y, x1 + right - left + 2, text_y + bottom - top + 2], fill=colour)
        draw.text((x1 + 1, text_y), text, fill=(0, 0, 0))
    return canvas.convert("RGB")


def enlarge(image: Image.Image, output: dict, min_canvas: int) -> tuple[Image.Image, dict]:
    """Scale `image` up (bilinear) so that its long side is >= min_canvas, with the boxes and masks of `output`
    (masks by nearest neighbour); images that are large enough are returned unchanged."""
    factor = min_canvas / max(image.width, image.height)
    if factor <= 1:
        return image, output
    size = (round(image.height * factor), round(image.width * factor))
    output = {**output, "boxes": output["boxes"] * torch.tensor([size[1] / image.width, size[0] / image.height] * 2)}
    if "masks" in output:
        masks = torch.nn.functional.interpolate(output["masks"][:, None].float(), size=size, mode="nearest")
        output["masks"] = masks[:, 0].to(output["masks"].dtype)
    return image.resize((size[1], size[0]), Image.BILINEAR), output


def main(argv=None, model_builder=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if cfg is None:
        return 2
    if model_builder is None:
        from .build import build_model as model_builder
    model = model_builder(cfg.model)
    state = load_model_weights(model, args.checkpoint)
    model.to(args.device).eval()
    image = load_rgb(args.image)
    original_size = tuple(image.shape[1:])
    resized, _ = TestTransform(cfg.data.test_scale, cfg.data.max_size, cfg.data.resize_mode)(image, None)
    with torch.no_grad():
        output = model([resized.to(args.device)], original_sizes=[original_size])[0]
    output = {k: v.cpu() for k, v in output.items()}
    class_names = state.get("meta", {}).get("class_names", [])
    pil_image = Image.fromarray(image.permute(1, 2, 0).round().byte().numpy())
    pil_image, output = enlarge(pil_image, output, args.min_canvas)
    draw_detections(pil_image, output, class_names, args.score_thr).save(args.out)
    kept = int((output["scores"] >= args.score_thr).sum())
    print(f"{kept} detection(s) with score >= {args.score_thr} drawn to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
