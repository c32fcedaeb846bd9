"""Benchmark: `python -m ovdet.cli eval` against the reference tool of its protocol, whole process
against whole process, on an LVIS-scale generated set.

    python tests/benchmarks/bench_eval.py --protocol lvis [--images 5000 --categories 1203 --dets 300]
    python tests/benchmarks/bench_eval.py --protocol coco [--images 5000 --categories 1203 --dets 300]
    python tests/benchmarks/bench_eval.py --protocol lvis --gt lvis_val_100.json   # a real GT file

Generates GT (a few boxes per image, LVIS r/c/f category shares, federated labels: per image the
present categories, ~10 verified-negative categories and ~20% of the present ones not exhaustive),
detections (up to ``--dets`` per image: a noisy copy of each GT box with 80% right labels, then
false positives, half of them of the image's verified categories) and a vocab YAML into a temp
dir, then times whole processes on the same files:

* ours: ``python -m ovdet.cli eval --protocol P --gt ... --detections ... --vocab ... --no-report``
* peer: lvis-api ``LVISEval(LVIS(gt), LVISResults(gt, dets, 300), "bbox").run()`` for ``lvis``,
  pycocotools ``COCOeval`` evaluate/accumulate/summarize for ``coco``

Prints ``ours``, ``peer`` and ``ratio`` (peer / ours) for time and for peak memory (the process's
max RSS), and checks that the reference's values agree within 1e-6.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ovdet.data.vocab import Category, Vocabulary

LVIS_GROUP_SHARES = {"r": 337 / 1203, "c": 461 / 1203, "f": 405 / 1203}  # LVIS v1 category counts
GROUP_WEIGHTS = {"r": 1.0, "c": 8.0, "f": 60.0}  # relative box frequency per category
IMAGE_SIZE = (640, 480)
# Runs a command and prints its wall time and peak RSS (KiB) as JSON: the same meter for both sides.
METER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
result = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - start
if result.returncode:
    sys.exit(result.stderr[-3000:])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_kib": peak, "stdout": result.stdout}))
"""
PEERS = {
    "coco": """
import json, sys
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
gt = COCO(sys.argv[1])
evaluator = COCOeval(gt, gt.loadRes(sys.argv[2]), "bbox")
evaluator.evaluate()
evaluator.accumulate()
evaluator.summarize()
names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR@1", "AR@10", "AR@100", "ARs@100", "ARm@100", "ARl@100"]
print(json.dumps(dict(zip(names, evaluator.stats.tolist()))))
""",
    "lvis": """
import json, sys
import numpy as np
np.float = float  # lvis 0.5.3 still uses np.float
from lvis import LVIS, LVISEval, LVISResults
gt = LVIS(sys.argv[1])
evaluator = LVISEval(gt, LVISResults(gt, sys.argv[2], max_dets=300), "bbox")
evaluator.run()
print(json.dumps({key: float(value) for key, value in evaluator.results.items()}))
""",
}
PEER_NAMES = {"coco": "pycocotools COCOeval", "lvis": "lvis-api LVISEval"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=list(PEERS), default="lvis")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--categories", type=int, default=1203)
    parser.add_argument("--dets", type=int, default=300, help="maximum detections per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default=None, help="write the files here instead of a temp dir")
    parser.add_argument("--gt", default=None, help="use this LVIS/COCO GT file (e.g. lvis-api's data/lvis_val_100.json) "
                        "instead of a generated one; detections are still generated from it")
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
    present: list[set[int]] = [set() for _ in range(num_images + 1)]
    for image_id, category_id in zip(image_ids.tolist(), category_ids.tolist(), strict=True):
        present[image_id].add(category_id)
    images = []
    for image_id in range(1, num_images + 1):
        negatives = set((rng.choice(len(frequencies), size=rng.poisson(10), p=weights / weights.sum()) + 1).tolist())
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "width": IMAGE_SIZE[0],
                       "height": IMAGE_SIZE[1], "neg_category_ids": sorted(negatives - present[image_id]),
                       "not_exhaustive_category_ids": sorted(c for c in present[image_id] if rng.random() < 0.2)})
    categories = [{"id": i + 1, "name": f"category_{i + 1}", "frequency": str(f), "synonyms": []}
                  for i, f in enumerate(frequencies)]  # fmt: skip
    return {"images": images, "annotations": annotations, "categories": categories}


