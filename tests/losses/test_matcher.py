"""HungarianMatcher: optimal assignment, invariances and edge cases (DETR's matcher tests)."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import generalized_box_iou

from ovdet.config import LossConfig
from ovdet.losses.matcher import HungarianMatcher, build_matcher
from ovdet.ops.boxes import box_cxcywh_to_xyxy, cxcywh_l1_and_giou


def random_outputs(batch: int, queries: int, texts: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, queries, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(batch, queries, 2, generator=generator) * 0.3 + 0.05
    return {
        "pred_logits": torch.randn(batch, queries, texts, generator=generator) * 2,
        "pred_boxes": torch.cat([centres, sizes], dim=-1),
    }


def random_target(num: int, texts: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(num, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(num, 2, generator=generator) * 0.3 + 0.05
    return {
        "labels": torch.randint(texts, (num,), generator=generator),
        "boxes": torch.cat([centres, sizes], dim=-1),
    }


def total_cost(cost: torch.Tensor, pred_idx, tgt_idx) -> float:
    return float(sum(cost[int(i), int(j)] for i, j in zip(pred_idx, tgt_idx, strict=True)))


def detr_reference_indices(matcher: HungarianMatcher, outputs, targets):
    """DETR / Deformable-DETR's matcher: flatten queries, cost against the targets of all images
    concatenated ([B*Q, sum N]), then split per image. Returns indices and per-image costs."""
    bs, num_queries = outputs["pred_logits"].shape[:2]
    prob = outputs["pred_logits"].flatten(0, 1).sigmoid()  # (bs*q, t)
    out_bbox = outputs["pred_boxes"].flatten(0, 1)  # (bs*q, 4)
    tgt_ids = torch.cat([t["labels"] for t in targets])
    tgt_bbox = torch.cat([t["boxes"] for t in targets])
    alpha, gamma = matcher.focal_alpha, matcher.focal_gamma
    neg = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    cost_class = pos[:, tgt_ids] - neg[:, tgt_ids]
    cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
    cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
    cost = matcher.cost_bbox * cost_bbox + matcher.cost_class * cost_class + matcher.cost_giou * cost_giou
    cost = cost.view(bs, num_queries, -1)
    sizes = [len(t["boxes"]) for t in targets]
    blocks = [c[b] for b, c in enumerate(cost.split(sizes, -1))]
    return [linear_sum_assignment(block) for block in blocks], blocks


def per_image_reference_indices(matcher: HungarianMatcher, outputs, targets):
    """The straightforward loop: each image's cost [Q, N_b] from torch.cdist and torchvision's GIoU,
    then scipy on it, one image after the other."""
    alpha, gamma = matcher.focal_alpha, matcher.focal_gamma
    indices = []
    for b, target in enumerate(targets):
        logits = outputs["pred_logits"][b][:, target["labels"]].float()  # (q, n)
        prob = logits.sigmoid()
        pos = alpha * (1 - prob) ** gamma * F.softplus(-logits)
        neg = (1 - alpha) * prob**gamma * F.softplus(logits)
        pred_boxes, target_boxes = outputs["pred_boxes"][b].float(), target["boxes"].float()
        cost_bbox = torch.cdist(pred_boxes, target_boxes, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes))
        cost = (
            matcher.cost_class * (pos - neg) + matcher.cost_bbox * cost_bbox + matcher.cost_giou * cost_giou
        )
        indices.append(tuple(torch.as_tensor(i) for i in linear_sum_assignment(cost.numpy())))
    return indices


def random_batch(seed: int, counts: list[int], queries: int = 64, texts: int = 12):
    outputs = random_outputs(len(counts), queries, texts, seed=seed)
    return outputs, [random_target(n, texts, seed=1000 * seed + b) for b, n in enumerate(counts)]


def as_lists(indices) -> list[tuple[list[int], list[int]]]:
    return [(pred_idx.tolist(), tgt_idx.tolist()) for pred_idx, tgt_idx in indices]


@pytest.fixture
def two_torch_threads():
    """The matcher runs images in worker threads only when torch has more than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_build_matcher_reads_the_loss_config():
    matcher = build_matcher(LossConfig(cost_class=1.0, cost_bbox=3.0, cost_giou=4.0, focal_alpha=0.5))
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou, matcher.focal_alpha) == (
        1.0,
        3.0,
        4.0,
        0.5,
    )


