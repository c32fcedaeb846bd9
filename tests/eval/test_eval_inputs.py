"""Bad inputs are OvdetErrors naming the record; empty detections give zeros and a warning."""

from __future__ import annotations

import logging

import pytest

from ovdet.data.vocab import Category, Vocabulary
from ovdet.errors import OvdetError
from ovdet.eval.metrics import evaluate, evaluate_files, harmonic_mean


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("image_id", 999999, "image_id is not a GT image"),
        ("score", float("nan"), "score is NaN"),
        ("bbox", [1.0, 2.0, float("inf"), 3.0], "bbox has NaN or infinite"),
        ("bbox", [1.0, 2.0, -4.0, 3.0], "negative width"),
        ("bbox", [1.0, 2.0, 3.0], "bbox must be 4 numbers"),
        ("image_id", "100", "image_id must be an integer"),
    ],
)
def test_bad_detection_is_reported_with_its_index(coco_world, field, value, reason):
    gt, detections, vocab = coco_world
    detections[5][field] = value
    with pytest.raises(OvdetError, match=r"dets\.json: detection #5") as error:
        evaluate(gt, detections, vocab, detections_name="dets.json")
    assert reason in str(error.value)


def test_detection_missing_a_field_is_reported(coco_world):
    gt, detections, vocab = coco_world
    del detections[3]["score"]
    with pytest.raises(OvdetError, match="detection #3: missing score"):
        evaluate(gt, detections, vocab)


def test_vocabulary_name_missing_from_gt_is_a_user_error(coco_world):
    gt, detections, vocab = coco_world
    vocab.categories.append(Category(500, "unicorn", "novel"))
    with pytest.raises(OvdetError, match="'unicorn' .* not among the GT categories"):
        evaluate(gt, detections, vocab)


def test_vocabulary_id_disagreeing_with_gt_is_a_user_error(coco_world):
    gt, detections, _ = coco_world
    with pytest.raises(OvdetError, match="'car' has id 4 but GT id 3"):
        evaluate(gt, detections, Vocabulary([Category(4, "car")]))


def test_empty_detections_report_zeros_and_warn(coco_world, caplog):
    gt, _, vocab = coco_world
    with caplog.at_level(logging.WARNING):
        metrics = evaluate(gt, [], vocab)
    assert "no detections" in caplog.text
    assert metrics["num_detections"] == 0
    assert all(metrics[name][split] in (0.0, -1.0) for name in ("AP", "AP50", "APs") for split in ("base", "all"))
    assert metrics["AP"]["all"] == 0.0


def test_malformed_json_names_the_file(coco_world, tmp_path):
    gt_path = tmp_path / "gt.json"
    gt_path.write_text("{}")
    detections_path = tmp_path / "dets.json"
    detections_path.write_text('[{"image_id": 1,')
    with pytest.raises(OvdetError, match=r"dets\.json:1: invalid JSON"):
        evaluate_files(gt_path, detections_path, "cat", tmp_path / "out")


def test_unknown_engine_is_a_user_error(coco_world):
    gt, detections, vocab = coco_world
    with pytest.raises(OvdetError, match="engine"):
        evaluate(gt, detections, vocab, engine="mine")


@pytest.mark.parametrize(("base", "novel", "expected"), [(0.4, 0.2, 0.8 * 0.2 / 0.6), (0.3, -1, -1), (0, 0, 0)])
def test_harmonic_mean_handles_undefined_and_zero(base, novel, expected):
    assert harmonic_mean(base, novel) == pytest.approx(expected)


def test_gt_with_string_image_ids_is_a_user_error(coco_world):
    gt, detections, vocab = coco_world
    gt["images"][0]["id"] = "100"
    with pytest.raises(OvdetError, match="GT: image im0.png: 'id' must be an integer"):
        evaluate(gt, detections, vocab)