def make_detections(rng: np.random.Generator, gt: dict, max_per_image: int) -> list[dict]:
    """Per image: a noisy copy of each GT box (80% right label), then false positives up to a random
    count, half of them of the image's verified (present or negative) categories."""
    annotations = gt["annotations"]
    category_ids = np.array([c["id"] for c in gt["categories"]])
    image_ids = np.array([image["id"] for image in gt["images"]])
    gt_boxes = np.array([a["bbox"] for a in annotations]).reshape(-1, 4)
    hits = np.round(gt_boxes + rng.normal(0, 0.1, gt_boxes.shape) * gt_boxes[:, [2, 3, 2, 3]], 2)
    hits[:, 2:] = np.maximum(hits[:, 2:], 1)
    hit_labels = np.array([a["category_id"] for a in annotations], dtype=np.int64)
    wrong = rng.random(len(hit_labels)) < 0.2
    hit_labels[wrong] = rng.choice(category_ids, wrong.sum())
    hit_images = np.array([a["image_id"] for a in annotations], dtype=np.int64)
    position = {image_id: i for i, image_id in enumerate(image_ids.tolist())}
    hits_per_image = np.bincount([position[i] for i in hit_images.tolist()], minlength=len(image_ids))
    per_image = rng.integers(max_per_image // 3, max_per_image + 1, size=len(image_ids))
    extra_images = np.repeat(image_ids, np.maximum(per_image - hits_per_image, 0))
    extra_labels = rng.choice(category_ids, len(extra_images))
    by_image = {image["id"]: set(image.get("neg_category_ids", [])) for image in gt["images"]}
    for image_id, label in zip(hit_images.tolist(), hit_labels.tolist(), strict=True):
        by_image[image_id].add(label)
    verified = {image_id: np.array(sorted(labels)) for image_id, labels in by_image.items()}
    for row in np.flatnonzero(rng.random(len(extra_images)) < 0.5):
        choices = verified[int(extra_images[row])]
        if len(choices):
            extra_labels[row] = choices[rng.integers(len(choices))]
    all_images = np.concatenate([hit_images, extra_images])
    all_labels = np.concatenate([hit_labels, extra_labels])
    boxes = np.concatenate([hits, random_boxes(rng, len(extra_images))])
    scores = np.round(np.concatenate([rng.uniform(0.3, 1, len(hits)), rng.uniform(0, 0.7, len(extra_images))]), 4)
    return [
        {"image_id": im, "category_id": c, "bbox": box, "score": s}
        for im, c, box, s in zip(all_images.tolist(), all_labels.tolist(), boxes.tolist(), scores.tolist(), strict=True)
    ]


def write_benchmark(folder: Path, args: argparse.Namespace) -> dict[str, Path]:
    rng = np.random.default_rng(args.seed)
    if args.gt:
        gt = json.loads(Path(args.gt).read_text())
    else:
        gt = make_ground_truth(rng, args.images, category_frequencies(rng, args.categories))
    detections = make_detections(rng, gt, args.dets)
    paths = {"gt": folder / "gt.json", "dets": folder / "detections.json", "vocab": folder / "vocab.yaml"}
    paths["gt"].write_text(json.dumps(gt))
    paths["dets"].write_text(json.dumps(detections))
    categories = [Category(c["id"], c["name"], "novel" if c["frequency"] == "r" else "base", [], c["frequency"])
                  for c in gt["categories"]]  # fmt: skip
    Vocabulary(categories).to_yaml(paths["vocab"])
    print(f"{len(gt['images'])} images, {len(gt['categories'])} categories, {len(gt['annotations'])} GT boxes, "
          f"{len(detections)} detections ({paths['dets'].stat().st_size / 1e6:.0f} MB)")  # fmt: skip
    return paths


def measured(command: list[str]) -> dict:
    """Wall seconds, peak RSS (KiB) and stdout of ``command`` in its own metered process."""
    result = subprocess.run([sys.executable, "-c", METER, *command], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(args.keep or temp)
        folder.mkdir(parents=True, exist_ok=True)
        paths = write_benchmark(folder, args)
        ours_command = [sys.executable, "-m", "ovdet.cli", "eval", "--protocol", args.protocol, "--gt", str(paths["gt"]),
                        "--detections", str(paths["dets"]), "--vocab", str(paths["vocab"]), "--out", str(folder / "out"),
                        "--no-report"]  # fmt: skip
        ours = measured(ours_command)
        peer = measured([sys.executable, "-c", PEERS[args.protocol], str(paths["gt"]), str(paths["dets"])])
        metrics = json.loads((folder / "out" / "metrics.json").read_text())
        reference = json.loads(peer["stdout"].strip().splitlines()[-1])
    name = PEER_NAMES[args.protocol]
    print(f"time    ours {ours['seconds']:7.1f} s    peer ({name}) {peer['seconds']:7.1f} s    "
          f"ratio {peer['seconds'] / ours['seconds']:5.1f} x")
    print(f"memory  ours {ours['peak_kib'] / 2**20:7.2f} GiB  peer ({name}) {peer['peak_kib'] / 2**20:7.2f} GiB  "
          f"ratio {peer['peak_kib'] / ours['peak_kib']:5.1f} x (peer / ours)")
    print(f"detections: {json.dumps(metrics['detections'])}")
    worst = 0.0
    for key, value in reference.items():
        ours_value = metrics[key]["all"] if isinstance(metrics[key], dict) else metrics[key]
        worst = max(worst, abs(ours_value - value))
        print(f"{key:8s} ours {ours_value:.6f}  peer {value:.6f}  |diff| {abs(ours_value - value):.1e}")
    assert worst <= 1e-6, f"a value differs from {name} by {worst}"


if __name__ == "__main__":
    main()
