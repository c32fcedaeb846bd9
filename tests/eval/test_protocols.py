"""Each federated rule on a hand-worked case, protocol choice and its input checks."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from ovdet.data.vocab import load_vocabulary
from ovdet.errors import OvdetError
from ovdet.eval.metrics import evaluate, evaluate_files
from ovdet.eval.protocols import top_k_mask

BOX_A, BOX_B = [10.0, 10.0, 50.0, 50.0], [200.0, 100.0, 60.0, 40.0]


def lvis_gt(images: list[dict], annotations: list[tuple[int, int, list[float]]]) -> dict:
    """Images ``{"id", "neg", "not_exhaustive"}`` and annotations (image, category, box) of categories
    1 (apple, frequent), 2 (banana, rare) and 3 (cherry, common)."""
    return {
        "images": [{"id": im["id"], "file_name": f"{im['id']}.jpg", "width": 640, "height": 480,
                    "neg_category_ids": im.get("neg", []), "not_exhaustive_category_ids": im.get("not_exhaustive", [])}
                   for im in images],
        "annotations": [{"id": i + 1, "image_id": image, "category_id": category, "bbox": box, "area": box[2] * box[3],
                         "iscrowd": 0} for i, (image, category, box) in enumerate(annotations)],
        "categories": [{"id": 1, "name": "apple", "frequency": "f"}, {"id": 2, "name": "banana", "frequency": "r"},
                       {"id": 3, "name": "cherry", "frequency": "c"}],
    }  # fmt: skip


def det(image: int, category: int, box: list[float], score: float) -> dict:
    return {"image_id": image, "category_id": category, "bbox": box, "score": score}


def apple_ap(gt: dict, detections: list[dict], protocol: str) -> float:
    metrics = evaluate(gt, detections, load_vocabulary("lvis", gt=gt), protocol=protocol)
    return metrics["per_category"]["apple"]["AP"]


@pytest.mark.parametrize(("negatives", "coco_ap", "lvis_ap"), [([], 0.5, 1.0), ([1], 0.5, 0.5)])
def test_detection_of_an_unverified_category_is_dropped(negatives, coco_ap, lvis_ap):
    """Image 2 has no apple label: a false apple scored above the true one costs COCOeval half the
    AP (precision 1/2 at full recall), and nothing under lvis unless image 2 lists apple as absent."""
    gt = lvis_gt([{"id": 1}, {"id": 2, "neg": negatives}], [(1, 1, BOX_A)])
    detections = [det(2, 1, BOX_B, 0.9), det(1, 1, BOX_A, 0.8)]
    assert apple_ap(gt, detections, "coco") == pytest.approx(coco_ap, abs=1e-9)
    assert apple_ap(gt, detections, "lvis") == pytest.approx(lvis_ap, abs=1e-9)


def test_unmatched_detection_of_a_not_exhaustive_category_is_ignored():
    """Image 2's apples are not exhaustively annotated: its unmatched apple (0.9) is no false positive
    under lvis (AP 1); COCOeval ranks it first: precision 0, 1/2, 2/3 -> interpolated 2/3."""
    gt = lvis_gt([{"id": 1}, {"id": 2, "not_exhaustive": [1]}], [(1, 1, BOX_A), (2, 1, BOX_A)])
    detections = [det(2, 1, BOX_B, 0.9), det(1, 1, BOX_A, 0.8), det(2, 1, BOX_A, 0.7)]
    assert apple_ap(gt, detections, "coco") == pytest.approx(2 / 3, abs=1e-9)
    assert apple_ap(gt, detections, "lvis") == pytest.approx(1.0, abs=1e-9)


def test_only_the_top_300_detections_per_image_count():
    """300 verified-negative bananas outscore the one true apple, which falls outside the cap."""
    gt = lvis_gt([{"id": 1, "neg": [2]}], [(1, 1, BOX_A)])
    detections = [det(1, 2, BOX_B, 0.9)] * 300 + [det(1, 1, BOX_A, 0.5)]
    assert apple_ap(gt, detections, "lvis") == 0.0
    assert apple_ap(gt, detections, "coco") == 1.0
    metrics = evaluate(gt, detections, load_vocabulary("lvis", gt=gt), protocol="lvis")
    assert metrics["detections"] == {"read": 301, "over_image_cap": 1, "outside_vocabulary": 0, "zero_area": 0,
                                     "unverified": 0, "evaluated": 300}  # fmt: skip


def test_fixed_ap_keeps_the_top_k_per_category_and_no_per_image_cap():
    gt = lvis_gt([{"id": 1, "neg": [2]}, {"id": 2}], [(1, 1, BOX_A), (2, 1, BOX_A)])
    detections = [det(1, 2, BOX_B, 0.9)] * 400 + [det(1, 1, BOX_A, 0.5), det(2, 1, BOX_B, 0.7), det(2, 1, BOX_A, 0.4)]
    vocab = load_vocabulary("lvis", gt=gt)
    fixed = evaluate(gt, detections, vocab, protocol="lvis-fixed", dets_per_category=2)
    # apples kept: the 0.7 miss and the 0.5 hit (the 0.4 hit is cut): recall reaches 1/2 at precision 1/2,
    # so 51 of COCOeval's 101 recall thresholds (0 to 0.5) get 1/2
    assert fixed["per_category"]["apple"]["AP"] == pytest.approx(51 / 101 * 0.5, abs=1e-9)
    assert fixed["detections"]["over_category_cap"] == 398 + 1
    # all three apples: precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> 2/3 at every recall threshold
    assert evaluate(gt, detections, vocab, protocol="lvis-fixed")["per_category"]["apple"]["AP"] == pytest.approx(2 / 3)


def test_zero_area_boxes_and_ignored_gt_are_left_out_as_lvis_api_does():
    gt = lvis_gt([{"id": 1}], [(1, 1, BOX_A), (1, 1, BOX_B)])
    gt["annotations"][1]["ignore"] = 1
    detections = [det(1, 1, [5.0, 5.0, 0.0, 20.0], 0.95), det(1, 1, BOX_B, 0.9), det(1, 1, BOX_A, 0.8)]
    metrics = evaluate(gt, detections, load_vocabulary("lvis", gt=gt), protocol="lvis")
    assert metrics["per_category"]["apple"]["AP"] == 1.0  # the ignored box's match is neither TP nor FP
    assert metrics["detections"]["zero_area"] == 1
    coco = evaluate(gt, detections, load_vocabulary("lvis", gt=gt), protocol="coco")
    assert coco["per_category"]["apple"]["AP"] < 1.0  # COCOeval scores both boxes and the zero-area one


def test_auto_protocol_follows_the_gt_format():
    gt = lvis_gt([{"id": 1}], [(1, 1, BOX_A)])
    vocab = load_vocabulary("lvis", gt=gt)
    assert evaluate(gt, [det(1, 1, BOX_A, 0.5)], vocab)["protocol"] == "lvis"
    for image in gt["images"]:
        del image["neg_category_ids"], image["not_exhaustive_category_ids"]
    assert evaluate(gt, [det(1, 1, BOX_A, 0.5)], vocab)["protocol"] == "coco"


@pytest.mark.parametrize("key", ["neg_category_ids", "not_exhaustive_category_ids"])
def test_lvis_protocol_needs_federated_labels_on_every_image(key):
    gt = lvis_gt([{"id": 1}, {"id": 2}], [(1, 1, BOX_A)])
    del gt["images"][1][key]
    with pytest.raises(OvdetError, match=f"image 2 has no '{key}' list, which --protocol lvis needs"):
        evaluate(gt, [], load_vocabulary("lvis", gt=gt), protocol="lvis")


def test_unknown_protocol_is_a_user_error():
    gt = lvis_gt([{"id": 1}], [(1, 1, BOX_A)])
    with pytest.raises(OvdetError, match="unknown evaluation protocol 'voc'"):
        evaluate(gt, [], load_vocabulary("lvis", gt=gt), protocol="voc")


def test_detections_outside_the_vocabulary_are_dropped_counted_and_named(caplog):
    gt = lvis_gt([{"id": 1}], [(1, 1, BOX_A), (1, 2, BOX_B)])
    vocab = load_vocabulary("apple", gt=gt)
    detections = [det(1, 1, BOX_A, 0.9), det(1, 2, BOX_B, 0.8), det(1, 3, BOX_B, 0.7), det(1, 1, BOX_B, 0.1)]
    with caplog.at_level(logging.WARNING):
        metrics = evaluate(gt, detections, vocab, protocol="coco", detections_name="dets.json")
    assert "dets.json: 2 detections of categories outside the vocabulary dropped (e.g. detection #1, category_id 2)" \
        in caplog.text
    assert metrics["detections"] == {"read": 4, "outside_vocabulary": 2, "evaluated": 2}
    assert metrics["AP"]["all"] == pytest.approx(1.0)


def test_top_k_mask_keeps_the_earlier_of_tied_scores():
    groups = [7, 7, 7, 3, 7]
    scores = [0.5, 0.9, 0.5, 0.1, 0.5]
    assert top_k_mask(np.array(groups), np.array(scores), 2).tolist() == [True, True, False, True, False]


def test_metrics_json_and_table_name_the_protocol_and_show_frequency_groups(tmp_path, capsys):
    gt = lvis_gt([{"id": 1, "neg": [3]}, {"id": 2}], [(1, 1, BOX_A), (2, 2, BOX_B)])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps([det(1, 1, BOX_A, 0.9), det(2, 2, BOX_B, 0.8), det(1, 3, BOX_B, 0.7)]))
    metrics = evaluate_files(tmp_path / "gt.json", tmp_path / "dets.json", "lvis", tmp_path / "out", report=False)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["protocol"] == metrics["protocol"] == "lvis"
    assert saved["settings"]["max_dets_per_image"] == 300 and saved["settings"]["federated"] is True
    printed = capsys.readouterr().out
    assert "AR@300" in printed and "ARl@300" in printed and "APr 100.0  APc -  APf 100.0" in printed
    assert "protocol lvis" in printed


def test_cli_lvis_protocol_on_coco_gt_is_one_line_exit_2(tmp_path):
    gt = lvis_gt([{"id": 1}], [(1, 1, BOX_A)])
    del gt["images"][0]["neg_category_ids"]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps([det(1, 1, BOX_A, 0.9)]))
    command = [sys.executable, "-m", "ovdet.cli", "eval", "--gt", str(tmp_path / "gt.json"), "--detections",
               str(tmp_path / "dets.json"), "--vocab", "lvis", "--protocol", "lvis", "--out", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "image 1 has no 'neg_category_ids' list" in result.stderr
