"""Under the coco protocol every reported AP and AR equals pycocotools COCOeval run separately on that
category subset (``stats[:12]``)."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ovdet.eval.engine import pack_pairs
from ovdet.eval.metrics import evaluate

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR@1", "AR@10", "AR@100", "ARs@100", "ARm@100",
              "ARl@100")  # COCOeval.stats, in order

TOLERANCE = 1e-6


def pycocotools_stats(gt: dict, detections: list[dict], category_ids: list[int]) -> dict[str, float]:
    """The reference: COCO + loadRes + COCOeval(catIds=subset) + summarize, on copies of the inputs."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.catIds = category_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(COCO_STATS, evaluator.stats.tolist(), strict=True))


@pytest.fixture(scope="module")
def reference(coco_world_shared):
    gt, detections, vocab = coco_world_shared
    subsets = {"base": vocab.base_ids, "novel": vocab.novel_ids, "all": vocab.ids}
    per_subset = {key: pycocotools_stats(gt, detections, ids) for key, ids in subsets.items()}
    per_category = {c.name: pycocotools_stats(gt, detections, [c.id]) for c in vocab.categories}
    return per_subset, per_category


def test_fixture_exercises_crowd_areas_maxdets_empty_categories_and_images(coco_world):
    gt, detections, vocab = coco_world
    areas = np.array([a["area"] for a in gt["annotations"]])
    assert any(a["iscrowd"] for a in gt["annotations"])
    assert (areas < 32**2).any() and ((areas > 32**2) & (areas < 96**2)).any() and (areas > 96**2).any()
    per_image_category: dict = {}
    for d in detections:
        key = (d["image_id"], d["category_id"])
        per_image_category[key] = per_image_category.get(key, 0) + 1
    assert max(per_image_category.values()) > 100
    assert 34 in vocab.ids and all(a["category_id"] != 34 for a in gt["annotations"])
    assert {im["id"] for im in gt["images"]} - {d["image_id"] for d in detections}


@pytest.mark.parametrize("engine", ["faster", "pycocotools"])
def test_split_ap_and_ar_equal_pycocotools_run_per_subset(coco_world, reference, engine):
    gt, detections, vocab = coco_world
    metrics = evaluate(gt, detections, vocab, engine=engine)
    assert metrics["protocol"] == "coco"
    per_subset, _ = reference
    for name in COCO_STATS:
        for split in ("base", "novel", "all"):
            assert abs(metrics[name][split] - per_subset[split][name]) <= TOLERANCE, (name, split)


@pytest.mark.parametrize("engine", ["faster", "pycocotools"])
def test_per_category_ap_equals_pycocotools_run_per_category(coco_world, reference, engine):
    gt, detections, vocab = coco_world
    metrics = evaluate(gt, detections, vocab, engine=engine)
    _, per_category = reference
    for name, expected in per_category.items():
        assert abs(metrics["per_category"][name]["AP"] - expected["AP"]) <= TOLERANCE, name
        assert abs(metrics["per_category"][name]["AP50"] - expected["AP50"]) <= TOLERANCE, name


def test_category_without_gt_is_undefined_like_pycocotools(coco_world, reference):
    gt, detections, vocab = coco_world
    metrics = evaluate(gt, detections, vocab)
    assert metrics["per_category"]["zebra"]["AP"] == -1
    assert reference[1]["zebra"]["AP"] == -1


def test_harmonic_mean_combines_base_and_novel(coco_world):
    gt, detections, vocab = coco_world
    metrics = evaluate(gt, detections, vocab)
    base, novel = metrics["AP"]["base"], metrics["AP"]["novel"]
    assert metrics["AP"]["hm"] == pytest.approx(2 * base * novel / (base + novel))


def test_evaluation_does_not_modify_its_inputs(coco_world):
    gt, detections, vocab = coco_world
    before = copy.deepcopy((gt, detections))
    evaluate(gt, detections, vocab)
    assert (gt, detections) == before


def test_pack_pairs_ranks_images_per_category_in_image_order():
    images, categories = np.array([5, 3, 5, 9, 5]), np.array([1, 1, 2, 1, 1])
    virtual_images, pairs_per_category = pack_pairs(images, categories, evaluated=np.array([1, 2]))
    assert virtual_images.tolist() == [2, 1, 1, 3, 2]
    assert pairs_per_category.tolist() == [3, 1]
