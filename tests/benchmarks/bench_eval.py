"""Benchmark: `python -m ovdet.cli eval` vs plain pycocotools COCOeval on an LVIS-scale synthetic set.

    python tests/benchmarks/bench_eval.py [--images 5000 --categories 1203 --dets 300]

Generates GT (a few boxes per image, categories with LVIS r/c/f frequencies), detections (up to
``--dets`` per image: noisy copies of GT boxes plus false positives) and a vocab YAML into a temp
dir, then times whole processes on the same files:

* ours: ``python -m ovdet.cli eval --gt ... --detections ... --vocab ... --out ...`` (metrics + report)
* peer: a python process running pycocotools COCO + loadRes + COCOeval evaluate/accumulate/summarize

Prints ``ours``, ``peer (pycocotools COCOeval)`` and ``ratio`` (peer / ours), and checks that the
AP "all" values agree within 1e-6.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ovdet.data.vocab import Category, Vocabulary

LVIS_GROUP_SHARES = {"r": 337 / 1203, "c": 461 / 1203, "f": 405 / 1203}  # LVIS v1 category counts
GROUP_WEIGHTS = {"r": 1.0, "c": 8.0, "f": 60.0}  # relative box frequency per category
IMAGE_SIZE = (640, 480)
PEER_SCRIPT = """
import json, sys
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
gt = COCO(sys.argv[1])
evaluator = COCOeval(gt, gt.loadRes(sys.argv[2]), "bbox")
evaluator.evaluate()
evaluator.accumulate()
evaluator.summarize()
print(json.dumps(evaluator.stats.tolist()))
"""
METRIC_ORDER = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[:6]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--categories", type=int, default=1203)
    parser.add_argument("--dets", type=int, default=300, help="maximum detections per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default=None, help="write the files here instead of a temp dir")
    return parser.parse_args()


def category_frequencies(rng: np.random.Generator, count: int) -> np.ndarray:
    groups = np.array(list(LVIS_GROUP_SHARES))
    return rng.choice(groups, size=count, p=list(LVIS_GROUP_SHARES.values()))


def random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    """[count, 4] xywh with sides log-uniform in 4..400 px (all three COCO area ranges)."""
    sides = np.exp(rng.uniform(np.log(4), np.log(400), size=(count, 2)))
    sides = np.minimum(sides, IMAGE_SIZE)
    corners = rng.uniform(0, 1, size=(count, 2)) * (np.array(IMAGE_SIZE) - sides)
    return np.round(np.concatenate([corners, sides], axis=1), 2)


def make_ground_truth(rng: np.random.Generator, num_images: int, frequencies: np.ndarray) -> dict:
    weights = np.array([GROUP_WEIGHTS[f] for f in frequencies])
    boxes_per_image = rng.poisson(5, size=num_images) + 1
    image_ids = np.repeat(np.arange(1, num_images + 1), boxes_per_image)
    category_ids = rng.choice(len(frequencies), size=len(image_ids), p=weights / weights.sum()) + 1
    boxes = random_boxes(rng, len(image_ids))
    is_crowd = rng.random(len(image_ids)) < 0.01
    annotations = [
        {"id": i + 1, "image_id": int(im), "category_id": int(c), "bbox": box, "area": round(box[2] * box[3], 2),
         "iscrowd": int(crowd)}
        for i, (im, c, box, crowd) in enumerate(zip(image_ids, category_ids, boxes.tolist(), is_crowd, strict=True))
    ]  # fmt: skip
    images = [{"id": i, "file_name": f"{i:06d}.jpg", "width": IMAGE_SIZE[0], "height": IMAGE_SIZE[1]}
              for i in range(1, num_images + 1)]  # fmt: skip
    categories = [{"id": i + 1, "name": f"category_{i + 1}", "frequency": str(f), "synonyms": []}
                  for i, f in enumerate(frequencies)]  # fmt: skip
    return {"images": images, "annotations": annotations, "categories": categories}


def make_detections(rng: np.random.Generator, gt: dict, max_per_image: int) -> list[dict]:
    """Per image: a noisy copy of each GT box (80% right label), then false positives up to a random count."""
    annotations = gt["annotations"]
    num_categories = len(gt["categories"])
    gt_boxes = np.array([a["bbox"] for a in annotations])
    hits = np.round(gt_boxes + rng.normal(0, 0.1, gt_boxes.shape) * gt_boxes[:, [2, 3, 2, 3]], 2)
    hits[:, 2:] = np.maximum(hits[:, 2:], 1)
    hit_labels = np.array([a["category_id"] for a in annotations])
    wrong = rng.random(len(hit_labels)) < 0.2
    hit_labels[wrong] = rng.integers(1, num_categories + 1, wrong.sum())
    hit_images = np.array([a["image_id"] for a in annotations])
    num_images = len(gt["images"])
    per_image = rng.integers(max_per_image // 3, max_per_image + 1, size=num_images)
    extra_counts = np.maximum(per_image - np.bincount(hit_images, minlength=num_images + 1)[1:], 0)
    extra_images = np.repeat(np.arange(1, num_images + 1), extra_counts)
    image_ids = np.concatenate([hit_images, extra_images])
    category_ids = np.concatenate([hit_labels, rng.integers(1, num_categories + 1, len(extra_images))])
    boxes = np.concatenate([hits, random_boxes(rng, len(extra_images))])
    scores = np.round(np.concatenate([rng.uniform(0.3, 1, len(hits)), rng.uniform(0, 0.7, len(extra_images))]), 4)
    return [
        {"image_id": im, "category_id": c, "bbox": box, "score": s}
        for im, c, box, s in zip(image_ids.tolist(), category_ids.tolist(), boxes.tolist(), scores.tolist(), strict=True)
    ]


def write_benchmark(folder: Path, args: argparse.Namespace) -> dict[str, Path]:
    rng = np.random.default_rng(args.seed)
    frequencies = category_frequencies(rng, args.categories)
    gt = make_ground_truth(rng, args.images, frequencies)
    detections = make_detections(rng, gt, args.dets)
    paths = {"gt": folder / "gt.json", "dets": folder / "detections.json", "vocab": folder / "vocab.yaml"}
    paths["gt"].write_text(json.dumps(gt))
    paths["dets"].write_text(json.dumps(detections))
    categories = [Category(c["id"], c["name"], "novel" if c["frequency"] == "r" else "base", [], c["frequency"])
                  for c in gt["categories"]]  # fmt: skip
    Vocabulary(categories).to_yaml(paths["vocab"])
    print(f"{args.images} images, {args.categories} categories, {len(gt['annotations'])} GT boxes, "
          f"{len(detections)} detections ({paths['dets'].stat().st_size / 1e6:.0f} MB)")  # fmt: skip
    return paths


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return elapsed, result.stdout


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(args.keep or temp)
        folder.mkdir(parents=True, exist_ok=True)
        paths = write_benchmark(folder, args)
        ours_command = [sys.executable, "-m", "ovdet.cli", "eval", "--gt", str(paths["gt"]), "--detections",
                        str(paths["dets"]), "--vocab", str(paths["vocab"]), "--out", str(folder / "out")]  # fmt: skip
        ours_seconds, _ = timed(ours_command)
        peer_seconds, peer_out = timed([sys.executable, "-c", PEER_SCRIPT, str(paths["gt"]), str(paths["dets"])])
        ours = json.loads((folder / "out" / "metrics.json").read_text())
        peer = dict(zip(METRIC_ORDER, json.loads(peer_out.strip().splitlines()[-1])[:6], strict=True))
    print(f"ours                        {ours_seconds:8.1f} s  (python -m ovdet.cli eval, faster-coco-eval, + report)")
    print(f"peer (pycocotools COCOeval) {peer_seconds:8.1f} s")
    print(f"ratio                       {peer_seconds / ours_seconds:8.1f} x")
    for name in METRIC_ORDER:
        difference = abs(ours[name]["all"] - peer[name])
        print(f"{name:5s} all: ours {ours[name]['all']:.6f}  peer {peer[name]:.6f}  |diff| {difference:.1e}")
        assert difference <= 1e-6, f"{name} differs from pycocotools by {difference}"


if __name__ == "__main__":
    main()
