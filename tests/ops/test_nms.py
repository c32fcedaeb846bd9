"""NMS variants against slow references written from each paper's definition, and hand-worked cases.

The references below are plain Python over lists of floats, one box pair at a time, and import
nothing from ``ovdet``: each returns ``[(index, score, box), ...]`` sorted by score descending, ties
by index. ``tests/benchmarks/bench_nms.py`` times them as the peer of the vectorized methods.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou, distance_box_iou

from ovdet.ops.nms import METHODS, NmsResult, apply_nms, paired_box_iou, paired_distance_box_iou

Box = list[float]
Kept = list[tuple[int, float, Box]]


# ---------------------------------------------------------------- references: one pair at a time


def reference_pair_iou(a: Box, b: Box) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def reference_pair_diou(a: Box, b: Box) -> float:
    """IoU - rho^2 / c^2 (Zheng et al. 2020, eq. 6): centre distance over enclosing-box diagonal."""
    rho2 = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2
    c2 = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (max(a[3], b[3]) - min(a[1], b[1])) ** 2
    return reference_pair_iou(a, b) - rho2 / c2


def by_score(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def finish(kept: list[tuple[int, float]], boxes: list[Box]) -> Kept:
    return [(i, s, boxes[i]) for i, s in sorted(kept, key=lambda pair: (-pair[1], pair[0]))]


def reference_none(boxes, scores, classes) -> Kept:
    return finish(list(enumerate(scores)), boxes)


def reference_hard_nms(boxes, scores, classes, is_suppressed, class_wise: bool = True) -> Kept:
    """Greedy NMS: in score order, a box is kept unless a kept box (of its class) suppresses it."""
    kept: list[int] = []
    for i in by_score(scores):
        rivals = [k for k in kept if classes[k] == classes[i] or not class_wise]
        if not any(is_suppressed(boxes[k], boxes[i]) for k in rivals):
            kept.append(i)
    return finish([(i, scores[i]) for i in kept], boxes)


def reference_class(boxes, scores, classes, iou_threshold) -> Kept:
    """torchvision's hard NMS: suppress IoU > threshold."""
    return reference_hard_nms(boxes, scores, classes, lambda m, b: reference_pair_iou(m, b) > iou_threshold)


def reference_agnostic(boxes, scores, classes, iou_threshold) -> Kept:
    suppress = lambda m, b: reference_pair_iou(m, b) > iou_threshold  # noqa: E731
    return reference_hard_nms(boxes, scores, classes, suppress, class_wise=False)


def reference_diou(boxes, scores, classes, iou_threshold) -> Kept:
    """DIoU-NMS (Zheng et al. 2020, eq. 9): s_i = 0 when IoU - R_DIoU(M, B_i) >= epsilon."""
    return reference_hard_nms(boxes, scores, classes, lambda m, b: reference_pair_diou(m, b) >= iou_threshold)


def reference_soft_nms(boxes, scores, classes, kernel, iou_threshold, sigma, score_threshold):
    """Soft-NMS (Bodla et al. 2017, Algorithm 1 with the pruning of its code): take the highest M,
    decay every remaining box of M's class, drop boxes whose score falls below the threshold."""
    alive = {i: s for i, s in enumerate(scores) if s >= score_threshold}
    kept = []
    while alive:
        m = max(alive, key=lambda i: (alive[i], -i))
        kept.append((m, alive.pop(m)))
        for b in [b for b in alive if classes[b] == classes[m]]:
            iou = reference_pair_iou(boxes[m], boxes[b])
            if kernel == "linear":
                alive[b] *= 1 - iou if iou >= iou_threshold else 1.0
            else:
                alive[b] *= math.exp(-(iou**2) / sigma)
            if alive[b] < score_threshold:
                del alive[b]
    return finish(kept, boxes)


def reference_soft_linear(boxes, scores, classes, iou_threshold, sigma, score_threshold):
    return reference_soft_nms(boxes, scores, classes, "linear", iou_threshold, sigma, score_threshold)


def reference_soft_gaussian(boxes, scores, classes, iou_threshold, sigma, score_threshold):
    return reference_soft_nms(boxes, scores, classes, "gaussian", iou_threshold, sigma, score_threshold)


