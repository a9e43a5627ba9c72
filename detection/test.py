"""Evaluate a checkpoint on the validation split with COCOeval: `python -m detection.test --config NAME_OR_PATH
--checkpoint FILE [--data-root DIR] [--out results.json] [key=value ...]`. Prints the 12-number summaries (bbox, and
segm for mask models) and the inference speed in images per second; works under torchrun too (results are
gathered across ranks). Evaluation runs in fp32 unless `solver.eval_amp=true` (bf16 autocast on CUDA).
"""

import argparse
import sys

from .data.build import build_dataset, prepare_data
from .data.loader import build_test_loader
from .engine import distributed as dist_utils
from .engine.checkpoint import load_model_weights
from .engine.evaluate import evaluate
from .engine.metrics import setup_logging
from .engine.overrides import load_config
from .engine.resources import InferenceTimer


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config name in detection/configs or a .py path")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by detection.train")
    parser.add_argument("--data-root", default=None, help="dataset folder (overrides data.root)")
    parser.add_argument("--out", default=None, help="write the COCO-format results JSON here")
    parser.add_argument("--device", default=None, help="e.g. cpu or cuda:0")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. data.test_scale=640")
    return parser.parse_args(argv)


def main(argv=None, model_builder=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if cfg is None:
        return 2
    if model_builder is None:
        from .build import build_model as model_builder
    info = dist_utils.init_distributed(args.device)
    setup_logging(None, info.is_main)
    try:
        root = prepare_data(cfg.data, args.data_root) if info.is_main else None
        dist_utils.barrier()
        root = root or prepare_data(cfg.data, args.data_root)
        dataset = build_dataset(cfg.data, root, train=False)
        loader = build_test_loader(dataset, cfg.data.images_per_gpu, cfg.data.workers_per_gpu, info.rank,
                                   info.world_size)
        model = model_builder(cfg.model)
        load_model_weights(model, args.checkpoint)
        model.to(info.device)
        timer = InferenceTimer(info.device)
        evaluate(model, loader, info.device, with_masks=cfg.data.with_masks, amp=cfg.solver.eval_amp, out_path=args.out,
                 is_main=info.is_main, log=print, timer=timer)
        if info.is_main:  # rank 0's own rate: mmdetection's fps column is per GPU
            print(timer.summary(cfg.data.images_per_gpu))
    finally:
        dist_utils.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
