"""Train a detector and evaluate it on the validation split.

With no arguments it trains the default config (the shapes dataset, generated on first use in its own cache
folder). Overrides such as `solver.epochs=2 data.images_per_gpu=4` may stand anywhere among the flags.
A work dir that already holds a run is never overwritten silently: `--resume` continues it, `--overwrite` starts
over. Ctrl-C saves the run where it stands (resume with `--resume`). Launch with
`torchrun --nproc_per_node=N -m detection.train ...` for distributed training.
"""

import os
import sys

from .engine.cli import config_unless_listing, make_parser, parse
from .engine.errors import EXIT_INTERRUPTED, UserError, report_user_errors

DEFAULT_CONFIG = "shapes_mask_rcnn_s14"


def parse_args(argv=None):
    parser = make_parser("python -m detection.train", __doc__, config_required=False, default_config=DEFAULT_CONFIG)
    parser.add_argument("--data-root", default=None, help="dataset folder (overrides data.root)")
    parser.add_argument("--work-dir", default=None, help="checkpoints, logs and metrics (default work_dirs/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue from <work-dir>/latest.pth")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a work dir that holds a run (removes its checkpoints, logs, metrics)")
    parser.add_argument("--device", default=None, help="e.g. cpu or cuda:0 (default: cuda:<local rank> if present)")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op CPU threads per process (default 0: chosen from the free cores, see the log)")
    parser.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    return parse(parser, argv)


@report_user_errors
def main(argv=None, model_builder=None) -> int:
    """Returns the exit status: 0 on success, 1 when training stopped on a non-finite loss, 2 on a bad input
    (config, data, checkpoint, flag), 130 when interrupted (the run is saved and can be resumed)."""
    args = parse_args(argv)
    cfg = config_unless_listing(args)
    if cfg is None:
        return 0
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other: continue the run or start it over")

    from .engine import distributed as dist_utils
    from .engine.train import NonFiniteLossError, TrainingInterrupted, check_solver, train

    check_solver(cfg.solver)
    work_dir = args.work_dir or os.path.join("work_dirs", cfg.name)
    try:
        metrics = train(cfg, work_dir, model_builder=model_builder, data_root=args.data_root, resume=args.resume,
                        overwrite=args.overwrite, device=args.device, progress=not args.no_progress,
                        threads=args.threads)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except TrainingInterrupted as err:
        argv = list(sys.argv[1:] if argv is None else argv)
        again = " ".join(a for a in argv if a not in ("--resume", "--overwrite"))
        print(f"interrupted: {err}\nto continue: python -m detection.train {again} --resume".replace("  ", " "),
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        dist_utils.cleanup()
    summary = ", ".join(f"{kind} AP {stats['AP']:.3f}" for kind, stats in metrics.items())
    if summary and int(os.environ.get("RANK", "0")) == 0:
        print(f"final: {summary} (work dir {work_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
