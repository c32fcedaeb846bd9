"""The lvis and lvis-fixed protocols equal lvis-api run in the test on generated federated cases.

lvis: ``LVISEval(gt, LVISResults(gt, dets, max_dets=300), "bbox")``, every value it reports.
lvis-fixed: the Fixed AP definition (Dave et al. 2021: top K per category over the dataset, no
per-image cap) written out in ``lvis_cases.fixed_ap_reference`` and scored by lvis-api.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from lvis_cases import fixed_ap_reference, lvis_api, lvis_api_results, make_lvis_case

from ovdet.data.vocab import load_vocabulary
from ovdet.eval.metrics import evaluate

TOLERANCE = 1e-6
LVIS_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300", "ARs@300", "ARm@300", "ARl@300")


def ours(metrics: dict, key: str) -> float:
    value = metrics[key.replace("@-1", "@all")]
    return value["all"] if isinstance(value, dict) else value


def assert_equal_to_reference(metrics: dict, reference: dict) -> None:
    differences = {key: abs(ours(metrics, key) - value) for key, value in reference.items()}
    assert max(differences.values()) <= TOLERANCE, {k: d for k, d in differences.items() if d > TOLERANCE}


def test_generated_cases_exercise_every_federated_rule():
    gt, detections = make_lvis_case(seed=0)
    per_image = np.bincount([d["image_id"] for d in detections])
    assert per_image.max() > 300
    assert any(a.get("ignore") for a in gt["annotations"]) and any(a["area"] == 0 for a in gt["annotations"])
    assert any(d["bbox"][2] == 0 for d in detections)
    assert any(image["not_exhaustive_category_ids"] for image in gt["images"])
    assert {image["id"] for image in gt["images"]} - {d["image_id"] for d in detections}
    verified = {(im["id"], c) for im in gt["images"] for c in im["neg_category_ids"]}
    verified |= {(a["image_id"], a["category_id"]) for a in gt["annotations"]}
    assert any((d["image_id"], d["category_id"]) not in verified for d in detections)
    scores = [d["score"] for d in detections if d["image_id"] == int(np.argmax(per_image))]
    assert len(scores) > len(set(scores))  # ties, also at the 300 cut
    assert {c["frequency"] for c in gt["categories"]} == {"r", "c", "f"}


@pytest.mark.parametrize("seed", range(24))
def test_lvis_protocol_equals_lvis_api(seed, tmp_path):
    gt, detections = make_lvis_case(seed)
    reference = lvis_api_results(gt, detections, tmp_path)
    assert set(reference) == set(LVIS_KEYS)
    metrics = evaluate(gt, detections, load_vocabulary("lvis", gt=gt), protocol="lvis")
    assert_equal_to_reference(metrics, reference)


@pytest.mark.parametrize("seed", [100, 101, 102])
def test_lvis_protocol_equals_lvis_api_with_the_pycocotools_engine(seed, tmp_path):
    gt, detections = make_lvis_case(seed)
    reference = lvis_api_results(gt, detections, tmp_path)
    metrics = evaluate(gt, detections, load_vocabulary("lvis", gt=gt), protocol="lvis", engine="pycocotools")
    assert_equal_to_reference(metrics, reference)


@pytest.mark.parametrize(("seed", "dets_per_category"), [(200, 25), (201, 60), (202, 10_000), (203, 1)])
def test_fixed_ap_equals_its_definition_scored_by_lvis_api(seed, dets_per_category, tmp_path):
    gt, detections = make_lvis_case(seed)
    reference = fixed_ap_reference(gt, detections, tmp_path, dets_per_category)
    metrics = evaluate(gt, detections, load_vocabulary("lvis", gt=gt), protocol="lvis-fixed",
                       dets_per_category=dets_per_category)  # fmt: skip
    assert_equal_to_reference(metrics, reference)
    assert metrics["settings"]["max_dets_per_category"] == dets_per_category
    assert metrics["settings"]["max_dets_per_image"] is None


def test_user_split_numbers_equal_lvis_api_run_on_each_subset(tmp_path):
    """base / novel of any split come from the same federated per-category arrays: lvis-api with
    ``params.cat_ids`` = the subset gives the same AP and AR."""
    gt, detections = make_lvis_case(seed=7)
    novel = [c["name"] for c in gt["categories"][::3]]
    vocab = load_vocabulary("lvis", gt=gt, novel=novel)
    metrics = evaluate(gt, detections, vocab, protocol="lvis")
    lvis, lvis_gt = lvis_api(gt, tmp_path)
    for split, ids in (("base", vocab.base_ids), ("novel", vocab.novel_ids)):
        evaluator = lvis.LVISEval(lvis_gt, lvis.LVISResults(lvis_gt, copy.deepcopy(detections)), "bbox")
        evaluator.params.cat_ids = sorted(ids)
        evaluator.run()
        for key in ("AP", "AP50", "APs", "AR@300", "ARl@300"):
            assert abs(metrics[key][split] - evaluator.results[key]) <= TOLERANCE, (split, key)
