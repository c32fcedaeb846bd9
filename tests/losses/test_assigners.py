"""One-to-many assigners: hand-worked cases, the notes' numbers, and a slow pure-Python reference.

The reference functions below are written from each paper's definition (with the conventions and
deviations the module docstring states), loop over priors and targets in plain Python floats, and
share no code with ``ovdet.losses.assigners``; they are compared with it on random problems.
Priors in every test are square grids (``make_priors``): one level per grid size, each prior box a
square of ``scale`` cells around its cell centre, NOT clipped to the canvas (as anchors are).
Sources of numbers: seeds/004 (RetinaNet thresholds 0.5/0.4), seeds/002 and seeds/000 (RPN 0.7/0.3),
seeds/003 (YOLOv8's TAL: alpha 0.5, beta 6.0, top-10, duplicates kept by the larger IoU).
"""

from __future__ import annotations

import math

import pytest
import torch

from ovdet.losses.assigners import (
    ONE_TO_MANY,
    ATSSAssigner,
    MaxIoUAssigner,
    Priors,
    SimOTAAssigner,
    TaskAlignedAssigner,
    build_assigner,
)

SEEDS = range(8)


# ----------------------------------------------------------------------------------------------
# Builders


def make_priors(grid_sizes: tuple[int, ...] = (8, 4), scale: float = 4.0) -> Priors:
    """Square grids of priors, one level per size (finest first), row-major within a level."""
    boxes, strides, levels = [], [], []
    for level, size in enumerate(grid_sizes):
        stride = 1.0 / size
        for row in range(size):
            for col in range(size):
                boxes.append([(col + 0.5) * stride, (row + 0.5) * stride, scale * stride, scale * stride])
                strides.append(stride)
                levels.append(level)
    return Priors(torch.tensor(boxes), torch.tensor(strides), torch.tensor(levels))


def cxcywh(xyxy: list[float]) -> list[float]:
    x1, y1, x2, y2 = xyxy
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def hand_priors(
    boxes_xyxy: list[list[float]], stride: float = 0.125, levels: list[int] | None = None
) -> Priors:
    """Priors with the given boxes, one stride, all on level 0 unless ``levels`` says otherwise."""
    num = len(boxes_xyxy)
    return Priors(
        torch.tensor([cxcywh(box) for box in boxes_xyxy]),
        torch.full((num,), stride),
        torch.tensor(levels if levels is not None else [0] * num),
    )


def one_image(logits: list[list[float]], pred_xyxy: list[list[float]], labels, boxes_xyxy):
    """B=1 outputs and targets from lists: logits [Q][T], boxes xyxy (converted to cxcywh)."""
    outputs = {
        "pred_logits": torch.tensor([logits]),
        "pred_boxes": torch.tensor([[cxcywh(box) for box in pred_xyxy]]),
    }
    target = {
        "labels": torch.tensor(labels, dtype=torch.int64),
        "boxes": torch.tensor([cxcywh(b) for b in boxes_xyxy]),
    }
    return outputs, [target]


def random_problem(seed: int, batch: int = 3, texts: int = 7, grid_sizes=(8, 4)):
    """Random logits, predicted boxes near their priors, 0-6 targets per image (seed 0 has an empty one)."""
    generator = torch.Generator().manual_seed(seed)
    priors = make_priors(grid_sizes)
    queries = len(priors.boxes)
    jitter = torch.randn(batch, queries, 2, generator=generator) * priors.strides[None, :, None]
    centres = (priors.boxes[:, :2] + jitter).clamp(0.02, 0.98)
    sizes = torch.rand(batch, queries, 2, generator=generator) * 0.5 + 0.05
    outputs = {
        "pred_logits": torch.randn(batch, queries, texts, generator=generator) * 2,
        "pred_boxes": torch.cat([centres, sizes], dim=-1),
    }
    targets = []
    for b in range(batch):
        num = 0 if (seed, b) == (0, 1) else int(torch.randint(0, 7, (1,), generator=generator))
        centre = torch.rand(num, 2, generator=generator) * 0.8 + 0.1
        size = torch.rand(num, 2, generator=generator) * 0.6 + 0.05
        labels = torch.randint(texts, (num,), generator=generator)
        targets.append({"labels": labels, "boxes": torch.cat([centre, size], dim=-1)})
    return outputs, targets, priors


