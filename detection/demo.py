"""Run a detector on one image and draw its detections: `python -m detection.demo --config NAME_OR_PATH
--checkpoint FILE --image IMG --out OUT.png [--score-thr 0.5]`. Boxes, class names and scores are drawn, and
translucent masks for mask models. A thin command over `detection.Detector`.
"""

import argparse
import os
import sys

from PIL import Image

from .inference import Detector, load_image
from .visualize import draw_detections, enlarge  # noqa: F401  (part of this module's interface)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m detection.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config name in detection/configs or a .py path")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by detection.train")
    parser.add_argument("--image", required=True, help="input image")
    parser.add_argument("--out", required=True, help="output image (.png, .jpg, ...)")
    parser.add_argument("--score-thr", type=float, default=0.5, help="draw detections scoring at least this")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-canvas", type=int, default=512,
                        help="draw small images enlarged so that their long side has at least this many pixels "
                             "(labels stay legible on the 96 px shapes images); 0 draws at the image's size")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    return parser.parse_args(argv)


def check_output_path(path: str) -> str | None:
    """An error message when `path` cannot be written as an image (missing folder, unknown extension), else None."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"--out {path}: folder {folder} does not exist"
    extension = os.path.splitext(path)[1].lower()
    if extension not in Image.registered_extensions():
        return f"--out {path}: unknown image extension {extension!r} (use .png or .jpg)"
    return None


def main(argv=None, model_builder=None) -> int:
    args = parse_args(argv)
    problem = check_output_path(args.out)
    if problem is None:
        try:
            image = load_image(args.image)  # read first: a bad input fails before the model is built
        except (FileNotFoundError, ValueError) as err:
            problem = f"--image: {err}"
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        detector = Detector.from_config(args.config, args.checkpoint, device=args.device, overrides=args.overrides,
                                        model_builder=model_builder)
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = detector(image, score_threshold=args.score_thr)
    detector.draw(image, result, min_canvas=args.min_canvas).save(args.out)
    print(f"{len(result)} detection(s) with score >= {args.score_thr} drawn to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
