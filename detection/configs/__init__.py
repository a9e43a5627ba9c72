"""Config files: each module here defines `config = Config(...)`. Module names are the mmdetection config names with
'-' and '+' replaced by '_'; `Config.name` keeps the exact mmdetection name."""

import copy
import importlib
import importlib.util
import os
import pkgutil

from detection.config import Config

_PACKAGE = __name__


def list_configs() -> list[str]:
    """Module names of every config in this folder (private modules, starting with '_', excluded)."""
    folder = os.path.dirname(__file__)
    return sorted(m.name for m in pkgutil.iter_modules([folder]) if not m.name.startswith("_"))


def get_config(name_or_path: str) -> Config:
    """Load a config by module name ("mask_rcnn_s50_fpn_syncbn_backbone_head_mstrain_1x_coco"), by its exact
    mmdetection name ("mask_rcnn_s50_fpn_syncbn-backbone+head_mstrain_1x_coco"), or from a path to a .py file.
    Returns a deep copy, so callers may change it freely."""
    if name_or_path.endswith(".py") or os.sep in name_or_path:
        return copy.deepcopy(_load_file(name_or_path))
    available = list_configs()
    module_name = name_or_path.replace("-", "_").replace("+", "_")
    if module_name in available:
        config = _config_of(importlib.import_module(f"{_PACKAGE}.{module_name}"), module_name)
        if name_or_path == module_name or config.name == name_or_path:
            return copy.deepcopy(config)
    for candidate in available:
        config = _config_of(importlib.import_module(f"{_PACKAGE}.{candidate}"), candidate)
        if config.name == name_or_path:
            return copy.deepcopy(config)
    raise KeyError(f"config {name_or_path!r} not found; available: {', '.join(available)}")


def _load_file(path: str) -> Config:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    name = "_detection_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return _config_of(module, path)


def _config_of(module, where: str) -> Config:
    config = getattr(module, "config", None)
    if not isinstance(config, Config):
        raise TypeError(f"{where}: expected a module-level `config = Config(...)`")
    return config
