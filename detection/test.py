"""Evaluate a checkpoint on the validation split with COCOeval and print the 12-number summaries (bbox, and segm
for mask models) and the inference speed in images per second; works under torchrun too (results are gathered
across ranks). Evaluation runs in fp32 unless `solver.eval_amp=true` (bf16 autocast on CUDA). Images are evaluated
one per process by default (data.test_images_per_gpu=1): batching pads images, which changes detections a little.
"""

import sys

from .engine.cli import config_unless_listing, make_parser, parse
from .engine.errors import report_user_errors


def parse_args(argv=None):
    parser = make_parser("python -m detection.test", __doc__, config_required=True)
    parser.add_argument("--checkpoint", default=None, help="a checkpoint written by detection.train (required)")
    parser.add_argument("--data-root", default=None, help="dataset folder (overrides data.root)")
    parser.add_argument("--out", default=None, help="write the COCO-format results JSON here")
    parser.add_argument("--device", default=None, help="e.g. cpu or cuda:0")
    args = parse(parser, argv)
    if args.checkpoint is None and not (args.list_configs or args.print_config):
        parser.error("the following arguments are required: --checkpoint")
    return args


@report_user_errors
def main(argv=None, model_builder=None) -> int:
    args = parse_args(argv)
    cfg = config_unless_listing(args)
    if cfg is None:
        return 0
    return evaluate_checkpoint(cfg, args, model_builder)


def evaluate_checkpoint(cfg, args, model_builder=None) -> int:
    import os

    import torch

    from .data.build import build_dataset, prepare_data
    from .data.loader import build_test_loader
    from .engine import distributed as dist_utils
    from .engine.checkpoint import load_model_weights
    from .engine.checks import check_num_classes
    from .engine.errors import UserError
    from .engine.evaluate import evaluate
    from .engine.metrics import setup_logging
    from .engine.resources import InferenceTimer
    from .engine.threads import choose_threads
    from .engine.train import build_checked

    if model_builder is None:
        from .build import build_model as model_builder
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise UserError(f"--out {args.out}: the folder {os.path.dirname(os.path.abspath(args.out))} does not exist")
    info = dist_utils.init_distributed(args.device)
    log = setup_logging(None, info.is_main)
    choice = choose_threads(0, cfg.data.workers_per_gpu, int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                            on_cuda=info.device.type == "cuda")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(choice.threads)
    log.info(choice.describe())
    try:
        root = prepare_data(cfg.data, args.data_root) if info.is_main else None
        dist_utils.barrier()
        root = root or prepare_data(cfg.data, args.data_root)
        dataset = build_dataset(cfg.data, root, train=False)
        check_num_classes(cfg.model, dataset, "validation")
        loader = build_test_loader(dataset, cfg.data.test_images_per_gpu, choice.workers, info.rank,
                                   info.world_size, pin_memory=info.device.type == "cuda")
        model = build_checked(model_builder, cfg.model)
        load_model_weights(model, args.checkpoint, cfg.name)
        model.to(info.device)
        timer = InferenceTimer(info.device)
        evaluate(model, loader, info.device, with_masks=cfg.data.with_masks, amp=cfg.solver.eval_amp, out_path=args.out,
                 is_main=info.is_main, log=print, timer=timer)
        if info.is_main:  # rank 0's own rate: mmdetection's fps column is per GPU
            print(timer.summary(cfg.data.test_images_per_gpu))
    finally:
        torch.set_num_threads(previous_threads)
        dist_utils.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