def as_lists(assignment, num_queries: int):
    """An Assignment as per-query python lists: target (-1 none), weight (0 off positives), ignored."""
    assigned, weights = [-1] * num_queries, [0.0] * num_queries
    for q, j, w in zip(
        assignment.pred_idx.tolist(), assignment.tgt_idx.tolist(), assignment.weights.tolist(), strict=True
    ):
        assigned[q], weights[q] = j, w
    return assigned, weights, assignment.ignored.tolist()


# ----------------------------------------------------------------------------------------------
# Slow references: plain Python over priors and targets, from the papers' definitions


def iou(a: list[float], b: list[float]) -> float:
    """IoU of two xyxy boxes."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def xyxy(box: list[float]) -> list[float]:
    cx, cy, w, h = box
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def is_inside(point: list[float], box: list[float]) -> bool:
    return box[0] < point[0] < box[2] and box[1] < point[1] < box[3]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def image_lists(outputs, targets, priors, b: int) -> dict:
    """Image b of a batch as python lists (cxcywh boxes)."""
    return {
        "logits": outputs["pred_logits"][b].double().tolist(),
        "preds": outputs["pred_boxes"][b].double().tolist(),
        "labels": targets[b]["labels"].tolist(),
        "targets": targets[b]["boxes"].double().tolist(),
        "priors": priors.boxes.double().tolist(),
        "strides": priors.strides.double().tolist(),
        "levels": priors.levels.tolist(),
    }


def reference_max_iou(image: dict, pos_iou: float = 0.5, neg_iou: float = 0.4):
    """RetinaNet: IoU >= 0.5 positive (max-IoU target), < 0.4 negative, else ignored; every target's
    best priors (IoU > 0) are positive, a prior best for several goes to its highest-IoU one."""
    priors, boxes = image["priors"], image["targets"]
    ious = [[iou(xyxy(p), xyxy(t)) for t in boxes] for p in priors]
    assigned = [-1] * len(priors)
    for q, row in enumerate(ious):
        if row and max(row) >= pos_iou:
            assigned[q] = row.index(max(row))
    forcing = {q: [] for q in range(len(priors))}
    for j in range(len(boxes)):
        best = max(ious[q][j] for q in range(len(priors)))
        for q in range(len(priors)):
            if best > 0 and ious[q][j] == best:
                forcing[q].append(j)
    for q, claimants in forcing.items():
        if claimants:
            assigned[q] = max(claimants, key=lambda j, q=q: (ious[q][j], -j))
    ignored = [assigned[q] < 0 and bool(row) and max(row) >= neg_iou for q, row in enumerate(ious)]
    return assigned, [1.0 if a >= 0 else 0.0 for a in assigned], ignored


def reference_atss(image: dict, topk: int = 9):
    """ATSS: per level the top-k priors nearest the target centre; positive if IoU >= mean + std of
    those candidates' IoUs and the prior centre lies inside the target; several -> max IoU."""
    priors, levels = image["priors"], image["levels"]
    claims = [[] for _ in priors]
    for j, target in enumerate(image["targets"]):
        candidates = []
        for level in sorted(set(levels)):
            on_level = [q for q in range(len(priors)) if levels[q] == level]
            on_level.sort(
                key=lambda q: ((priors[q][0] - target[0]) ** 2 + (priors[q][1] - target[1]) ** 2, q)
            )
            candidates += on_level[:topk]
        values = [iou(xyxy(priors[q]), xyxy(target)) for q in candidates]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))
        for q, value in zip(candidates, values, strict=True):
            if value >= mean + std and is_inside(priors[q][:2], xyxy(target)):
                claims[q].append(j)
    assigned = [
        max(js, key=lambda j, q=q: (iou(xyxy(priors[q]), xyxy(image["targets"][j])), -j)) if js else -1
        for q, js in enumerate(claims)
    ]
    return assigned, [1.0 if a >= 0 else 0.0 for a in assigned], [False] * len(priors)


