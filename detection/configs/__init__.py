"""Config files: each module here defines `config = Config(...)`. `get_config` accepts a module name
(e.g. "shapes_mask_rcnn_s14") or a path to a .py file defining `config`."""

import copy
import importlib
import importlib.util
import os

from ..config import Config


def get_config(name_or_path: str) -> Config:
    """A deep copy of the named config (so overrides never leak into the module)."""
    if name_or_path.endswith(".py") or os.sep in name_or_path:
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"config file not found: {name_or_path}")
        spec = importlib.util.spec_from_file_location("_detection_user_config", name_or_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(f"{__name__}.{name_or_path}")
        except ModuleNotFoundError as err:
            available = sorted(f[:-3] for f in os.listdir(os.path.dirname(__file__))
                               if f.endswith(".py") and not f.startswith("_"))
            raise ValueError(f"unknown config {name_or_path!r}; available: {', '.join(available)}") from err
    if not isinstance(getattr(module, "config", None), Config):
        raise ValueError(f"{name_or_path} does not define `config = Config(...)`")
    return copy.deepcopy(module.config)