def reference_matrix(boxes, scores, classes, sigma, score_threshold) -> Kept:
    """Matrix NMS (SOLOv2, Wang et al. 2020, eq. 4): decay_j = min over same-class i scored above j
    of f(iou_ij) / f(iou_{*,i}), f(x) = exp(-sigma x^2), iou_{*,i} = max IoU of i with a box above i."""
    order = by_score(scores)
    above = {j: [i for i in order[: order.index(j)] if classes[i] == classes[j]] for j in order}
    compensate = {
        i: max((reference_pair_iou(boxes[k], boxes[i]) for k in above[i]), default=0.0) for i in order
    }

    def f(x: float) -> float:
        return math.exp(-sigma * x**2)

    kept = []
    for j in order:
        decay = min(
            (f(reference_pair_iou(boxes[i], boxes[j])) / f(compensate[i]) for i in above[j]), default=1.0
        )
        if scores[j] * decay >= score_threshold:
            kept.append((j, scores[j] * decay))
    return finish(kept, boxes)


def reference_weighted(boxes, scores, classes, iou_threshold) -> Kept:
    """Hard NMS (IoU > threshold), then box voting (Gidaris & Komodakis 2015): each kept box becomes
    the score-weighted mean of the boxes of its class with IoU >= threshold with it."""
    voted = []
    for k, score, box in reference_class(boxes, scores, classes, iou_threshold):
        voters = [b for b in range(len(boxes)) if classes[b] == classes[k]]
        voters = [b for b in voters if reference_pair_iou(box, boxes[b]) >= iou_threshold]
        total = sum(scores[b] for b in voters)
        voted.append((k, score, [sum(scores[b] * boxes[b][c] for b in voters) / total for c in range(4)]))
    return voted


REFERENCES = {
    "none": reference_none,
    "class": reference_class,
    "agnostic": reference_agnostic,
    "soft-linear": reference_soft_linear,
    "soft-gaussian": reference_soft_gaussian,
    "diou": reference_diou,
    "matrix": reference_matrix,
    "weighted": reference_weighted,
}
# Each method's parameters in the random comparison; matrix uses SOLOv2's sigma.
PARAMETERS = {
    "none": {},
    "class": {"iou_threshold": 0.5},
    "agnostic": {"iou_threshold": 0.5},
    "soft-linear": {"iou_threshold": 0.3, "sigma": 0.5, "score_threshold": 0.05},
    "soft-gaussian": {"iou_threshold": 0.3, "sigma": 0.5, "score_threshold": 0.05},
    "diou": {"iou_threshold": 0.4},
    "matrix": {"sigma": 2.0, "score_threshold": 0.05},
    "weighted": {"iou_threshold": 0.5},
}


def run_reference(
    method: str, boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, **params
) -> Kept:
    return REFERENCES[method](boxes.tolist(), scores.tolist(), classes.tolist(), **params)


# ---------------------------------------------------------------- helpers