def reference_tal(image: dict, topk: int = 10, alpha: float = 0.5, beta: float = 6.0):
    """TOOD/YOLOv8: t = s^alpha * u^beta over priors centred in the target, top-k by t (t > 0);
    several -> max IoU; weight = t * max u / (max t + 1e-9) over the target's final positives."""
    priors, preds, boxes = image["priors"], image["preds"], image["targets"]
    num = len(priors)
    u = [[iou(xyxy(preds[q]), xyxy(t)) for t in boxes] for q in range(num)]
    t = [
        [
            sigmoid(image["logits"][q][label]) ** alpha * u[q][j] ** beta
            for j, label in enumerate(image["labels"])
        ]
        for q in range(num)
    ]
    claims = [[] for _ in range(num)]
    for j, target in enumerate(boxes):
        candidates = [q for q in range(num) if is_inside(priors[q][:2], xyxy(target))]
        for q in sorted(candidates, key=lambda q: (-t[q][j], q))[:topk]:
            if t[q][j] > 0:
                claims[q].append(j)
    assigned = [max(js, key=lambda j, q=q: (u[q][j], -j)) if js else -1 for q, js in enumerate(claims)]
    weights = [0.0] * num
    for j in range(len(boxes)):
        positives = [q for q in range(num) if assigned[q] == j]
        if positives:
            max_t, max_u = max(t[q][j] for q in positives), max(u[q][j] for q in positives)
            for q in positives:
                weights[q] = t[q][j] * max_u / (max_t + 1e-9)
    return assigned, weights, [False] * num


def reference_simota(image: dict, radius: float = 2.5, candidate_topk: int = 10):
    """YOLOX: candidates in any box or centre region; cost = -log s + 3 * -log(IoU + 1e-8) + 1e5 *
    (not in box and centre); k = max(1, int(sum of top-10 candidate IoUs)); k cheapest per target;
    several -> cheapest."""
    priors, preds, boxes = image["priors"], image["preds"], image["targets"]
    num = len(priors)

    def in_center(q, target):
        reach = radius * image["strides"][q]
        return abs(priors[q][0] - target[0]) < reach and abs(priors[q][1] - target[1]) < reach

    in_box = [[is_inside(priors[q][:2], xyxy(t)) for t in boxes] for q in range(num)]
    in_ctr = [[in_center(q, t) for t in boxes] for q in range(num)]
    valid = [q for q in range(num) if any(in_box[q]) or any(in_ctr[q])]
    u = [[iou(xyxy(preds[q]), xyxy(t)) for t in boxes] for q in range(num)]
    cost = [
        [
            -math.log(sigmoid(image["logits"][q][label]))
            - 3.0 * math.log(u[q][j] + 1e-8)
            + 1e5 * (not (in_box[q][j] and in_ctr[q][j]))
            for j, label in enumerate(image["labels"])
        ]
        for q in range(num)
    ]
    claims = [[] for _ in range(num)]
    for j in range(len(boxes)):
        k = max(1, int(sum(sorted((u[q][j] for q in valid), reverse=True)[:candidate_topk])))
        for q in sorted(valid, key=lambda q: (cost[q][j], q))[:k]:
            claims[q].append(j)
    assigned = [min(js, key=lambda j, q=q: (cost[q][j], j)) if js else -1 for q, js in enumerate(claims)]
    return assigned, [1.0 if a >= 0 else 0.0 for a in assigned], [False] * num


REFERENCES = {
    "max_iou": reference_max_iou,
    "atss": reference_atss,
    "tal": reference_tal,
    "simota": reference_simota,
}


# ----------------------------------------------------------------------------------------------
# Reference comparison and invariances (every assigner)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ONE_TO_MANY)
def test_assigner_matches_the_slow_reference_on_random_problems(name, seed):
    outputs, targets, priors = random_problem(seed)
    assignments = build_assigner(name)(outputs, targets, priors)
    for b, assignment in enumerate(assignments):
        expected = REFERENCES[name](image_lists(outputs, targets, priors, b))
        assigned, weights, ignored = as_lists(assignment, len(priors.boxes))
        assert assigned == expected[0], f"image {b}"
        assert ignored == expected[2], f"image {b}"
        assert weights == pytest.approx(expected[1], abs=1e-5), f"image {b}"


