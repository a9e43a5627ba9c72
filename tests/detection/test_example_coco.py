"""`python -m detection.data.example_coco OUT_DIR`: a COCO-format folder as a dataset of one's own is laid out,
with category ids that are not 1..K, a training image without annotations and a crowd RLE annotation; the small
config reads it as it is."""

import json

import pytest

from detection.configs import get_config
from detection.data.build import build_dataset
from detection.data.example_coco import check_rle, main


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    out = tmp_path_factory.mktemp("example")
    assert main([str(out), "--train", "10", "--val", "3", "--size", "64"]) == 0
    return out


def test_the_layout_and_the_annotations(example):
    train = json.loads((example / "annotations" / "train.json").read_text())
    val = json.loads((example / "annotations" / "val.json").read_text())
    assert [c["id"] for c in train["categories"]] == [11, 3, 7] == [c["id"] for c in val["categories"]]
    assert len(train["images"]) == 10 and len(val["images"]) == 3
    assert all((example / "train" / image["file_name"]).is_file() for image in train["images"])
    annotated = {a["image_id"] for a in train["annotations"]}
    assert len(annotated) == 9  # one image without annotations
    crowd = [a for a in train["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and isinstance(crowd[0]["segmentation"]["counts"], list)  # uncompressed RLE
    assert check_rle(crowd[0]["segmentation"]) == crowd[0]["area"] > 0
    assert {a["category_id"] for a in train["annotations"]} <= {3, 7, 11}


def test_the_small_config_reads_it(example):
    cfg = get_config("small_mask_rcnn_s14")
    train_set = build_dataset(cfg.data, str(example), train=True)
    assert train_set.cat_ids == [3, 7, 11] and train_set.class_names == ["circle", "square", "triangle"]
    assert len(train_set) == 9  # the image without annotations is left out of training
    assert len(build_dataset(cfg.data, str(example), train=False)) == 3


def test_too_few_images_are_refused(tmp_path, capsys):
    assert main([str(tmp_path), "--train", "3"]) == 2
    assert capsys.readouterr().err.startswith("error: need more than 8 training images")
