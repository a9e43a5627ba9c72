"""What the command-line entry points share: config flags, `key=value` overrides anywhere among the flags,
`--list-configs` and `--print-config`. Imports nothing heavy, so `--help` and the listings answer at once.
"""

import argparse
import os
import sys

OVERRIDES_HELP = ("config overrides key=value, anywhere on the line (e.g. solver.epochs=2 data.images_per_gpu=4 "
                  "model.num_classes=3); --print-config lists every key")


def make_parser(prog: str, doc: str, config_required: bool, default_config: str | None = None):
    """An ArgumentParser named `prog` (e.g. "python -m detection.train") with --config, --list-configs,
    --print-config and the positional overrides."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = f" (default {default_config})" if default_config else ""
    parser.add_argument("--config", default=default_config,
                        help=f"config name in detection/configs (mmdetection names work too) or a .py path{default}")
    parser.add_argument("--list-configs", action="store_true", help="list the config names and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (after overrides), one key = value per line, and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    parser.set_defaults(_config_required=config_required)
    return parser


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse with flags and overrides in any order (`--work-dir X solver.lr=0.01 --resume`)."""
    args = parser.parse_intermixed_args(argv)
    if args._config_required and args.config is None and not args.list_configs:
        parser.error("the following arguments are required: --config")
    return args


def list_configs_text() -> str:
    """One line per config: the module name and, where it differs, the mmdetection name."""
    from ..configs import get_config, list_configs

    lines = []
    for module_name in list_configs():
        name = get_config(module_name).name
        lines.append(module_name if name == module_name else f"{module_name}  ({name})")
    return "\n".join(lines)


def config_text(cfg) -> str:
    """The resolved config as `key = value` lines (--print-config): every key a `key=value` override accepts."""
    from .overrides import config_lines

    return "\n".join(config_lines(cfg))


def print_listing(text: str) -> None:
    """Print to stdout; a reader that closes the pipe early (`| head`) ends the listing quietly."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python would report the failed flush of stdout again at exit: point stdout at /dev/null instead.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def config_unless_listing(args: argparse.Namespace):
    """The config `args` ask for, or None after answering --list-configs / --print-config (the command then exits
    with 0). --print-config shows `--data-root` as data.root, the folder the run would read."""
    from .overrides import resolve_config

    if args.list_configs:
        print_listing(list_configs_text())
        return None
    cfg = resolve_config(args.config, args.overrides)
    if args.print_config:
        if getattr(args, "data_root", None):
            cfg.data.root = args.data_root
        print_listing(config_text(cfg))
        return None
    return cfg