def test_random_problems_exercise_every_branch():
    """The reference comparison means something: positives, ignored queries, forced matches,
    penalized SimOTA picks and TAL soft weights all occur in the random problems."""
    counts = {"ignored": 0, "forced": 0, "soft": 0, "penalized": 0, "empty": 0}
    for seed in SEEDS:
        outputs, targets, priors = random_problem(seed)
        for b in range(len(targets)):
            image = image_lists(outputs, targets, priors, b)
            counts["empty"] += not image["targets"]
            assigned, _, ignored = reference_max_iou(image)
            counts["ignored"] += sum(ignored)
            ious = [
                max((iou(xyxy(p), xyxy(t)) for t in image["targets"]), default=0) for p in image["priors"]
            ]
            counts["forced"] += sum(a >= 0 and v < 0.5 for a, v in zip(assigned, ious, strict=True))
            counts["soft"] += sum(0 < w < 0.99 for w in reference_tal(image)[1])
            assigned = reference_simota(image)[0]
            counts["penalized"] += sum(
                a >= 0 and not is_inside(image["priors"][q][:2], xyxy(image["targets"][a]))
                for q, a in enumerate(assigned)
            )
    assert all(count > 0 for count in counts.values()), counts


@pytest.mark.parametrize("name", ONE_TO_MANY)
def test_assigner_is_invariant_to_target_order(name):
    for seed in range(3):
        outputs, targets, priors = random_problem(10 + seed, batch=2)
        orders = [
            torch.randperm(len(t["labels"]), generator=torch.Generator().manual_seed(seed)) for t in targets
        ]
        permuted = [
            {key: value[order] for key, value in t.items()} for t, order in zip(targets, orders, strict=True)
        ]
        assigner = build_assigner(name)
        plain, shuffled = assigner(outputs, targets, priors), assigner(outputs, permuted, priors)
        for a, p, order in zip(plain, shuffled, orders, strict=True):
            assert p.pred_idx.tolist() == a.pred_idx.tolist()
            assert order[p.tgt_idx].tolist() == a.tgt_idx.tolist()
            assert torch.allclose(p.weights, a.weights, atol=1e-6)
            assert torch.equal(p.ignored, a.ignored)


@pytest.mark.parametrize("name", ONE_TO_MANY)
def test_assigner_gives_the_same_result_for_one_image_and_a_batch(name):
    outputs, targets, priors = random_problem(20, batch=3)
    assigner = build_assigner(name)
    batched = assigner(outputs, targets, priors)
    for b in range(3):
        single = {key: value[b : b + 1] for key, value in outputs.items()}
        (alone,) = assigner(single, [targets[b]], priors)
        assert alone.pred_idx.tolist() == batched[b].pred_idx.tolist()
        assert alone.tgt_idx.tolist() == batched[b].tgt_idx.tolist()
        assert torch.equal(alone.weights, batched[b].weights)
        assert torch.equal(alone.ignored, batched[b].ignored)


@pytest.mark.parametrize("name", ONE_TO_MANY)
def test_assigner_handles_images_without_targets(name):
    outputs, targets, priors = random_problem(3, batch=3)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    assigner = build_assigner(name)
    for batch_targets in ([empty, targets[0], empty], [empty, empty, empty]):
        assignments = assigner(outputs, batch_targets, priors)
        for assignment, target in zip(assignments, batch_targets, strict=True):
            if len(target["labels"]) == 0:
                assert len(assignment.pred_idx) == len(assignment.tgt_idx) == len(assignment.weights) == 0
                assert not assignment.ignored.any()
            assert assignment.pred_idx.dtype == assignment.tgt_idx.dtype == torch.int64
            assert assignment.ignored.shape == (len(priors.boxes),)


@pytest.mark.parametrize("name", ONE_TO_MANY)
def test_assignment_fields_keep_their_contract(name):
    outputs, targets, priors = random_problem(4)
    for assignment, target in zip(build_assigner(name)(outputs, targets, priors), targets, strict=True):
        pred = assignment.pred_idx.tolist()
        assert pred == sorted(set(pred))
        assert all(0 <= j < len(target["labels"]) for j in assignment.tgt_idx.tolist())
        assert assignment.weights.dtype == torch.float32 and assignment.ignored.dtype == torch.bool
        assert not assignment.ignored[assignment.pred_idx].any()
        assert assignment.pred_idx.device == outputs["pred_boxes"].device
        if name != "tal":
            assert assignment.weights.eq(1).all()
        if name != "max_iou":
            assert not assignment.ignored.any()


