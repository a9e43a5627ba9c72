import os

import pycocotools.mask as mask_util
import pytest
import torch

from detection.config import DataConfig
from detection.data.build import build_dataset
from detection.data.loader import build_test_loader
from detection.data.shapes import ShapesParams, prepare_shapes
from detection.engine.evaluate import STAT_NAMES, coco_summary, evaluate, to_coco_results


class OracleModel(torch.nn.Module):
    """Returns the ground truth of each image (looked up by its size order), optionally shifted."""

    def __init__(self, dataset, shift: float = 0.0):
        super().__init__()
        self.answers = []
        for index in range(len(dataset)):
            _, target = dataset[index]
            self.answers.append(target)
        self.shift = shift
        self.calls = 0

    def forward(self, images, targets=None, original_sizes=None):
        outputs = []
        for _ in images:
            target = self.answers[self.calls]
            self.calls += 1
            n = len(target["boxes"])
            masks = target["masks"]
            boxes = target["boxes"] + self.shift
            if self.shift:
                masks = torch.roll(masks, shifts=(int(self.shift), int(self.shift)), dims=(1, 2))
            outputs.append({"boxes": boxes, "scores": torch.linspace(0.9, 0.5, n), "labels": target["labels"],
                            "masks": masks})
        return outputs


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    root = prepare_shapes(str(tmp_path_factory.mktemp("shapes")), ShapesParams(num_train=2, num_val=6,
                                                                               image_size=64, seed=2))
    cfg = DataConfig(dataset="shapes", with_masks=True, test_scale=64, max_size=64)
    return build_dataset(cfg, root, train=False)


@pytest.mark.parametrize("shift, perfect", [(0.0, True), (4.0, False)])
def test_oracle_predictions(val_set, tmp_path, shift, perfect):
    loader = build_test_loader(val_set, images_per_gpu=2, workers=0)
    out = str(tmp_path / "results.json")
    metrics = evaluate(OracleModel(val_set, shift), loader, torch.device("cpu"), with_masks=True, out_path=out,
                       progress=False, log=lambda _: None)
    assert os.path.isfile(out)
    for kind in ("bbox", "segm"):
        assert set(metrics[kind]) == set(STAT_NAMES)
        if perfect:
            assert metrics[kind]["AP"] == pytest.approx(1.0)
        else:
            assert 0.0 <= metrics[kind]["AP"] < 0.9


def test_to_coco_results_formats():
    output = {"boxes": torch.tensor([[1.0, 2.0, 11.0, 7.0]]), "scores": torch.tensor([0.75]),
              "labels": torch.tensor([1]), "masks": torch.zeros(1, 8, 12, dtype=torch.uint8)}
    output["masks"][0, 2:7, 1:11] = 1
    (result,) = to_coco_results(output, image_id=42, cat_ids=[5, 9])
    assert result["image_id"] == 42 and result["category_id"] == 9 and result["score"] == 0.75
    assert result["bbox"] == [1.0, 2.0, 10.0, 5.0]
    rle = dict(result["segmentation"], counts=result["segmentation"]["counts"].encode())
    assert torch.equal(torch.from_numpy(mask_util.decode(rle)), output["masks"][0])


def test_no_detections_scores_zero(val_set):
    stats, text = coco_summary(val_set.coco, [], [1, 2], "bbox")
    assert stats == [0.0] * 12 and "no detections" in text
