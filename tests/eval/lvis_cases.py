"""Code-generated LVIS-format (federated) evaluation cases and the lvis-api reference run on them.

A case has r/c/f categories (one without any GT box), per image the positive categories'
boxes of every area range, random ``neg_category_ids`` among the absent categories and random
``not_exhaustive_category_ids`` among the present ones, a few GT boxes with ``ignore: 1`` or area 0,
and detections: noisy hits, wrong labels, false positives of verified and unverified categories,
zero-width boxes, images over the 300 cap, images without detections, and tied scores.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
from generated_boxes import IMAGE_SIZE, jitter, random_box

FREQUENCIES = "rrrrcccccffffff"


def make_lvis_case(seed: int, num_images: int = 40, over_cap_images: int = 2) -> tuple[dict, list[dict]]:
    """(gt, detections) of one federated case; ``seed`` picks everything."""
    rng = np.random.default_rng(seed)
    categories = [{"id": 10 + 3 * i, "name": f"thing_{i}", "frequency": f, "synonyms": [f"thing_{i}"]}
                  for i, f in enumerate(FREQUENCIES)]  # fmt: skip
    category_ids = [c["id"] for c in categories]
    without_gt = category_ids[1]  # a rare category only ever verified absent
    images, annotations = [], []
    for index in range(num_images):
        image_id = 1000 + 7 * index
        present = rng.choice([c for c in category_ids if c != without_gt], size=rng.integers(0, 5), replace=False)
        for category_id in present.tolist():
            for _ in range(rng.integers(1, 5)):
                box = random_box(rng)
                annotation = {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                              "bbox": box, "area": round(box[2] * box[3] * float(rng.uniform(0.5, 1.0)), 2),
                              "iscrowd": int(rng.random() < 0.05)}  # fmt: skip
                if rng.random() < 0.04:
                    annotation["ignore"] = 1
                if rng.random() < 0.02:
                    annotation["area"] = 0.0
                annotations.append(annotation)
        absent = [c for c in category_ids if c not in present]
        negative = rng.choice(absent, size=rng.integers(0, len(absent) // 2 + 1), replace=False).tolist()
        if without_gt not in negative and rng.random() < 0.5:
            negative.append(without_gt)
        not_exhaustive = [c for c in present.tolist() if rng.random() < 0.3]
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": IMAGE_SIZE[0], "height": IMAGE_SIZE[1],
                       "neg_category_ids": sorted(negative), "not_exhaustive_category_ids": not_exhaustive})  # fmt: skip
    rng.shuffle(images)  # the references sort image ids themselves
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return gt, make_detections(rng, gt, category_ids, over_cap_images)


def make_detections(rng: np.random.Generator, gt: dict, category_ids: list[int], over_cap_images: int) -> list[dict]:
    image_ids = [image["id"] for image in gt["images"]]
    without_detections = set(image_ids[::9])
    detections = []
    for annotation in gt["annotations"]:
        if annotation["image_id"] in without_detections:
            continue
        for _ in range(rng.integers(0, 3)):
            category = int(rng.choice(category_ids)) if rng.random() < 0.2 else annotation["category_id"]
            detections.append(detection(rng, annotation["image_id"], category, jitter(rng, annotation["bbox"], 0.1)))
    for image_id in image_ids:
        if image_id in without_detections:
            continue
        for _ in range(rng.integers(0, 12)):
            box = random_box(rng)
            if rng.random() < 0.03:
                box[2] = 0.0
            detections.append(detection(rng, image_id, int(rng.choice(category_ids)), box))
    crowded = [i for i in image_ids if i not in without_detections][:over_cap_images]
    for image_id in crowded:
        detections += [detection(rng, image_id, int(rng.choice(category_ids)), random_box(rng)) for _ in range(340)]
    order = rng.permutation(len(detections))
    return [detections[i] for i in order]


def detection(rng: np.random.Generator, image_id: int, category_id: int, box: list[float]) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": box, "score": round(float(rng.random()), 2)}


def lvis_api(gt: dict, folder: Path):
    """(lvis module, ``LVIS`` of ``gt`` written to ``folder``)."""
    if not hasattr(np, "float"):  # lvis 0.5.3 still uses np.float, removed in numpy 1.24
        np.float = float
    import lvis

    logging.getLogger("lvis").setLevel(logging.ERROR)
    path = folder / "lvis_gt.json"
    path.write_text(json.dumps(gt))
    return lvis, lvis.LVIS(str(path))


def lvis_api_results(gt: dict, detections: list[dict], folder: Path, max_dets: int = 300) -> dict[str, float]:
    """lvis-api ``LVISEval(gt, LVISResults(gt, dets, max_dets), "bbox").run()`` on copies of the inputs."""
    lvis, lvis_gt = lvis_api(gt, folder)
    results = lvis.LVISResults(lvis_gt, copy.deepcopy(detections), max_dets=max_dets)
    evaluator = lvis.LVISEval(lvis_gt, results, "bbox")
    evaluator.params.max_dets = max_dets
    evaluator.run()
    return {key: float(value) for key, value in evaluator.results.items()}


def fixed_ap_reference(gt: dict, detections: list[dict], folder: Path, dets_per_category: int) -> dict[str, float]:
    """Fixed AP as defined by Dave et al. 2021 and their ``scripts/evaluate_ap_fixed.py``: the top
    K detections of each category over the dataset (stable sort by score), no per-image cap."""
    by_category: dict[int, list[dict]] = {}
    for detection_ in detections:
        by_category.setdefault(detection_["category_id"], []).append(detection_)
    kept = []
    for category_detections in by_category.values():
        kept.extend(sorted(category_detections, key=lambda d: d["score"], reverse=True)[:dets_per_category])
    return lvis_api_results(gt, kept, folder, max_dets=-1)