@pytest.mark.parametrize("name", ONE_TO_MANY)
def test_assigner_costs_are_float32_whatever_the_input_dtype(name):
    outputs, targets, priors = random_problem(5)
    low = {key: value.bfloat16() for key, value in outputs.items()}
    upcast = {key: value.float() for key, value in low.items()}
    assigner = build_assigner(name)
    for a, b in zip(assigner(low, targets, priors), assigner(upcast, targets, priors), strict=True):
        assert a.pred_idx.tolist() == b.pred_idx.tolist() and a.tgt_idx.tolist() == b.tgt_idx.tolist()
        assert torch.equal(a.weights, b.weights) and a.weights.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", ONE_TO_MANY)
def test_assigner_gives_the_same_result_on_the_gpu(name):
    outputs, targets, priors = random_problem(6)
    cuda = {key: value.cuda() for key, value in outputs.items()}
    assigner = build_assigner(name)
    for a, g in zip(assigner(outputs, targets, priors), assigner(cuda, targets, priors), strict=True):
        assert g.pred_idx.is_cuda and g.pred_idx.tolist() == a.pred_idx.tolist()
        assert g.tgt_idx.tolist() == a.tgt_idx.tolist()
        assert torch.allclose(g.weights.cpu(), a.weights, atol=1e-5) and torch.equal(
            g.ignored.cpu(), a.ignored
        )


def test_assigner_rejects_labels_of_padded_or_missing_texts():
    outputs, targets, priors = random_problem(1, batch=1, texts=3)
    target = {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2)}
    with pytest.raises(ValueError, match="image 0 target 1 has label 2"):
        ATSSAssigner()({**outputs, "text_mask": torch.tensor([[True, True, False]])}, [target], priors)
    with pytest.raises(ValueError, match="image 0 target 0 has label 3"):
        ATSSAssigner()(outputs, [{**target, "labels": torch.tensor([3, 0])}], priors)


def test_build_assigner_names_the_four_one_to_many_assigners():
    kinds = {
        "max_iou": MaxIoUAssigner,
        "atss": ATSSAssigner,
        "tal": TaskAlignedAssigner,
        "simota": SimOTAAssigner,
    }
    assert ONE_TO_MANY == tuple(kinds)
    for name, kind in kinds.items():
        assert type(build_assigner(name)) is kind
    assert build_assigner("atss", topk=3).topk == 3
    with pytest.raises(ValueError, match="max_iou, atss, tal, simota"):
        build_assigner("hungarian")


# ----------------------------------------------------------------------------------------------
# max_iou: hand-worked cases and the notes' thresholds

TARGET = [0.0, 0.0, 0.5, 0.5]  # xyxy, area 0.25; every coordinate below is dyadic, so IoUs are exact


def max_iou_case(prior_boxes: list[list[float]], target_boxes: list[list[float]], **kwargs):
    priors = hand_priors(prior_boxes)
    outputs, targets = one_image(
        [[0.0]] * len(prior_boxes), prior_boxes, [0] * len(target_boxes), target_boxes
    )
    return MaxIoUAssigner(**kwargs)(outputs, targets, priors)[0]


def test_max_iou_bands_follow_retinanet_thresholds():
    """seeds/004: RetinaNet, IoU > 0.5 positive, < 0.4 negative, [0.4, 0.5] ignored; the boundary
    0.5 itself is positive (RetinaNet paper and mmdetection use >= 0.5; the notes write "大于0.5")."""
    priors = [
        [0.0, 0.0, 0.5, 0.5],  # IoU 1
        [0.0, 0.0, 0.5, 0.25],  # inter 0.125 / union 0.25 = 0.5 -> positive
        [0.0, 0.25, 0.75, 0.5],  # inter 0.125 / union (0.25 + 0.1875 - 0.125) = 0.4 -> ignored
        [0.25, 0.25, 0.75, 0.75],  # inter 0.0625 / union 0.4375 = 0.143 -> negative
    ]
    assignment = max_iou_case(priors, [TARGET])
    assert assignment.pred_idx.tolist() == [0, 1] and assignment.tgt_idx.tolist() == [0, 0]
    assert assignment.ignored.tolist() == [False, False, True, False]