@pytest.mark.parametrize("seed", range(5))
def test_matcher_assignment_has_minimal_total_cost(seed):
    queries, num_targets = 5, 3
    outputs = random_outputs(1, queries, texts=4, seed=seed)
    targets = [random_target(num_targets, texts=4, seed=100 + seed)]
    matcher = HungarianMatcher()
    cost = matcher.image_cost(outputs, targets, 0).T  # (q, n)
    pred_idx, tgt_idx = matcher(outputs, targets)[0]
    brute_force = min(
        total_cost(cost, chosen, range(num_targets))
        for chosen in itertools.permutations(range(queries), num_targets)
    )
    assert total_cost(cost, pred_idx, tgt_idx) == pytest.approx(brute_force, abs=1e-5)
    assert sorted(tgt_idx.tolist()) == list(range(num_targets))


def test_matcher_returns_int64_indices_sorted_by_query():
    outputs = random_outputs(2, 10, texts=5)
    targets = [random_target(4, 5, seed=1), random_target(6, 5, seed=2)]
    for (pred_idx, tgt_idx), target in zip(HungarianMatcher()(outputs, targets), targets, strict=True):
        assert pred_idx.dtype == tgt_idx.dtype == torch.int64
        assert len(pred_idx) == len(tgt_idx) == len(target["labels"])
        assert pred_idx.tolist() == sorted(pred_idx.tolist())


def test_matcher_is_invariant_to_target_order():
    outputs = random_outputs(1, 12, texts=6, seed=3)
    target = random_target(7, 6, seed=4)
    order = torch.randperm(7, generator=torch.Generator().manual_seed(5))
    permuted = {"labels": target["labels"][order], "boxes": target["boxes"][order]}
    matcher = HungarianMatcher()
    pred_idx, tgt_idx = matcher(outputs, [target])[0]
    pred_perm, tgt_perm = matcher(outputs, [permuted])[0]
    assert pred_perm.tolist() == pred_idx.tolist()
    assert order[tgt_perm].tolist() == tgt_idx.tolist()


def test_matcher_gives_the_same_indices_for_one_image_and_a_batch():
    outputs = random_outputs(3, 15, texts=7, seed=6)
    targets = [random_target(5, 7, seed=7), random_target(2, 7, seed=8), random_target(9, 7, seed=9)]
    matcher = HungarianMatcher()
    batched = matcher(outputs, targets)
    for b in range(3):
        single_outputs = {key: value[b : b + 1] for key, value in outputs.items()}
        ((pred_idx, tgt_idx),) = matcher(single_outputs, [targets[b]])
        assert pred_idx.tolist() == batched[b][0].tolist()
        assert tgt_idx.tolist() == batched[b][1].tolist()


def test_matcher_handles_images_without_targets():
    outputs = random_outputs(3, 6, texts=3)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    indices = HungarianMatcher()(outputs, [empty, random_target(2, 3, seed=1), empty])
    assert [len(pred) for pred, _ in indices] == [0, 2, 0]
    assert indices[0][0].dtype == torch.int64
    all_empty = HungarianMatcher()(outputs, [empty, empty, empty])
    assert all(len(pred) == len(tgt) == 0 for pred, tgt in all_empty)


def test_matcher_rejects_more_targets_than_queries():
    outputs = random_outputs(2, 4, texts=3)
    targets = [random_target(2, 3, seed=1), random_target(5, 3, seed=2)]
    with pytest.raises(ValueError, match="image 1 has 5 targets but the model has only 4 queries"):
        HungarianMatcher()(outputs, targets)


def test_matcher_rejects_labels_of_padded_texts():
    outputs = random_outputs(1, 4, texts=3)
    outputs["text_mask"] = torch.tensor([[True, True, False]])
    target = {"labels": torch.tensor([0, 2]), "boxes": random_target(2, 3, seed=1)["boxes"]}
    with pytest.raises(ValueError, match="image 0 target 1 has label 2, a padded text"):
        HungarianMatcher()(outputs, [target])


def test_matcher_ignores_padded_texts_in_the_cost():
    outputs = random_outputs(1, 8, texts=4, seed=2)
    targets = [random_target(3, 3, seed=4)]
    padded = {**outputs, "text_mask": torch.tensor([[True, True, True, False]])}
    padded["pred_logits"] = outputs["pred_logits"].clone()
    padded["pred_logits"][..., 3] = 50.0
    matcher = HungarianMatcher()
    assert [p.tolist() for p, _ in matcher(padded, targets)] == [
        p.tolist() for p, _ in matcher(outputs, targets)
    ]