def clustered_detections(seed: int, n: int = 50, num_classes: int = 3, num_clusters: int = 6):
    """boxes [n, 4] xyxy pixels jittered around a few objects, scores [n], classes int64 [n]."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(num_clusters, 2, generator=generator) * 400 + 50
    sizes = torch.rand(num_clusters, 2, generator=generator) * 80 + 20
    cluster = torch.randint(num_clusters, (n,), generator=generator)
    centre = centres[cluster] + torch.randn(n, 2, generator=generator) * 0.15 * sizes[cluster]
    size = sizes[cluster] * (1 + 0.2 * torch.randn(n, 2, generator=generator)).clamp(min=0.3)
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    scores = torch.rand(n, generator=generator)
    classes = torch.randint(num_classes, (n,), generator=generator)
    return boxes, scores, classes


def assert_matches(result: NmsResult, expected: Kept) -> None:
    assert result.indices.tolist() == [i for i, _, _ in expected]
    torch.testing.assert_close(
        result.scores, torch.tensor([s for _, s, _ in expected]), atol=1e-5, rtol=0, check_dtype=False
    )
    torch.testing.assert_close(
        result.boxes, torch.tensor([b for _, _, b in expected]).reshape(-1, 4), atol=1e-4, rtol=0
    )


def detections(boxes: list[Box], scores: list[float], classes: list[int]):
    return torch.tensor(boxes), torch.tensor(scores), torch.tensor(classes)


# Two boxes 30x10 shifted by 10 in x: intersection 20x10 = 200, union 300 + 300 - 200 = 400, IoU 0.5.
HALF_OVERLAP = [[0.0, 0.0, 30.0, 10.0], [10.0, 0.0, 40.0, 10.0]]


# ---------------------------------------------------------------- every method vs its reference


@pytest.mark.parametrize(("seed", "n", "num_classes"), [(0, 50, 3), (1, 50, 3), (2, 50, 3), (3, 150, 12)])
@pytest.mark.parametrize("method", METHODS)
def test_method_matches_its_reference_on_clustered_boxes(method, seed, n, num_classes):
    boxes, scores, classes = clustered_detections(seed, n, num_classes)
    expected = run_reference(method, boxes, scores, classes, **PARAMETERS[method])
    assert_matches(apply_nms(boxes, scores, classes, method, **PARAMETERS[method]), expected)
    if method != "none":  # the case must exercise the method: something is removed, decayed or moved
        assert expected != reference_none(boxes.tolist(), scores.tolist(), classes.tolist())


def test_references_cover_every_method():
    assert set(REFERENCES) == set(METHODS) == set(PARAMETERS)


@pytest.mark.parametrize("method", METHODS)
def test_float16_input_is_computed_in_float32_and_returned_in_float16(method):
    boxes, scores, classes = clustered_detections(3)
    boxes16, scores16 = boxes.half(), scores.half()
    result = apply_nms(boxes16, scores16, classes, method, **PARAMETERS[method])
    upcast = apply_nms(boxes16.float(), scores16.float(), classes, method, **PARAMETERS[method])
    assert result.scores.dtype == result.boxes.dtype == torch.float16
    assert result.indices.dtype == torch.int64
    assert result.indices.tolist() == upcast.indices.tolist()
    torch.testing.assert_close(result.scores, upcast.scores.half())
    torch.testing.assert_close(result.boxes, upcast.boxes.half())


def test_integer_pixel_boxes_give_float32_boxes():
    boxes, scores, classes = detections(HALF_OVERLAP, [0.9, 0.8], [0, 0])
    result = apply_nms(boxes.long(), scores, classes, "weighted")
    assert result.boxes.dtype == torch.float32
    torch.testing.assert_close(result.boxes, apply_nms(boxes, scores, classes, "weighted").boxes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_gives_the_cpu_result(method):
    boxes, scores, classes = clustered_detections(4, n=500, num_classes=5, num_clusters=30)
    on_cpu = apply_nms(boxes, scores, classes, method, **PARAMETERS[method])
    on_gpu = apply_nms(boxes.cuda(), scores.cuda(), classes.cuda(), method, **PARAMETERS[method])
    assert on_gpu.indices.device.type == "cuda"
    assert on_gpu.indices.tolist() == on_cpu.indices.tolist()
    torch.testing.assert_close(on_gpu.scores.cpu(), on_cpu.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(on_gpu.boxes.cpu(), on_cpu.boxes, atol=1e-3, rtol=0)


# ---------------------------------------------------------------- hand-worked cases


def test_soft_nms_decays_a_half_overlapping_box_by_hand():
    boxes, scores, classes = detections(HALF_OVERLAP, [0.9, 0.8], [0, 0])
    linear = apply_nms(boxes, scores, classes, "soft-linear", iou_threshold=0.5)
    gaussian = apply_nms(boxes, scores, classes, "soft-gaussian", sigma=0.5)
    assert linear.indices.tolist() == gaussian.indices.tolist() == [0, 1]
    torch.testing.assert_close(linear.scores, torch.tensor([0.9, 0.8 * (1 - 0.5)]))
    torch.testing.assert_close(gaussian.scores, torch.tensor([0.9, 0.8 * math.exp(-0.25 / 0.5)]))
    below_threshold = apply_nms(boxes, scores, classes, "soft-linear", iou_threshold=0.6)
    torch.testing.assert_close(below_threshold.scores, torch.tensor([0.9, 0.8]))  # IoU 0.5 < 0.6: no decay


def test_soft_nms_drops_boxes_decayed_below_score_threshold():
    boxes, scores, classes = detections(HALF_OVERLAP, [0.9, 0.8], [0, 0])
    result = apply_nms(boxes, scores, classes, "soft-linear", iou_threshold=0.5, score_threshold=0.41)
    assert result.indices.tolist() == [0]  # 0.8 * 0.5 = 0.4 < 0.41


def test_hard_nms_suppresses_only_iou_above_threshold():
    boxes, scores, classes = detections(HALF_OVERLAP, [0.9, 0.8], [0, 0])
    assert apply_nms(boxes, scores, classes, "class", iou_threshold=0.5).indices.tolist() == [0, 1]
    assert apply_nms(boxes, scores, classes, "class", iou_threshold=0.49).indices.tolist() == [0]


CLASS_WISE = [m for m in METHODS if m != "agnostic"]


@pytest.mark.parametrize("method", CLASS_WISE)
def test_identical_boxes_of_two_classes_both_survive_class_wise(method):
    boxes, scores, classes = detections([[0.0, 0.0, 10.0, 10.0]] * 2, [0.6, 0.9], [3, 7])
    result = apply_nms(boxes, scores, classes, method)
    assert result.indices.tolist() == [1, 0]
    torch.testing.assert_close(result.scores, torch.tensor([0.9, 0.6]))  # no decay across classes
    torch.testing.assert_close(result.boxes, boxes[[1, 0]])


def test_identical_boxes_of_two_classes_leave_one_agnostic():
    boxes, scores, classes = detections([[0.0, 0.0, 10.0, 10.0]] * 2, [0.6, 0.9], [3, 7])
    assert apply_nms(boxes, scores, classes, "agnostic").indices.tolist() == [1]


@pytest.mark.parametrize("method", ["class", "diou", "soft-linear", "matrix", "weighted"])
def test_identical_boxes_of_one_class_leave_one(method):
    boxes, scores, classes = detections([[0.0, 0.0, 10.0, 10.0]] * 2, [0.6, 0.9], [3, 3])
    # soft-linear: weight 1 - IoU = 0. Matrix decays 0.6 to 0.6 * exp(-0.5 * 1^2) = 0.36: below 0.4.
    result = apply_nms(boxes, scores, classes, method, score_threshold=0.4)
    assert result.indices.tolist() == [1]


def test_diou_keeps_an_overlapping_box_with_a_distant_centre():
    # IoU: inter 70x10 = 700, union 1000 + 1000 - 700 = 1300, IoU = 0.538 > 0.5: hard NMS suppresses.
    # DIoU: centres 30 apart, rho^2 = 900; enclosing box 130x10, c^2 = 16900 + 100 = 17000;
    # 0.538 - 0.053 = 0.486 < 0.5: DIoU-NMS keeps it.
    boxes, scores, classes = detections(
        [[0.0, 0.0, 100.0, 10.0], [30.0, 0.0, 130.0, 10.0]], [0.9, 0.8], [0, 0]
    )
    assert math.isclose(700 / 1300 - 900 / 17000, 0.4856, abs_tol=1e-4)
    assert apply_nms(boxes, scores, classes, "class").indices.tolist() == [0]
    assert apply_nms(boxes, scores, classes, "diou").indices.tolist() == [0, 1]


def test_diou_suppresses_a_concentric_box_like_hard_nms():
    # Same centre: R = 0 and DIoU = IoU = 80^2 / 100^2 = 0.64 >= 0.5.
    boxes, scores, classes = detections(
        [[0.0, 0.0, 100.0, 100.0], [10.0, 10.0, 90.0, 90.0]], [0.9, 0.8], [0, 0]
    )
    assert apply_nms(boxes, scores, classes, "diou").indices.tolist() == [0]


def test_matrix_nms_compensates_for_an_already_decayed_box():
    # A, B, C are 30x10 boxes 10 apart: IoU(A, B) = IoU(B, C) = 0.5, IoU(A, C) = 100 / 500 = 0.2.
    # f(x) = exp(-2 x^2). B: f(0.5) / f(0) = exp(-0.5). C: min(f(0.2) / f(0), f(0.5) / f(c_B = 0.5))
    # = min(exp(-0.08), 1): B overlapping C does not count, B itself is suppressed by A.
    boxes, scores, classes = detections(HALF_OVERLAP + [[20.0, 0.0, 50.0, 10.0]], [0.9, 0.8, 0.7], [0, 0, 0])
    result = apply_nms(boxes, scores, classes, "matrix", sigma=2.0)
    assert result.indices.tolist() == [0, 2, 1]
    torch.testing.assert_close(
        result.scores, torch.tensor([0.9, 0.7 * math.exp(-0.08), 0.8 * math.exp(-0.5)])
    )


def test_weighted_nms_averages_its_class_cluster_by_score():
    # B overlaps A with IoU 80 / 120 = 0.67 and votes; D (IoU 0.82 with A) is another class; C is apart.
    boxes = [
        [0.0, 0.0, 10.0, 10.0],
        [2.0, 0.0, 12.0, 10.0],
        [100.0, 100.0, 110.0, 110.0],
        [1.0, 0.0, 11.0, 10.0],
    ]
    result = apply_nms(*detections(boxes, [0.6, 0.3, 0.5, 0.9], [0, 0, 0, 1]), "weighted", iou_threshold=0.5)
    assert result.indices.tolist() == [3, 0, 2]
    torch.testing.assert_close(result.scores, torch.tensor([0.9, 0.6, 0.5]))
    voted_a = [0.3 * 2 / 0.9, 0.0, (0.6 * 10 + 0.3 * 12) / 0.9, 10.0]
    torch.testing.assert_close(result.boxes, torch.tensor([boxes[3], voted_a, boxes[2]]))


def test_weighted_nms_votes_with_boxes_at_the_threshold_even_kept_ones():
    # IoU exactly 0.5: hard NMS keeps both (0.5 is not > 0.5), voting takes both (0.5 >= 0.5), so both
    # become (0.9 * A + 0.8 * B) / 1.7.
    boxes, scores, classes = detections(HALF_OVERLAP, [0.9, 0.8], [0, 0])
    result = apply_nms(boxes, scores, classes, "weighted", iou_threshold=0.5)
    assert result.indices.tolist() == [0, 1]
    voted = [0.8 * 10 / 1.7, 0.0, (0.9 * 30 + 0.8 * 40) / 1.7, 10.0]
    torch.testing.assert_close(result.boxes, torch.tensor([voted, voted]))


def test_weighted_nms_keeps_the_box_when_the_cluster_weights_sum_to_zero():
    boxes, scores, classes = detections(HALF_OVERLAP, [0.0, 0.0], [0, 0])
    result = apply_nms(boxes, scores, classes, "weighted", iou_threshold=0.4)
    assert len(result.indices) == 1
    torch.testing.assert_close(result.boxes, boxes[result.indices])


def test_none_keeps_everything_sorted_by_score_with_ties_by_index():
    boxes, scores, classes = detections([[0.0, 0.0, 1.0, 1.0]] * 4, [0.2, 0.7, 0.2, 0.9], [0, 0, 0, 0])
    assert apply_nms(boxes, scores, classes, "none").indices.tolist() == [3, 1, 0, 2]


# ---------------------------------------------------------------- edges and errors


@pytest.mark.parametrize("method", METHODS)
def test_empty_input_gives_empty_result(method):
    result = apply_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), method)
    assert result.indices.shape == (0,) and result.indices.dtype == torch.int64
    assert result.scores.shape == (0,) and result.scores.dtype == torch.float32
    assert result.boxes.shape == (0, 4) and result.boxes.dtype == torch.float32


def test_unknown_method_names_it_and_lists_the_methods():
    boxes, scores, classes = detections(HALF_OVERLAP, [0.9, 0.8], [0, 0])
    with pytest.raises(ValueError, match="'soft-cubic'") as error:
        apply_nms(boxes, scores, classes, "soft-cubic")
    assert all(method in str(error.value) for method in METHODS)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="expected boxes"):
        apply_nms(torch.zeros(3, 4), torch.zeros(2), torch.zeros(3, dtype=torch.int64), "class")


def test_paired_ious_are_the_diagonal_of_torchvisions():
    boxes, _, _ = clustered_detections(5, n=20)
    shuffled = boxes.flip(0)
    torch.testing.assert_close(paired_box_iou(boxes, shuffled), box_iou(boxes, shuffled).diagonal())
    torch.testing.assert_close(
        paired_distance_box_iou(boxes, shuffled), distance_box_iou(boxes, shuffled).diagonal()
    )
