"""ImageNet initialisation of the backbone: `backbone.pretrained` as a local path, a URL or a model-zoo name.

- a path: read as is (official/timm, mmdetection or detectron2-ResNeSt layout, see `resnest_cuda.load_pretrained`);
- a URL (`https://`, `http://`, `file://`): fetched once into torch.hub's cache
  (`<torch.hub.get_dir()>/checkpoints/<file name>`, under `$TORCH_HOME`) and read from there afterwards;
- a zoo name: `open-mmlab://resnest50` / `resnest101` are the ImageNet weights the mmdetection ResNeSt configs start
  from; they map to the URLs of mmcv's model zoo and are then fetched like any URL.

Without network access the error names the file to fetch and where to put it. The log states what was loaded and
which keys were missing or left over.
"""

import logging
import os
import urllib.error
import urllib.parse

import torch
from torch import nn

from resnest_cuda import load_pretrained
from resnest_cuda.weights import convert_state_dict

logger = logging.getLogger(__name__)

ZOO_PREFIX = "open-mmlab://"
_OPENMMLAB_PRETRAIN = "https://download.openmmlab.com/pretrain/third_party/"
MODEL_ZOO = {
    "open-mmlab://resnest50": _OPENMMLAB_PRETRAIN + "resnest50_d2-7497a55b.pth",
    "open-mmlab://resnest101": _OPENMMLAB_PRETRAIN + "resnest101_d2-f3b931b2.pth",
}
URL_SCHEMES = ("http", "https", "file")


def _is_url(spec: str) -> bool:
    return urllib.parse.urlparse(spec).scheme in URL_SCHEMES


def cache_path(url: str) -> str:
    """Where torch.hub keeps the download of `url`: <hub dir>/checkpoints/<last path component>."""
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    if not filename:
        raise ValueError(f"backbone.pretrained: the URL {url!r} names no file")
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def resolve_pretrained(spec: str, progress: bool = False) -> str:
    """`backbone.pretrained` -> a local file path, downloading URLs (and zoo names) into torch.hub's cache.

    Raises FileNotFoundError for a missing path, ValueError for an unknown zoo name, and RuntimeError naming the
    URL and the cache path when a download fails (e.g. no network)."""
    if spec.startswith(ZOO_PREFIX):
        if spec not in MODEL_ZOO:
            raise ValueError(f"backbone.pretrained: unknown model-zoo name {spec!r}; known: {', '.join(MODEL_ZOO)}")
        spec = MODEL_ZOO[spec]
    if not _is_url(spec):
        path = os.path.expanduser(spec)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"backbone.pretrained: no file at {path!r} (expected a checkpoint path, a URL "
                                    f"or one of {', '.join(MODEL_ZOO)})")
        return path
    dst = cache_path(spec)
    if os.path.isfile(dst):
        return dst
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    logger.info(f"backbone.pretrained: downloading {spec} to {dst}")
    try:
        torch.hub.download_url_to_file(spec, dst, progress=progress)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise RuntimeError(
            f"backbone.pretrained: could not download {spec} ({err}). Without network access, fetch that file "
            f"elsewhere and copy it to {dst} (torch.hub's cache, moved by $TORCH_HOME), or set backbone.pretrained "
            "to a local path; backbone.pretrained='' starts from random weights."
        ) from err
    return dst


def load_backbone_pretrained(backbone: nn.Module, spec: str) -> tuple[list[str], list[str]]:
    """Load `spec` (see `resolve_pretrained`) into a ResNeSt backbone, non-strictly: the ImageNet classifier and
    other keys the backbone lacks are left over, backbone keys the file lacks keep their initialisation.

    Returns (missing, unexpected) and logs the file, its layout, the number of tensors loaded and both key lists.
    Shape mismatches are refused (ValueError naming each key)."""
    path = resolve_pretrained(spec)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same explanation
        raise ValueError(f"backbone.pretrained: cannot read {path!r} as a weights-only checkpoint ({err})") from err
    state, layout = convert_state_dict(checkpoint)
    missing, unexpected = load_pretrained(backbone, state, strict=False)
    loaded = len(set(state) & set(backbone.state_dict()))
    logger.info(f"backbone.pretrained: loaded {loaded} tensors from {path} ({layout} layout); "
                f"{len(missing)} missing keys{_list(missing)}; {len(unexpected)} unexpected keys{_list(unexpected)}")
    if loaded == 0:
        raise ValueError(f"backbone.pretrained: {path!r} holds no tensor of this backbone (wrong file?)")
    return missing, unexpected


def _list(keys: list[str], limit: int = 10) -> str:
    if not keys:
        return ""
    more = f" ... (+{len(keys) - limit})" if len(keys) > limit else ""
    return " [" + ", ".join(keys[:limit]) + more + "]"
