"""The detection toolbox's loss terms: box losses, DFL, quality scores, softmax classification, soft and
ignored assignments, one-to-many assigners in the criterion, inference scoring and the recipe checks."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ovdet.config import LossConfig
from ovdet.errors import OvdetError
from ovdet.infer import NmsSettings, detection_scores
from ovdet.losses.assigners import Assignment
from ovdet.losses.criterion import (
    SetCriterion,
    box_losses,
    build_assignment,
    centerness,
    distribution_focal_loss,
    one_to_one,
)
from ovdet.losses.matcher import build_matcher
from ovdet.train.task import check_recipe

COUNTS = {"positives": 1.0, "image_positives": 1.0}


def criterion(quality: str = "none", **overrides) -> SetCriterion:
    cfg = LossConfig(**overrides)
    return SetCriterion(build_assignment(cfg), cfg, quality=quality)


# cxcywh. Nested squares, same centre: IoU .04 / .16 = .25, no centre distance, same aspect.
# Disjoint squares .4 apart: IoU 0; centre distance^2 .16 over the hull's diagonal^2 (.6^2 + .2^2 = .4).
# Wide vs square, same centre: IoU .04 / .08 = .5; v = 4 / pi^2 (atan 1 - atan 2)^2 = .041956,
# alpha = v / (1 - IoU + v) = .077416, CIoU loss = .5 + alpha v = .503248.
# Smooth L1 (beta .11): a difference d >= beta costs d - beta / 2.
@pytest.mark.parametrize("pred, target, expected", [
    ([0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 0.2, 0.2],
     {"loss_l1": 0.4, "loss_smooth_l1": 0.29, "loss_iou": 0.75, "loss_diou": 0.75, "loss_ciou": 0.75}),
    ([0.1, 0.1, 0.2, 0.2], [0.5, 0.1, 0.2, 0.2],
     {"loss_l1": 0.4, "loss_smooth_l1": 0.345, "loss_iou": 1.0, "loss_diou": 1.4, "loss_ciou": 1.4}),
    ([0.5, 0.5, 0.4, 0.2], [0.5, 0.5, 0.2, 0.2],
     {"loss_iou": 0.5, "loss_diou": 0.5, "loss_ciou": 0.503248}),
])
def test_box_losses_match_hand_worked_values(pred, target, expected):
    losses = box_losses(torch.tensor([pred]), torch.tensor([target]), smooth_l1_beta=0.11)
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value, abs=1e-5), name


def test_smooth_l1_is_quadratic_below_beta():
    losses = box_losses(torch.tensor([[0.5, 0.5, 0.2, 0.2]]), torch.tensor([[0.55, 0.5, 0.2, 0.2]]), smooth_l1_beta=0.11)
    assert losses["loss_smooth_l1"].item() == pytest.approx(0.5 * 0.05**2 / 0.11, abs=1e-7)


# Bins 0..3 with probabilities (1, 3, 1, 1) / 6. Distance 1.25: bin 1 weight .75, bin 2 weight .25:
# .75 ln 2 + .25 ln 6 = .96780. Distance .5: .5 ln 6 + .5 ln 2 = 1.24245. Beyond the last bin: clamped to 2.99.
def test_distribution_focal_loss_matches_hand_worked_values():
    logits = torch.tensor([1.0, 3.0, 1.0, 1.0]).log().expand(3, 4)
    loss = distribution_focal_loss(logits, torch.tensor([1.25, 0.5, 7.0]))
    expected = [0.75 * math.log(2) + 0.25 * math.log(6), 0.5 * math.log(6) + 0.5 * math.log(2), math.log(6)]
    assert loss.tolist() == pytest.approx(expected, abs=1e-6)


def test_loss_dfl_measures_distances_from_the_token_centre_in_cells():
    # A 2 x 2 grid (cells .5): token 0's centre is (.25, .25). Target xyxy (0, 0, .875, .5): distances
    # .25, .25, .625, .25 = .5, .5, 1.25, .5 cells; mean of 1.24245 (three sides) and .96780.
    distribution = torch.tensor([1.0, 3.0, 1.0, 1.0]).log().expand(1, 4, 4, 4).clone()
    outputs = {"pred_logits": torch.zeros(1, 4, 1), "pred_boxes": torch.full((1, 4, 4), 0.5),
               "box_distribution": distribution, "token_grid": torch.tensor([2, 2])}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.4375, 0.25, 0.875, 0.5]]), "has_boxes": True}]
    losses = criterion().loss_dfl(outputs, targets, [one_to_one(torch.tensor([0]), torch.tensor([0]), 4)], COUNTS)
    half, one_and_a_quarter = 0.5 * math.log(6) + 0.5 * math.log(2), 0.75 * math.log(2) + 0.25 * math.log(6)
    assert losses["loss_dfl"].item() == pytest.approx((3 * half + one_and_a_quarter) / 4, abs=1e-6)


def test_centerness_matches_fcos():
    # l .25, t .25, r .625, b .25: sqrt(.25 / .625 * 1) = .632456; the centre of a box is 1, its edge 0.
    distances = torch.tensor([[0.25, 0.25, 0.625, 0.25], [0.3, 0.3, 0.3, 0.3], [0.0, 0.2, 0.5, 0.2]])
    assert centerness(distances).tolist() == pytest.approx([0.632456, 1.0, 0.0], abs=1e-6)


def quality_problem(quality_logit: float):
    outputs = {"pred_logits": torch.zeros(1, 4, 1), "pred_boxes": torch.tensor([[[0.25, 0.25, 0.5, 0.5]] * 4]),
               "quality_logits": torch.full((1, 4), quality_logit), "token_grid": torch.tensor([2, 2])}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.4375, 0.25, 0.875, 0.5]]), "has_boxes": True}]
    return outputs, targets, [one_to_one(torch.tensor([0]), torch.tensor([0]), 4)]


def test_centerness_quality_is_bce_against_the_token_centres_centerness():
    outputs, targets, assignments = quality_problem(1.0)
    losses = criterion("centerness").loss_quality(outputs, targets, assignments, COUNTS)
    assert losses["loss_quality"].item() == pytest.approx(F.softplus(torch.tensor(1.0)).item() - 0.632456, abs=1e-5)


def test_iou_quality_targets_the_detached_iou_of_the_predicted_box():
    outputs, targets, assignments = quality_problem(0.0)
    outputs["pred_boxes"].requires_grad_(True)
    outputs["quality_logits"].requires_grad_(True)
    losses = criterion("iou").loss_quality(outputs, targets, assignments, COUNTS)
    # pred xyxy (0, 0, .5, .5) vs target (0, 0, .875, .5): IoU .25 / .4375 = 4/7; BCE at logit 0 is ln 2.
    assert losses["loss_quality"].item() == pytest.approx(math.log(2), abs=1e-6)
    losses["loss_quality"].backward()
    assert outputs["pred_boxes"].grad is None and outputs["quality_logits"].grad[0, 0] == pytest.approx(0.5 - 4 / 7, abs=1e-6)


def test_objectness_is_bce_over_every_query_of_images_with_boxes():
    outputs, targets, assignments = quality_problem(0.0)
    outputs["quality_logits"][0, 1] = 2.0
    losses = criterion("objectness").loss_quality(outputs, targets, assignments, {**COUNTS, "scored_queries": 4.0})
    # the positive (query 0) and two negatives at p = .5 cost ln 2 each, the negative at logit 2 softplus(2)
    expected = (3 * math.log(2) + F.softplus(torch.tensor(2.0)).item()) / 4
    assert losses["loss_quality"].item() == pytest.approx(expected, abs=1e-6)
    image_text = [{"has_boxes": False, "labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    empty = [one_to_one(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 4)]
    counts = {**COUNTS, "scored_queries": 1.0}
    assert criterion("objectness").loss_quality(outputs, image_text, empty, counts)["loss_quality"].item() == 0.0
    assert criterion("objectness")(outputs, targets)["loss_quality"].item() == pytest.approx(expected, abs=1e-6)


def test_no_quality_head_means_no_quality_loss():
    outputs, targets, assignments = quality_problem(0.0)
    assert criterion("none").loss_quality(outputs, targets, assignments, COUNTS) == {}
    assert criterion().loss_dfl(outputs, targets, assignments, COUNTS) == {}


def test_softmax_classification_is_detrs_weighted_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits, no_object = torch.randn(1, 5, 3, generator=generator), torch.randn(1, 5, generator=generator)
    outputs = {"pred_logits": logits, "pred_boxes": torch.full((1, 5, 4), 0.5), "no_object_logits": no_object,
               "text_mask": torch.tensor([[True, True, False]])}
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "has_boxes": True}]
    assignments = [one_to_one(torch.tensor([3]), torch.tensor([0]), 5)]
    counts = {**COUNTS, "softmax_weight": 1 + 0.1 * 4}
    loss = criterion(classification="softmax").loss_labels(outputs, targets, assignments, counts)["loss_labels"]
    # DETR: the padded text is not a class; classes (text 0, text 1, no-object), no-object weighted .1, mean.
    reference_logits = torch.cat([logits[0, :, :2], no_object[0, :, None]], dim=-1)
    classes = torch.tensor([2, 2, 2, 1, 2])
    expected = F.cross_entropy(reference_logits, classes, weight=torch.tensor([1.0, 1.0, 0.1]))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    hungarian = SetCriterion(build_assignment(LossConfig()), LossConfig(classification="softmax"))
    hungarian.assign = lambda outputs, targets: assignments  # the forward's own counts, same assignment
    assert hungarian(outputs, targets)["loss_labels"].item() == pytest.approx(expected.item(), abs=1e-6)


def test_soft_weights_are_the_classification_targets_and_weight_the_box_losses():
    outputs = {"pred_logits": torch.tensor([[[0.3], [-0.2]]]), "pred_boxes": torch.tensor([[[0.5, 0.5, 0.4, 0.4]] * 2])}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "has_boxes": True}]
    soft = [Assignment(torch.tensor([0]), torch.tensor([0]), torch.tensor([0.3]), torch.zeros(2, dtype=torch.bool))]
    losses = criterion(classification="bce").loss_labels(outputs, targets, soft, COUNTS)
    expected = F.binary_cross_entropy_with_logits(torch.tensor([0.3, -0.2]), torch.tensor([0.3, 0.0]), reduction="sum")
    assert losses["loss_labels"].item() == pytest.approx(expected.item(), abs=1e-6)
    assert criterion().loss_boxes(outputs, targets, soft, COUNTS)["loss_iou"].item() == pytest.approx(0.3 * 0.75)


def test_ignored_queries_leave_the_classification_loss():
    outputs = {"pred_logits": torch.tensor([[[0.3], [-0.2], [1.0]]]), "pred_boxes": torch.full((1, 3, 4), 0.5)}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "has_boxes": True}]
    ignored = [Assignment(torch.tensor([0]), torch.tensor([0]), torch.ones(1), torch.tensor([False, False, True]))]
    before = criterion().loss_labels(outputs, targets, ignored, COUNTS)["loss_labels"]
    outputs["pred_logits"][0, 2, 0] = 9.0
    assert criterion().loss_labels(outputs, targets, ignored, COUNTS)["loss_labels"] == before


@pytest.mark.parametrize("assigner", ["max_iou", "atss", "tal", "simota"])
def test_one_to_many_assigners_train_through_the_criterion(assigner):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 64, 5, generator=generator, requires_grad=True)
    outputs = {"pred_logits": logits, "pred_boxes": torch.rand(2, 64, 4, generator=generator) * 0.3 + 0.35,
               "token_grid": torch.tensor([8, 8])}
    targets = [{"labels": torch.tensor([0, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.7, 0.6, 0.4, 0.5]])},
               {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.6, 0.6]])}]
    loss_criterion = criterion(assigner=assigner)
    assignments = loss_criterion.assign(outputs, [{**t, "has_boxes": True} for t in targets])
    assert sum(len(a.pred_idx) for a in assignments) > 3  # more positives than boxes: one-to-many
    losses = loss_criterion(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss_labels"].backward()
    assert logits.grad.abs().sum() > 0


def test_hungarian_positives_count_the_boxes():
    outputs = {"pred_logits": torch.randn(1, 6, 2), "pred_boxes": torch.rand(1, 6, 4) * 0.4 + 0.3}
    targets = [{"labels": torch.tensor([0, 1, 1]), "boxes": torch.rand(3, 4) * 0.4 + 0.3, "has_boxes": True}]
    cfg = LossConfig()
    assignments = SetCriterion(build_matcher(cfg), cfg).assign(outputs, targets)
    assert [len(a.pred_idx) for a in assignments] == [3] and assignments[0].weights.tolist() == [1.0] * 3


def test_scores_combine_the_quality_as_a_geometric_mean_and_softmax_drops_no_object():
    output = SimpleNamespace(pred_logits=torch.tensor([[[0.0, 2.0]]]), quality_logits=torch.tensor([[math.log(0.25 / 0.75)]]),
                             no_object_logits=torch.tensor([[1.0]]))
    sigmoid = detection_scores(output, {"quality": "iou"})
    assert sigmoid[0, 0].tolist() == pytest.approx([math.sqrt(0.5 * 0.25), math.sqrt(torch.tensor(2.0).sigmoid() * 0.25)])
    softmax = detection_scores(output, {"no_object": True})
    assert softmax[0, 0].tolist() == pytest.approx((torch.tensor([0.0, 2.0, 1.0]).softmax(-1)[:2]).tolist())
    assert detection_scores(output, {})[0, 0].tolist() == pytest.approx([0.5, torch.tensor(2.0).sigmoid().item()])


@pytest.mark.parametrize("assigner, method", [("hungarian", "none"), ("atss", "class"), ("tal", "class")])
def test_auto_nms_follows_the_training_assignment(assigner, method):
    assert NmsSettings().resolved({"assigner": assigner}).method == method
    assert NmsSettings("soft-gaussian").resolved({"assigner": assigner}).method == "soft-gaussian"
    assert NmsSettings().resolved({}).method == "none"  # a model saved before assigners: Hungarian


def test_recipes_a_model_cannot_train_are_refused_naming_the_keys():
    grounding_dino = SimpleNamespace(spec={"name": "hf:gd", "kind": "hf"}, has_token_grid=False)
    with pytest.raises(OvdetError, match=r"loss\.assigner=atss needs priors from a grid of region tokens; hf:gd"):
        check_recipe(grounding_dino, LossConfig(assigner="atss"))
    owl = SimpleNamespace(spec={"name": "hf:owl", "kind": "hf"}, has_token_grid=True)
    check_recipe(owl, LossConfig(assigner="atss"))
    with pytest.raises(OvdetError, match=r"loss\.classification=softmax needs a no-object logit per query; hf:owl"):
        check_recipe(owl, LossConfig(classification="softmax"))
