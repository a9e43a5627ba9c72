"""backbone.pretrained: a path, a file:// URL through torch.hub's download cache, and a model-zoo name mapped to its
real URL; the load happens before stages are frozen and the log names what was loaded and what was missing."""

import logging
import urllib.error

import pytest
import torch

import resnest_cuda
from detection import pretrained as pretrained_mod
from detection.build import build_backbone, build_model
from detection.configs import get_config
from detection.modeling.config import BackboneConfig
from detection.pretrained import MODEL_ZOO, cache_path, resolve_pretrained

ZOO_URLS = {
    "open-mmlab://resnest50": "https://download.openmmlab.com/pretrain/third_party/resnest50_d2-7497a55b.pth",
    "open-mmlab://resnest101": "https://download.openmmlab.com/pretrain/third_party/resnest101_d2-f3b931b2.pth",
}


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


@pytest.fixture
def caplog_detection(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("detection"), "propagate", True)  # the CLI setup may have turned it off
    caplog.set_level(logging.INFO, logger="detection")
    return caplog


def _imagenet_state(seed=0) -> dict[str, torch.Tensor]:
    """An official-layout ResNeSt-14 ImageNet state dict with random values (classifier included)."""
    torch.manual_seed(seed)
    model = resnest_cuda.resnest14(num_classes=1000)
    state = model.state_dict()
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}


def _cfg(pretrained: str) -> BackboneConfig:
    return BackboneConfig(name="resnest14", frozen_stages=1, norm="bn", pretrained=pretrained)


def _assert_loaded(backbone, state, skip=()):
    own = backbone.state_dict()
    for key, value in state.items():
        if key.startswith("fc.") or key in skip:
            continue
        torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)


def test_path_is_loaded_before_freezing_and_logged(tmp_path, caplog_detection):
    state = _imagenet_state()
    dropped = "layer4.0.bn3.weight"
    partial = {k: v for k, v in state.items() if k != dropped}
    torch.save(partial, tmp_path / "imagenet.pth")
    fresh = resnest_cuda.resnest14(num_classes=None, norm_layer="bn").state_dict()[dropped]
    backbone = build_backbone(_cfg(str(tmp_path / "imagenet.pth")), pretrained=True)
    _assert_loaded(backbone, partial)
    assert torch.equal(backbone.state_dict()[dropped], fresh)  # missing: keeps its initialisation (ones)
    # stem and layer1 frozen, after the load: requires_grad off and eval mode in training
    assert backbone.frozen_stages == 1
    assert not any(p.requires_grad for p in backbone.conv1.parameters())
    assert not any(p.requires_grad for p in backbone.layer1.parameters())
    assert all(p.requires_grad for p in backbone.layer2.parameters())
    backbone.train()
    assert not backbone.layer1.training and backbone.layer2.training
    text = caplog_detection.text
    n_loaded = len([k for k in partial if not k.startswith("fc.")])
    assert f"loaded {n_loaded} tensors from {tmp_path / 'imagenet.pth'} (resnest layout)" in text
    assert f"1 missing keys [{dropped}]" in text and "0 unexpected keys" in text


@pytest.mark.parametrize("layout", ["mmdet_detector", "mmdet_backbone"])
def test_mmdetection_layouts(tmp_path, layout):
    state = _imagenet_state(1)
    stem = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4",
            "conv1.6": "stem.6", "bn1": "stem.7"}

    def rename(key):
        head, _, rest = key.partition(".")
        first_two = ".".join(key.split(".")[:2])
        if first_two in stem:
            return stem[first_two] + key[len(first_two):]
        if head in stem:
            return stem[head] + "." + rest
        return key

    renamed = {rename(k): v for k, v in state.items() if not k.startswith("fc.")}
    assert "stem.7.running_mean" in renamed and "stem.0.weight" in renamed
    if layout == "mmdet_detector":
        renamed = {"state_dict": {"backbone." + k: v for k, v in renamed.items()}}
    torch.save(renamed, tmp_path / "w.pth")
    backbone = build_backbone(_cfg(str(tmp_path / "w.pth")), pretrained=True)
    _assert_loaded(backbone, state)


def test_file_url_goes_through_the_hub_cache(tmp_path, hub_dir, caplog_detection):
    state = _imagenet_state(2)
    source = tmp_path / "src" / "resnest14_test-0000.pth"
    source.parent.mkdir()
    torch.save(state, source)
    url = source.as_uri()
    assert url.startswith("file://")
    cached = hub_dir / "checkpoints" / "resnest14_test-0000.pth"
    assert cache_path(url) == str(cached)
    backbone = build_backbone(_cfg(url), pretrained=True)
    _assert_loaded(backbone, state)
    assert cached.is_file() and f"downloading {url}" in caplog_detection.text
    source.unlink()  # the second use reads the cache
    assert resolve_pretrained(url) == str(cached)
    _assert_loaded(build_backbone(_cfg(url), pretrained=True), state)


def test_zoo_names_map_to_the_real_urls():
    assert MODEL_ZOO == ZOO_URLS
    for name in ("resnest50", "resnest101"):
        cfg = get_config(f"faster_rcnn_s{name[7:]}_fpn_syncbn-backbone+head_mstrain-range_1x_coco")
        assert cfg.model.backbone.pretrained == f"open-mmlab://{name}"


def test_zoo_name_offline_names_the_file_and_where_to_put_it(hub_dir, monkeypatch):
    calls = []

    def offline(url, dst, progress=True):
        calls.append((url, dst))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    dst = hub_dir / "checkpoints" / "resnest50_d2-7497a55b.pth"
    with pytest.raises(RuntimeError) as err:
        resolve_pretrained("open-mmlab://resnest50")
    message = str(err.value)
    assert ZOO_URLS["open-mmlab://resnest50"] in message and str(dst) in message
    assert "name resolution" in message and "local path" in message
    assert calls == [(ZOO_URLS["open-mmlab://resnest50"], str(dst))]


def test_zoo_name_uses_a_file_placed_in_the_cache(hub_dir, monkeypatch):
    state = _imagenet_state(3)
    dst = hub_dir / "checkpoints" / "resnest101_d2-f3b931b2.pth"
    dst.parent.mkdir(parents=True)
    torch.save(state, dst)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("must not download"))
    assert resolve_pretrained("open-mmlab://resnest101") == str(dst)
    _assert_loaded(build_backbone(_cfg("open-mmlab://resnest101"), pretrained=True), state)


def test_bad_specs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model-zoo name 'open-mmlab://resnest9'"):
        resolve_pretrained("open-mmlab://resnest9")
    with pytest.raises(FileNotFoundError, match="backbone.pretrained: no file at"):
        resolve_pretrained(str(tmp_path / "nope.pth"))
    torch.save({"layer9.weight": torch.zeros(1), "conv1.0.weight": torch.zeros(1, 1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="shapes differ"):
        build_backbone(_cfg(str(tmp_path / "bad.pth")), pretrained=True)
    torch.save({"layer1.nothing": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="holds no tensor of this backbone"):
        build_backbone(_cfg(str(tmp_path / "other.pth")), pretrained=True)
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        build_backbone(_cfg(str(tmp_path / "text.pth")), pretrained=True)


def test_inference_builds_do_not_load(tmp_path):
    cfg = get_config("tiny_test").model
    cfg.backbone.pretrained = str(tmp_path / "absent.pth")
    build_model(cfg)  # pretrained=False: nothing is read
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        build_model(cfg, pretrained=True)


def test_module_logger_is_under_detection():
    assert pretrained_mod.logger.name.startswith("detection.")
