"""NMS time per call for each method of ``ovdet.ops.nms``: ours vs a named peer, in the same run.

Run: ``python tests/benchmarks/bench_nms.py [--boxes 3000 --classes 80 --repeats 5 --threads 1]``.
Peers: torchvision's C++ kernels where one exists for the method or the hard NMS it extends
(``torch.sort`` for "none", ``nms`` for "agnostic", ``batched_nms`` for "class", "diou" and
"weighted"); for the score-decaying methods torchvision has none, so the peer is the slow pure-Python
reference of ``tests/ops/test_nms.py`` (one pair of boxes at a time), timed once at the full size.
Every method's output is also checked against that reference (same indices), and its time printed.
The parameters are the ones the tests use (``PARAMETERS`` there; matrix NMS with SOLOv2's sigma 2).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.ops import batched_nms, nms

from ovdet.ops.nms import METHODS, apply_nms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_assigners import median_ms  # noqa: E402  (one interleaved-median timer for the benchmarks)
from test_nms import PARAMETERS, run_reference  # noqa: E402  (the references are the tests' spec)


def make_detections(num_boxes: int, num_classes: int, boxes_per_object: int = 10, seed: int = 0):
    """boxes [n, 4] xyxy in a 1000x1000 image, scores [n], classes int64 [n]: a detector's raw output,
    about ``boxes_per_object`` jittered boxes per object, 80% of them with the object's class."""
    generator = torch.Generator().manual_seed(seed)
    num_objects = max(1, num_boxes // boxes_per_object)
    centres = torch.rand(num_objects, 2, generator=generator) * 900 + 50
    sizes = torch.rand(num_objects, 2, generator=generator) * 150 + 16
    labels = torch.randint(num_classes, (num_objects,), generator=generator)
    owner = torch.randint(num_objects, (num_boxes,), generator=generator)
    centre = centres[owner] + torch.randn(num_boxes, 2, generator=generator) * 0.1 * sizes[owner]
    size = sizes[owner] * (1 + 0.15 * torch.randn(num_boxes, 2, generator=generator)).clamp(min=0.3)
    is_confused = torch.rand(num_boxes, generator=generator) < 0.2
    classes = torch.where(
        is_confused, torch.randint(num_classes, (num_boxes,), generator=generator), labels[owner]
    )
    scores = torch.rand(num_boxes, generator=generator)
    return torch.cat([centre - size / 2, centre + size / 2], dim=1), scores, classes


def torchvision_peers(boxes, scores, classes) -> dict[str, tuple[str, Callable[[], object]]]:
    """Method -> (peer name, call) for the methods with a torchvision counterpart."""
    iou = PARAMETERS["class"]["iou_threshold"]
    class_nms = ("torchvision batched_nms", lambda: batched_nms(boxes, scores, classes, iou))
    return {
        "none": ("torch.sort", lambda: torch.sort(scores, descending=True, stable=True)),
        "class": class_nms,
        "agnostic": ("torchvision nms", lambda: nms(boxes, scores, iou)),
        "diou": class_nms,
        "weighted": class_nms,
    }


def checked_reference_ms(method: str, boxes, scores, classes) -> float:
    """Run the Python reference once; exit if our indices differ from its. Returns its time in ms."""
    start = time.perf_counter()
    expected = run_reference(method, boxes, scores, classes, **PARAMETERS[method])
    elapsed = (time.perf_counter() - start) * 1000
    ours = apply_nms(boxes, scores, classes, method, **PARAMETERS[method]).indices.tolist()
    if ours != [index for index, _, _ in expected]:
        raise SystemExit(
            f"{method}: ours keeps {len(ours)} boxes, the reference {len(expected)}, or another order"
        )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=3000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5)
    # One thread by default: the ops are small ([N] tensors in a loop), so more threads mostly add
    # synchronisation, and on a shared machine their spin-waits swamp the timings of both sides.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, 0 = torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    boxes, scores, classes = make_detections(args.boxes, args.classes)
    peers = torchvision_peers(boxes, scores, classes)
    ours = {m: (lambda m=m: apply_nms(boxes, scores, classes, m, **PARAMETERS[m])) for m in METHODS}
    ms = median_ms({**ours, **{f"peer:{m}": call for m, (_, call) in peers.items()}}, args.repeats)

    print(
        f"problem: N={args.boxes} boxes, C={args.classes} classes, torch threads={torch.get_num_threads()}, "
        f"ours and torchvision: median of {args.repeats} interleaved rounds; Python reference: 1 run"
    )
    print(
        f"{'method':14} {'ours ms':>9} {'peer ms':>9} {'ratio':>8}  {'peer':24} {'kept':>5} {'python ref ms':>13}"
    )
    for method in METHODS:
        reference_ms = checked_reference_ms(method, boxes, scores, classes)
        peer_name, _ = peers.get(method, ("python reference", None))
        peer_ms = ms.get(f"peer:{method}", reference_ms)
        kept = len(apply_nms(boxes, scores, classes, method, **PARAMETERS[method]).indices)
        print(
            f"{method:14} {ms[method]:9.2f} {peer_ms:9.2f} {peer_ms / ms[method]:7.2f}x  {peer_name:24} "
            f"{kept:5d} {reference_ms:13.0f}"
        )
    print("ratio = peer / ours (> 1: ours is faster); every method's indices equal its Python reference's")


if __name__ == "__main__":
    main()