def test_max_iou_with_rpn_thresholds():
    """seeds/002: RPN, IoU > 0.7 positive, < 0.3 negative, between ignored."""
    priors = [
        [0.0, 0.0, 0.5, 0.375],  # inter 0.1875 / union 0.25 = 0.75 -> positive
        [0.0, 0.0, 0.5, 0.25],  # 0.5 -> ignored
        [0.25, 0.0, 0.75, 0.5],  # 0.125 / 0.375 = 0.333 -> ignored
        [0.25, 0.25, 0.75, 0.75],  # 0.143 -> negative
    ]
    assignment = max_iou_case(priors, [TARGET], pos_iou=0.7, neg_iou=0.3)
    assert assignment.pred_idx.tolist() == [0]
    assert assignment.ignored.tolist() == [False, True, True, False]


def test_max_iou_forces_each_targets_best_prior_even_below_the_negative_threshold():
    priors = [
        [0.125, 0.125, 0.625, 0.625],  # inter 0.375^2 = 0.140625 / union 0.359375 = 0.391 < 0.4
        [0.625, 0.625, 0.875, 0.875],  # no overlap -> negative
    ]
    # Target 1 overlaps no prior: it forces nothing (mmdetection's min_pos_iou=0 would force both priors).
    assignment = max_iou_case(priors, [TARGET, [0.9375, 0.0, 1.0, 0.0625]])
    assert assignment.pred_idx.tolist() == [0] and assignment.tgt_idx.tolist() == [0]
    assert not assignment.ignored.any()
    assert max_iou_case(priors, [TARGET], match_low_quality=False).pred_idx.tolist() == []


def test_max_iou_prior_best_for_two_targets_goes_to_the_higher_iou():
    """Target A [0, 0, .4, .4], B [.3, 0, .7, .4]; prior 0 [.1, 0, .5, .4] has IoU .12/.20 = 0.6 with A,
    .08/.24 = 0.333 with B; prior 1 [.6, 0, 1, .4] has 0.04/0.28 = 0.143 with B. Prior 0 is the best
    prior of both: it goes to A (0.6) in either target order (mmdetection: to the later target)."""
    priors = [[0.1, 0.0, 0.5, 0.4], [0.6, 0.0, 1.0, 0.4]]
    a, b = [0.0, 0.0, 0.4, 0.4], [0.3, 0.0, 0.7, 0.4]
    for boxes, a_index in (([a, b], 0), ([b, a], 1)):
        assignment = max_iou_case(priors, boxes)
        assert assignment.pred_idx.tolist() == [0] and assignment.tgt_idx.tolist() == [a_index]


# ----------------------------------------------------------------------------------------------
# atss


def test_atss_threshold_is_mean_plus_std_of_the_candidates_per_level():
    """Target [0, 0, .5, .5], centre (.25, .25); topk 2 per level.
    Level 0 (squares of .25): A centred (.25, .25) IoU .0625/.25 = 0.25, d 0; B (.5, .25) IoU
    .03125/.28125 = 0.111, d .25; C (.75, .75) d .71, not a candidate.
    Level 1 (squares of .5): D centred (.25, .375) IoU .1875/.3125 = 0.6, d .125; E (.75, .25) IoU 0, d .5.
    Candidates A, B, D, E: mean 0.2403, unbiased std 0.2607, threshold 0.5010: only D (centred
    inside the target) is positive; A, centred on the target, is not."""
    priors = hand_priors(
        [
            [0.125, 0.125, 0.375, 0.375],
            [0.375, 0.125, 0.625, 0.375],
            [0.625, 0.625, 0.875, 0.875],
            [0.0, 0.125, 0.5, 0.625],
            [0.5, 0.0, 1.0, 0.5],
        ],
        levels=[0, 0, 0, 1, 1],
    )
    outputs, targets = one_image([[0.0]] * 5, [[0, 0, 1, 1]] * 5, [0], [TARGET])
    assignment = ATSSAssigner(topk=2)(outputs, targets, priors)[0]
    assert assignment.pred_idx.tolist() == [3] and assignment.tgt_idx.tolist() == [0]
    # topk 1: candidates A (0.25) and D (0.6), threshold 0.425 + 0.247 = 0.672: nothing passes.
    assert ATSSAssigner(topk=1)(outputs, targets, priors)[0].pred_idx.tolist() == []


