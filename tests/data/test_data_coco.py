import json
import logging

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from detection.data.coco import CocoDetection, decode_segmentation
from detection.data.loader import collate

H, W = 30, 40


def _write_jpeg(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path, quality=95)


def _rle_mask():
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[5:12, 20:31] = 1  # rows 5..11, columns 20..30 → box (20, 5, 31, 12)
    return mask


@pytest.fixture
def coco_dir(tmp_path):
    """good.jpg: polygon, compressed RLE, uncompressed RLE, crowd and degenerate annotations; empty.jpg: none;
    corrupt.jpg: truncated JPEG with one annotation; missing.jpg: not on disk; thin.jpg: only a degenerate box."""
    images = tmp_path / "images"
    images.mkdir()
    for name, seed in (("good.jpg", 0), ("empty.jpg", 1), ("thin.jpg", 2), ("corrupt.jpg", 3)):
        _write_jpeg(images / name, seed)
    data = (images / "corrupt.jpg").read_bytes()
    (images / "corrupt.jpg").write_bytes(data[: len(data) // 2])
    rle = mask_util.encode(np.asfortranarray(_rle_mask()))
    compressed = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
    uncompressed_mask = np.zeros((H, W), dtype=np.uint8)
    uncompressed_mask[20:25, 2:6] = 1
    flat = uncompressed_mask.flatten(order="F")  # column-major run lengths, starting with zeros
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])) != 0)
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    ann = lambda i, img, cat, bbox, segm, crowd=0: {  # noqa: E731
        "id": i, "image_id": img, "category_id": cat, "bbox": bbox, "area": 1.0, "iscrowd": crowd,
        "segmentation": segm}
    annotations = [
        ann(1, 1, 7, [2.0, 3.0, 10.0, 8.0], [[2, 3, 12, 3, 12, 11, 2, 11]]),
        ann(2, 1, 3, [20.0, 5.0, 11.0, 7.0], compressed),
        ann(3, 1, 7, [2.0, 20.0, 4.0, 5.0], {"size": [H, W], "counts": counts}),
        ann(4, 1, 3, [0.0, 0.0, 40.0, 30.0], compressed, crowd=1),
        ann(5, 1, 3, [5.0, 5.0, 0.5, 10.0], [[5, 5, 5.5, 5, 5.5, 15]]),
        ann(6, 3, 7, [1.0, 1.0, 10.0, 0.2], [[1, 1, 11, 1, 11, 1.2]]),
        ann(7, 4, 7, [1.0, 1.0, 10.0, 10.0], [[1, 1, 11, 1, 11, 11, 1, 11]]),
        ann(8, 5, 7, [1.0, 1.0, 10.0, 10.0], [[1, 1, 11, 1, 11, 11, 1, 11]]),
    ]
    files = ["good.jpg", "empty.jpg", "thin.jpg", "corrupt.jpg", "missing.jpg"]
    payload = {
        "images": [{"id": i + 1, "file_name": f, "height": H, "width": W} for i, f in enumerate(files)],
        "annotations": annotations,
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(payload))
    return tmp_path, uncompressed_mask


def test_training_split_filters_and_counts(coco_dir, caplog, monkeypatch):
    root, _ = coco_dir
    monkeypatch.setattr(logging.getLogger("detection"), "propagate", True)  # the CLI setup may have turned it off
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(str(root / "ann.json"), str(root / "images"), with_masks=True, train=True)
    # good, thin (only a degenerate box: kept background-only, as mmdetection's filter_empty_gt), corrupt (its
    # failure shows only when read)
    assert [r["image_id"] for r in ds.records] == [1, 3, 4]
    assert ds.skipped == {"missing image file": 1, "crowd annotation (ignore region)": 1, "degenerate box": 2,
                          "image without annotations": 1}
    assert "missing image file: 1" in caplog.text and "kept 3 images" in caplog.text
    assert ds.cat_ids == [3, 7] and ds.class_names == ["three", "seven"]


def test_targets_boxes_labels_masks(coco_dir):
    root, uncompressed_mask = coco_dir
    ds = CocoDetection(str(root / "ann.json"), str(root / "images"), with_masks=True, train=True)
    image, target = ds[0]
    # no transform: the decoded uint8 pixels, a quarter of the bytes of float32 to move to the device
    assert image.shape == (3, H, W) and image.dtype == torch.uint8 and image.is_contiguous() and image.max() > 0
    expected = torch.tensor([[2, 3, 12, 11], [20, 5, 31, 12], [2, 20, 6, 25]], dtype=torch.float32)
    torch.testing.assert_close(target["boxes"], expected)
    assert target["labels"].tolist() == [1, 0, 1]  # cat 7 → 1, cat 3 → 0
    masks = target["masks"]
    assert masks.shape == (3, H, W) and masks.dtype == torch.uint8
    assert torch.equal(masks[1], torch.from_numpy(_rle_mask()))
    assert torch.equal(masks[2], torch.from_numpy(uncompressed_mask))
    ys, xs = torch.nonzero(masks[0], as_tuple=True)  # polygon mask lies within its box
    assert masks[0].sum() > 60 and xs.min() >= 2 and xs.max() < 12 and ys.min() >= 3 and ys.max() < 11
    assert target["image_id"] == 1 and target["orig_size"] == (H, W)


def test_corrupt_image_is_dropped_by_collate(coco_dir):
    root, _ = coco_dir
    ds = CocoDetection(str(root / "ann.json"), str(root / "images"), train=True)
    assert ds[2] is None  # truncated JPEG
    images, targets, dropped = collate([ds[0], ds[2]])
    assert len(images) == len(targets) == 1 and dropped == 1


def test_evaluation_split_keeps_images_without_annotations(coco_dir):
    root, _ = coco_dir
    ds = CocoDetection(str(root / "ann.json"), str(root / "images"), train=False)
    assert [r["image_id"] for r in ds.records] == [1, 2, 3, 4]
    _, target = ds[1]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_decode_segmentation_rejects_short_polygons():
    assert decode_segmentation([[1, 1, 5, 5]], H, W) is None
    assert decode_segmentation([[1, 1, 9, 1, 9, 9]], H, W).sum() > 0


def test_missing_annotation_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        CocoDetection(str(tmp_path / "nope.json"), str(tmp_path))
