"""Code-generated COCO fixtures for the eval tests (fixed seeds, no committed files)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from generated_boxes import IMAGE_SIZE, jitter, random_box

from ovdet.data.vocab import Category, Vocabulary

CATEGORIES = [(1, "person"), (2, "bicycle"), (3, "car"), (5, "bus"), (8, "truck"), (13, "cat"),
              (21, "dog"), (34, "zebra")]  # fmt: skip
NOVEL = {"bus", "cat", "zebra"}
CATEGORY_WITHOUT_GT = 34


def make_ground_truth(rng: np.random.Generator, num_images: int) -> dict:
    """Mixed box sizes, ~10% crowd regions, a COCO 'area' that differs from w*h, no GT for id 34."""
    images = [{"id": 100 + i, "file_name": f"im{i}.png", "width": IMAGE_SIZE[0], "height": IMAGE_SIZE[1]}
              for i in range(num_images)]  # fmt: skip
    with_gt = [cid for cid, _ in CATEGORIES if cid != CATEGORY_WITHOUT_GT]
    annotations = []
    for image in images:
        for _ in range(rng.integers(0, 7)):
            box = random_box(rng)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image["id"], "category_id": int(rng.choice(with_gt)),
                "bbox": box, "area": box[2] * box[3] * float(rng.uniform(0.6, 1.0)),
                "iscrowd": int(rng.random() < 0.1),
            })  # fmt: skip
    categories = [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in CATEGORIES]
    return {"images": images, "annotations": annotations, "categories": categories}


def make_detections(rng: np.random.Generator, gt: dict) -> list[dict]:
    """Noisy hits, wrong labels, false positives, >100 boxes of one class on two images, scores with ties."""
    all_ids = [cid for cid, _ in CATEGORIES]
    without_detections = {image["id"] for image in gt["images"][::7]}
    detections = []
    for annotation in gt["annotations"]:
        if annotation["image_id"] in without_detections:
            continue
        for _ in range(rng.integers(0, 3)):
            wrong = rng.random() < 0.2
            category = int(rng.choice(all_ids)) if wrong else annotation["category_id"]
            detections.append(detection(rng, annotation["image_id"], category, jitter(rng, annotation["bbox"], 0.08)))
    for image in gt["images"]:
        if image["id"] not in without_detections:
            for _ in range(rng.integers(0, 6)):
                detections.append(detection(rng, image["id"], int(rng.choice(all_ids)), random_box(rng)))
    for image in gt["images"][1:3]:
        detections += [detection(rng, image["id"], 1, random_box(rng)) for _ in range(150)]
    return detections


def detection(rng: np.random.Generator, image_id: int, category_id: int, box: list[float]) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": box, "score": round(float(rng.random()), 2)}


def make_vocabulary() -> Vocabulary:
    return Vocabulary([Category(cid, name, "novel" if name in NOVEL else "base") for cid, name in CATEGORIES])


@pytest.fixture(scope="session")
def coco_world_shared():
    rng = np.random.default_rng(0)
    gt = make_ground_truth(rng, num_images=80)
    return gt, make_detections(rng, gt), make_vocabulary()


@pytest.fixture
def coco_world(coco_world_shared):
    """(gt, detections, vocab): 80 images; copies, so a test may modify them."""
    return copy.deepcopy(coco_world_shared)
