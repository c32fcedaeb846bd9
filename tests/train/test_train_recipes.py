"""The detection-toolbox recipes train end to end: GLIP's (ATSS + centerness) and YOLO-World's (TAL +
DFL + CIoU + BCE + mosaic) through `ovdet train`, resume bitwise after SIGKILL, and export models that
inference scores and post-processes the way they were trained."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from train_runs import describe, final_weights, latest_tag, metrics, run_train, start_train, wait_until

GLIP = {"loss__assigner": "atss", "model__quality": "centerness", "loss__weights__loss_l1": 0}
YOLO_WORLD = {"loss__assigner": "tal", "model__box_head": "dfl", "loss__classification": "bce",
              "loss__weights__loss_l1": 0, "loss__weights__loss_giou": 0, "loss__weights__loss_ciou": 7.5,
              "loss__weights__loss_labels": 0.5, "model__quality": "iou", "loader__mosaic_probability": 0.5}


@pytest.mark.slow
def test_yolo_world_recipe_resumes_bitwise_after_sigkill(tiny_shards, tmp_path):
    reference = tmp_path / "reference"
    result = run_train(reference, tiny_shards, **YOLO_WORLD)
    assert result.returncode == 0, describe(result)
    rows = [row for row in metrics(reference) if "loss_dfl" in row]
    assert len(rows) == 8 and sum(row["loss_dfl"] > 0 and row["loss_quality"] > 0 and row["loss_ciou"] > 0
                                  for row in rows) >= 4  # batches of image-text samples only: 0
    out = tmp_path / "resumed"
    process = start_train(out, tiny_shards, **YOLO_WORLD)
    wait_until(lambda: latest_tag(out) == "step-0000004", process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    result = run_train(out, tiny_shards, **YOLO_WORLD)
    assert result.returncode == 0 and "at step 4" in result.stderr, describe(result)
    resumed, expected = final_weights(out), final_weights(reference)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
    assert [m["loss"] for m in metrics(out)] == [m["loss"] for m in metrics(reference)]


@pytest.mark.slow
def test_glip_recipe_exports_a_model_scored_with_centerness_and_class_wise_nms(tiny_shards, tmp_path):
    from ovdet.infer import Detector

    out = tmp_path / "glip"
    result = run_train(out, tiny_shards, train__checkpoint_every=8, **GLIP)
    assert result.returncode == 0, describe(result)
    quality = [row["loss_quality"] for row in metrics(out) if "loss_quality" in row]
    assert len(quality) == 8 and sum(value > 0 for value in quality) >= 4  # batches of image-text samples only: 0
    detector = Detector.from_pretrained(out / "final")
    assert detector.spec["assigner"] == "atss" and detector.spec["quality"] == "centerness"
    assert any(name.startswith("quality_head.") for name in final_weights(out))
    assert detector.nms_settings().method == "class"  # auto after a one-to-many assigner
    images = sorted((tiny_shards.parent / "world" / "images" / "eval").glob("*.jpg"))[:2]
    assert len(images) == 2
    found = detector.detect(images, ["red circle", "blue square"], score_threshold=0.0, top_k=5)
    assert [len(f) for f in found] == [5, 5] and all(0 <= d.score <= 1 for f in found for d in f)