@pytest.mark.parametrize(("center", "is_positive"), [(0.45, True), (0.55, False)])
def test_atss_positive_needs_its_centre_inside_the_target(center, is_positive):
    """Target [0, 0, .5, .5]; a unit prior centred at (c, c) overlaps it (IoU 0.25 at c = .45, 0.193
    at c = .55), two small far priors do not. Candidate IoUs [x, 0, 0]: threshold 0.911 x < x, so the
    IoU test passes both times; only the centre test (.45 inside, .55 outside) decides."""
    big = [center - 0.5, center - 0.5, center + 0.5, center + 0.5]
    priors = hand_priors([big, [0.75, 0.0, 1.0, 0.25], [0.75, 0.75, 1.0, 1.0]])
    outputs, targets = one_image([[0.0]] * 3, [[0, 0, 1, 1]] * 3, [0], [TARGET])
    assignment = ATSSAssigner()(outputs, targets, priors)[0]
    assert assignment.pred_idx.tolist() == ([0] if is_positive else [])


# ----------------------------------------------------------------------------------------------
# tal


def test_tal_defaults_are_yolov8s():
    """seeds/003: "v8默认值α=0.5、β=6.0", "topk个候选框(默认为10)"."""
    assigner = TaskAlignedAssigner()
    assert (assigner.alpha, assigner.beta, assigner.topk) == (0.5, 6.0, 10)


def tal_case():
    """Target [0, 0, .5, .5] (text 0). Priors centred at (.125, .125), (.25, .25), (.375, .375) inside
    it, (.75, .75) outside.
      q0 predicts the target (u 1), logit 0 (s .5): t = sqrt(.5) * 1 = 0.70711
      q1 predicts [0, 0, .5, .25] (u .5), s .9: t = sqrt(.9) * .5^6 = 0.014823
      q2 predicts a disjoint box (u 0): t 0, never positive
      q3 predicts the target with s .9 but is centred outside it: not a candidate.
    Weights: max u 1, max t 0.70711: q0 -> 1.0, q1 -> 0.014823 / 0.70711 = 0.020963."""
    priors = hand_priors(
        [[c - 0.0625, c - 0.0625, c + 0.0625, c + 0.0625] for c in (0.125, 0.25, 0.375, 0.75)]
    )
    logit_9 = math.log(9.0)  # sigmoid = 0.9
    preds = [TARGET, [0.0, 0.0, 0.5, 0.25], [0.625, 0.625, 0.875, 0.875], TARGET]
    outputs, targets = one_image([[0.0], [logit_9], [logit_9], [logit_9]], preds, [0], [TARGET])
    return outputs, targets, priors


def test_tal_takes_the_top_k_aligned_candidates_with_normalized_weights():
    outputs, targets, priors = tal_case()
    assignment = TaskAlignedAssigner()(outputs, targets, priors)[0]
    assert assignment.pred_idx.tolist() == [0, 1] and assignment.tgt_idx.tolist() == [0, 0]
    assert assignment.weights.tolist() == pytest.approx([1.0, 0.020963], abs=1e-5)
    top1 = TaskAlignedAssigner(topk=1)(outputs, targets, priors)[0]
    assert top1.pred_idx.tolist() == [0] and top1.weights.tolist() == pytest.approx([1.0], abs=1e-6)


def test_tal_query_claimed_by_two_targets_keeps_the_larger_iou():
    """seeds/003 step 4: an anchor given to several GT boxes keeps the one of larger IoU (CIoU there).
    Targets [0, 0, .5, .5] (text 0, s .1) and [.25, 0, .75, .5] (text 1, s .9); one prior centred at
    (.375, .25) inside both; its prediction [.0625, 0, .5625, .5] has IoU .21875/.28125 = 0.778 with
    the first, .15625/.34375 = 0.455 with the second: it goes to the first despite the lower score."""
    priors = hand_priors([[0.3125, 0.1875, 0.4375, 0.3125]])
    logits = [[math.log(0.1 / 0.9), math.log(9.0)]]
    outputs, targets = one_image(
        logits, [[0.0625, 0.0, 0.5625, 0.5]], [0, 1], [TARGET, [0.25, 0.0, 0.75, 0.5]]
    )
    assignment = TaskAlignedAssigner()(outputs, targets, priors)[0]
    assert assignment.pred_idx.tolist() == [0] and assignment.tgt_idx.tolist() == [0]
    # The only positive of its target: weight t * max_u / max_t = its own IoU.
    assert assignment.weights.tolist() == pytest.approx([0.777778], abs=1e-6)


# ----------------------------------------------------------------------------------------------
# simota

SIMOTA_TARGET = [0.25, 0.25, 0.75, 0.75]  # centre (.5, .5); stride .125, radius 2.5 -> |dx|, |dy| < .3125