def test_matcher_matches_detr_reference_assignment():
    outputs = random_outputs(4, 30, texts=8, seed=11)
    targets = [random_target(n, 8, seed=20 + n) for n in (6, 0, 11, 3)]
    matcher = HungarianMatcher()
    ours = matcher(outputs, targets)
    reference, reference_blocks = detr_reference_indices(matcher, outputs, targets)
    for b, ((pred_idx, tgt_idx), (ref_pred, ref_tgt)) in enumerate(zip(ours, reference, strict=True)):
        ours_cost = matcher.image_cost(outputs, targets, b).T  # (q, n)
        torch.testing.assert_close(ours_cost, reference_blocks[b], atol=1e-5, rtol=1e-5)
        assert pred_idx.tolist() == ref_pred.tolist()
        assert tgt_idx.tolist() == ref_tgt.tolist()


@pytest.mark.parametrize("seed", range(4))
def test_worker_threads_give_the_per_image_reference_indices_every_time(seed, two_torch_threads):
    counts = torch.randint(0, 40, (12,), generator=torch.Generator().manual_seed(seed)).tolist()
    counts[seed] = 0
    outputs, targets = random_batch(seed, counts)
    matcher = HungarianMatcher()
    expected = as_lists(per_image_reference_indices(matcher, outputs, targets))
    for _ in range(5):
        assert as_lists(matcher(outputs, targets)) == expected
    assert torch.get_num_threads() == 2  # the workers run torch single-threaded, the caller keeps its threads


def test_batched_costs_give_the_per_image_costs_and_indices():
    outputs, targets = random_batch(7, [5, 0, 23, 64, 1])
    matcher = HungarianMatcher()
    costs = matcher.batch_costs(outputs, targets)
    per_image = [matcher.image_cost(outputs, targets, b) for b in range(len(targets))]
    assert costs.shape == (93, 64)
    torch.testing.assert_close(costs, torch.cat(per_image), atol=0, rtol=0)
    sizes = [len(t["labels"]) for t in targets]
    assert as_lists(HungarianMatcher.assign(costs, sizes)) == as_lists(matcher(outputs, targets))


def test_matcher_takes_bf16_outputs_that_require_grad():
    outputs, targets = random_batch(3, [4, 9, 0])
    low = {key: value.bfloat16().requires_grad_() for key, value in outputs.items()}
    matcher = HungarianMatcher()
    assert matcher.image_cost(low, targets, 1).dtype == torch.float32
    upcast = {key: value.detach().float() for key, value in low.items()}
    assert as_lists(matcher(low, targets)) == as_lists(matcher(upcast, targets))


def test_cxcywh_l1_and_giou_match_cdist_and_torchvision():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.1, 0.4], [0.9, 0.1, 0.05, 0.05]])  # (q, 4)
    target = torch.tensor(
        [[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 1.0, 1.0], [0.1, 0.9, 0.1, 0.1], [0.35, 0.6, 0.2, 0.1]]
    )
    l1, giou = cxcywh_l1_and_giou(pred.T[:, None, :], target.T[:, :, None])  # (n, q)
    torch.testing.assert_close(l1, torch.cdist(target, pred, p=1))
    torch.testing.assert_close(
        giou, generalized_box_iou(box_cxcywh_to_xyxy(target), box_cxcywh_to_xyxy(pred))
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_matcher_on_cuda_gives_the_cpu_indices():
    outputs, targets = random_batch(5, [3, 0, 17, 40])
    matcher = HungarianMatcher()
    cuda_outputs = {key: value.cuda() for key, value in outputs.items()}
    cuda_targets = [{key: value.cuda() for key, value in target.items()} for target in targets]
    indices = matcher(cuda_outputs, cuda_targets)
    assert all(pred_idx.device.type == "cpu" and pred_idx.dtype == torch.int64 for pred_idx, _ in indices)
    assert as_lists(indices) == as_lists(matcher(outputs, targets))
    low = {key: value.bfloat16() for key, value in cuda_outputs.items()}
    upcast = {key: value.float() for key, value in low.items()}
    assert as_lists(matcher(low, cuda_targets)) == as_lists(matcher(upcast, cuda_targets))
