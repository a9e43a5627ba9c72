"""Train a detector: `python -m detection.train [--config NAME_OR_PATH] [--data-root DIR] [--work-dir DIR]
[--resume] [key=value ...]`.

With no arguments it trains the default config (the shapes dataset, generated on first use) and evaluates it.
Overrides such as `solver.epochs=2 data.images_per_gpu=4` are applied to the config dataclasses. Launch with
`torchrun --nproc_per_node=N -m detection.train ...` for distributed training.
"""

import argparse
import os
import sys

from .engine import distributed as dist_utils
from .engine.overrides import load_config
from .engine.train import NonFiniteLossError, check_solver, train

DEFAULT_CONFIG = "shapes_mask_rcnn_s14"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config name in detection/configs or a .py path")
    parser.add_argument("--data-root", default=None, help="dataset folder (overrides data.root)")
    parser.add_argument("--work-dir", default=None, help="checkpoints, logs and metrics (default work_dirs/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue from <work-dir>/latest.pth")
    parser.add_argument("--device", default=None, help="e.g. cpu or cuda:0 (default: cuda:<local rank> if present)")
    parser.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. solver.epochs=2")
    return parser.parse_args(argv)


def main(argv=None, model_builder=None) -> int:
    """Returns the exit status: 0 on success, 1 when training stopped on a non-finite loss."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if cfg is None:
        return 2
    try:
        check_solver(cfg.solver)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    work_dir = args.work_dir or os.path.join("work_dirs", cfg.name)
    try:
        metrics = train(cfg, work_dir, model_builder=model_builder, data_root=args.data_root, resume=args.resume,
                        device=args.device, progress=not args.no_progress)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        dist_utils.cleanup()
    summary = ", ".join(f"{kind} AP {stats['AP']:.3f}" for kind, stats in metrics.items())
    if summary and int(os.environ.get("RANK", "0")) == 0:
        print(f"final: {summary} (work dir {work_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