def simota_case(q1_pred: list[float]):
    """Priors (stride .125) centred at
    q0 (.5, .5): in box and centre region; predicts the target (IoU 1), logit 0:
       cost -log .5 + 3 * -log(1 + 1e-8) = 0.6931
    q1 (.625, .5): in box and centre; logit log 3 (s .75): cost 0.2877 + 3 * -log(IoU)
    q2 (.5, .8): below the box (y > .75) but in the centre region (dy .3): a candidate, penalized;
       predicts the target with logit 5: cost 0.0067 + 1e5
    q3 (.9, .9): outside both: not a candidate (its IoU 1 does not count in the dynamic k)."""
    centres = [(0.5, 0.5), (0.625, 0.5), (0.5, 0.8), (0.9, 0.9)]
    priors = hand_priors([[x - 0.0625, y - 0.0625, x + 0.0625, y + 0.0625] for x, y in centres])
    logits = [[0.0], [math.log(3.0)], [5.0], [5.0]]
    preds = [SIMOTA_TARGET, q1_pred, SIMOTA_TARGET, SIMOTA_TARGET]
    return one_image(logits, preds, [0], [SIMOTA_TARGET]), priors


def test_simota_takes_the_dynamic_k_cheapest_candidates():
    """q1 predicts [.25, .25, .75, .5] (IoU .5, cost 0.2877 + 2.0794 = 2.3671). Candidate IoUs 1, .5, 1
    sum to 2.5: k = 2, the two cheapest are q0 and q1; q2 (penalized) is left out."""
    (outputs, targets), priors = simota_case([0.25, 0.25, 0.75, 0.5])
    assignment = SimOTAAssigner()(outputs, targets, priors)[0]
    assert assignment.pred_idx.tolist() == [0, 1] and assignment.tgt_idx.tolist() == [0, 0]


def test_simota_takes_a_penalized_candidate_when_k_needs_it():
    """q1 predicts the target too: candidate IoUs sum to 3, k = 3, so q2 (in the centre region only)
    joins q0 and q1 (YOLOX's union of box and centre candidates)."""
    (outputs, targets), priors = simota_case(SIMOTA_TARGET)
    assignment = SimOTAAssigner()(outputs, targets, priors)[0]
    assert assignment.pred_idx.tolist() == [0, 1, 2]
    # With a radius of 2 strides (.25), q2 is no candidate: IoUs of q0, q1 sum to 2, k = 2.
    assert SimOTAAssigner(center_radius=2.0)(outputs, targets, priors)[0].pred_idx.tolist() == [0, 1]


def test_simota_query_taken_by_two_targets_goes_to_its_cheapest():
    """Targets T1 [.2, .3, .6, .7] (text 0) and T2 [.4, .3, .8, .7] (text 1), stride .125.
    q0 (.5, .5) lies in both boxes and centre regions and predicts [.25, .3, .65, .7]: IoU .7778 with
    T1, .4545 with T2; q1 (.25, .5) belongs to T1 only, q2 (.75, .5) to T2 only, both predicting far
    away (IoU 0, cost >= 55.3). Each target's k = max(1, int(IoU sum < 1)) = 1 and both take q0.
    q0's logit is -2 for text 0 and 3 for text 1: cost to T1 = 2.1269 + 3 * 0.2513 = 2.8809, to T2 =
    0.0486 + 3 * 0.7885 = 2.4140; q0 goes to T2 (its higher IoU does not matter), T1 gets nothing."""
    centres = [(0.5, 0.5), (0.25, 0.5), (0.75, 0.5)]
    priors = hand_priors([[x - 0.0625, y - 0.0625, x + 0.0625, y + 0.0625] for x, y in centres])
    far = [0.075, 0.075, 0.125, 0.125]
    outputs, targets = one_image(
        [[-2.0, 3.0], [0.0, 0.0], [0.0, 0.0]],
        [[0.25, 0.3, 0.65, 0.7], far, far],
        [0, 1],
        [[0.2, 0.3, 0.6, 0.7], [0.4, 0.3, 0.8, 0.7]],
    )
    assignment = SimOTAAssigner()(outputs, targets, priors)[0]
    assert assignment.pred_idx.tolist() == [0] and assignment.tgt_idx.tolist() == [1]
