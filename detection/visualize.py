"""Drawing detections: boxes, class names and scores, and translucent masks for mask models."""

import numpy as np
import torch
from PIL import Image, ImageDraw

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


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
