"""SetCriterion: each loss term against hand-worked values, masking, image-text samples, gradients."""

import math

import pytest
import torch

from ovdet import dist
from ovdet.config import LossConfig
from ovdet.errors import OvdetError
from ovdet.losses.criterion import SetCriterion, count_positives, global_counts, one_to_one, weighted_sum
from ovdet.losses.matcher import build_matcher
from ovdet.losses.registry import LOSS_TERMS, weight_names


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def make_criterion(**overrides) -> SetCriterion:
    cfg = LossConfig(**overrides)
    return SetCriterion(build_matcher(cfg), cfg)


def one_query_outputs(p: float) -> dict[str, torch.Tensor]:
    """One image, one query, one text with probability ``p``; the query's box is centred 0.3 wide."""
    return {
        "pred_logits": torch.tensor([[[logit(p)]]]),
        "pred_boxes": torch.tensor([[[0.5, 0.5, 0.3, 0.3]]]),
    }


def positive_target() -> dict[str, torch.Tensor]:
    return {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]])}


def no_target() -> dict[str, torch.Tensor]:
    return {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}


def image_text_target(*positives: int) -> dict:
    """An image-text sample: no boxes, the caption names the texts ``positives``."""
    return {"has_boxes": False, "image_labels": torch.tensor(positives)}


def with_image_labels(target: dict, *positives: int) -> dict:
    return {**target, "image_labels": torch.tensor(positives)}


def random_batch(
    seed: int = 0, texts: int = 4
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images, 6 queries; image 0 has 2 boxes, image 1 has 3."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(2, 6, 2, generator=generator) * 0.5 + 0.25
    sizes = torch.rand(2, 6, 2, generator=generator) * 0.3 + 0.1
    outputs = {
        "pred_logits": torch.randn(2, 6, texts, generator=generator),
        "pred_boxes": torch.cat([centres, sizes], dim=-1),
    }
    targets = [
        {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.2], [0.6, 0.6, 0.3, 0.2]])},
        {
            "labels": torch.tensor([1, 1, 3]),
            "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.2, 0.7, 0.1, 0.2], [0.7, 0.3, 0.2, 0.3]]),
        },
    ]
    return outputs, targets


# -log(0.9) = 0.1054; -log(1 - 0.2) = 0.2231.
# focal positive: 0.25 * (1 - 0.9)^2 * 0.1054 = 0.000263; negative: 0.75 * 0.2^2 * 0.2231 = 0.00669.
@pytest.mark.parametrize(
    "classification, p, is_positive, expected, tolerance",
    [
        ("bce", 0.9, True, 0.105, 5e-4),
        ("bce", 0.2, False, 0.223, 5e-4),
        ("focal", 0.9, True, 0.00026, 5e-6),
        ("focal", 0.2, False, 0.0067, 5e-5),
    ],
)
def test_loss_labels_matches_hand_worked_values(classification, p, is_positive, expected, tolerance):
    criterion = make_criterion(classification=classification)
    target = positive_target() if is_positive else no_target()
    losses = criterion(one_query_outputs(p), [target])
    assert losses["loss_labels"].item() == pytest.approx(expected, abs=tolerance)


# Boxes in cxcywh. Disjoint: xyxy (0, 0, .2, .2) and (.4, 0, .6, .2): union .08, hull .6 x .2 = .12,
# GIoU = -(.12 - .08) / .12 = -1/3, loss 4/3. Nested: a .2 box in a .4 box with the same centre:
# IoU = .04 / .16 = GIoU, loss .75. L1 sums the four coordinate differences.
@pytest.mark.parametrize(
    "pred, target, loss_l1, loss_giou",
    [
        ([0.1, 0.1, 0.2, 0.2], [0.5, 0.1, 0.2, 0.2], 0.4, 4.0 / 3.0),
        ([0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 0.2, 0.2], 0.4, 0.75),
        ([0.3, 0.6, 0.2, 0.4], [0.3, 0.6, 0.2, 0.4], 0.0, 0.0),
    ],
)
def test_loss_boxes_matches_hand_worked_values(pred, target, loss_l1, loss_giou):
    outputs = {"pred_logits": torch.zeros(1, 1, 1), "pred_boxes": torch.tensor([[pred]])}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([target]), "has_boxes": True}]
    assignments = [one_to_one(torch.tensor([0]), torch.tensor([0]), 1)]
    losses = make_criterion().loss_boxes(outputs, targets, assignments, {"positives": 1.0, "image_positives": 1.0})
    assert losses["loss_l1"].item() == pytest.approx(loss_l1, abs=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(loss_giou, abs=1e-5)


def test_perfect_prediction_gives_zero_box_losses():
    outputs, targets = random_batch()
    outputs["pred_boxes"][0, [1, 4]] = targets[0]["boxes"]
    outputs["pred_boxes"][1, [0, 2, 5]] = targets[1]["boxes"]
    losses = make_criterion()(outputs, targets)
    assert losses["loss_l1"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-5)  # torchvision eps 1e-7 / area


def test_loss_contrastive_matches_hand_worked_value():
    # Matched query logits (2, 0), label 0: -log(e^2 / (e^2 + e^0)) = log(1 + e^-2) = 0.1269.
    outputs = {
        "pred_logits": torch.tensor([[[2.0, 0.0]]]),
        "pred_boxes": torch.tensor([[[0.5, 0.5, 0.3, 0.3]]]),
    }
    losses = make_criterion()(outputs, [positive_target()])
    assert losses["loss_contrastive"].item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-5)


def test_loss_contrastive_is_zero_with_grad_without_matches():
    outputs = one_query_outputs(0.3)
    outputs["pred_logits"].requires_grad_(True)
    loss = make_criterion()(outputs, [no_target()])["loss_contrastive"]
    assert loss.item() == 0.0
    loss.backward()
    assert outputs["pred_logits"].grad is not None


@pytest.mark.parametrize("classification", ["focal", "bce"])
def test_padded_texts_do_not_change_the_losses(classification):
    outputs, targets = random_batch(texts=4)
    padding = torch.randn(2, 6, 3) * 10
    padded = {
        "pred_logits": torch.cat([outputs["pred_logits"], padding], dim=-1),
        "pred_boxes": outputs["pred_boxes"],
        "text_mask": torch.tensor([[True] * 4 + [False] * 3] * 2),
    }
    targets = [with_image_labels(targets[0], 1), targets[1]]
    criterion = make_criterion(classification=classification)
    plain = criterion(outputs, targets)
    masked = criterion(padded, targets)
    assert plain.keys() == masked.keys()
    for name in plain:
        torch.testing.assert_close(masked[name], plain[name], msg=name)


def test_images_without_boxes_contribute_only_loss_image():
    outputs, targets = random_batch()
    outputs["pred_logits"].requires_grad_(True)
    outputs["pred_boxes"].requires_grad_(True)
    image_text = [targets[0], image_text_target(0, 3)]
    criterion = make_criterion()
    losses = criterion(outputs, image_text)

    first = {key: value[:1].detach() for key, value in outputs.items()}
    second = {key: value[1:].detach() for key, value in outputs.items()}
    alone = criterion(first, targets[:1])
    for name in ("loss_labels", "loss_contrastive", "loss_l1", "loss_giou"):
        torch.testing.assert_close(losses[name], alone[name], msg=name)
    only_image = criterion(second, image_text[1:])
    torch.testing.assert_close(losses["loss_image"], only_image["loss_image"])

    box_terms = losses["loss_labels"] + losses["loss_contrastive"] + losses["loss_l1"] + losses["loss_giou"]
    box_terms.backward()
    assert outputs["pred_logits"].grad[1].abs().sum() == 0
    assert outputs["pred_boxes"].grad[1].abs().sum() == 0


# Two queries, two texts; caption positive = text 0. Query probabilities (text 0, text 1):
# query 0 (.9, .1) with a small box, query 1 (.5, .2) with the largest box.
# max_score: image scores (.9, .2): -log .9 - log .8 = 0.1054 + 0.2231 = 0.3285.
# max_size: query 1: -log .5 - log .8 = 0.6931 + 0.2231 = 0.9163.
@pytest.mark.parametrize("variant, expected", [("max_score", 0.3285), ("max_size", 0.9163)])
def test_loss_image_matches_hand_worked_values(variant, expected):
    outputs = {
        "pred_logits": torch.tensor([[[logit(0.9), logit(0.1)], [logit(0.5), logit(0.2)]]]),
        "pred_boxes": torch.tensor([[[0.5, 0.5, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6]]]),
    }
    losses = make_criterion(image_loss=variant)(outputs, [image_text_target(0)])
    assert losses["loss_image"].item() == pytest.approx(expected, abs=1e-4)
    assert losses["loss_labels"].item() == 0.0


@pytest.mark.parametrize("grad, trained", [("similarity", "region_similarity"), ("all", "pred_logits")])
def test_image_loss_trains_only_the_logits_its_setting_names(grad, trained):
    logits = torch.tensor([[[logit(0.9), logit(0.1)], [logit(0.5), logit(0.2)]]])
    outputs = {  # logits = (region_similarity + shift) * scale with shift 0, scale 1
        "pred_logits": logits.clone().requires_grad_(True),
        "region_similarity": logits.clone().requires_grad_(True),
        "logit_shift": torch.zeros(1, 2, 1, requires_grad=True),
        "logit_scale": torch.ones(1, 2, 1, requires_grad=True),
        "pred_boxes": torch.tensor([[[0.5, 0.5, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6]]]),
    }
    losses = make_criterion(image_loss="max_score", image_loss_grad=grad)(outputs, [image_text_target(0)])
    assert losses["loss_image"].item() == pytest.approx(0.3285, abs=1e-4)
    losses["loss_image"].backward()
    assert outputs[trained].grad.abs().sum() > 0
    for other in {"pred_logits", "region_similarity", "logit_shift", "logit_scale"} - {trained}:
        assert outputs[other].grad is None or outputs[other].grad.abs().sum() == 0, other


# Two queries, three texts. Logits q0 (2, 0, 1), q1 (1, 3, 0).
# Positive {0}: text 0 peaks at q0; softmax over (2, 0, 1): log(1 + e^-2 + e^-1) = 0.4076.
# Positives {0, 1}: text 0 at q0 over (2, 1) -> log(1 + e^-1) = 0.3133; text 1 at q1 over (3, 0)
# -> log(1 + e^-3) = 0.0486; (0.3133 + 0.0486) / 2 positives = 0.1810.
@pytest.mark.parametrize("positives, expected", [([0], 0.4076), ([0, 1], 0.1810)])
def test_max_score_softmax_matches_hand_worked_values(positives, expected):
    outputs = {
        "pred_logits": torch.tensor([[[2.0, 0.0, 1.0], [1.0, 3.0, 0.0]]], requires_grad=True),
        "pred_boxes": torch.rand(1, 2, 4),
    }
    criterion = make_criterion(image_loss="max_score_softmax")
    losses = criterion(outputs, [image_text_target(*positives)])
    assert losses["loss_image"].item() == pytest.approx(expected, abs=1e-4)
    losses["loss_image"].backward()
    grad = outputs["pred_logits"].grad[0]
    assert grad.sum(dim=1).abs().max() < 1e-6  # a softmax: adding a constant to a region's logits changes nothing


# The same logits from parts: similarity (2, 0, 1) and (1, 3, 0), shift 0, scale 1. Positive {0} peaks
# at q0; the objectness term adds weight x softplus(-2) = 0.5 x 0.1269; d/d shift[q0] = -0.5 x sigmoid(-2).
def test_image_loss_objectness_trains_only_the_best_querys_shift():
    similarity = torch.tensor([[[2.0, 0.0, 1.0], [1.0, 3.0, 0.0]]], requires_grad=True)
    shift = torch.zeros(1, 2, 1, requires_grad=True)
    scale = torch.ones(1, 2, 1, requires_grad=True)
    outputs = {"pred_logits": (similarity + shift) * scale, "pred_boxes": torch.rand(1, 2, 4),
               "region_similarity": similarity, "logit_shift": shift, "logit_scale": scale}
    losses = make_criterion(image_loss_objectness=0.5)(outputs, [image_text_target(0)])
    assert losses["loss_image"].item() == pytest.approx(0.4076 + 0.5 * 0.1269, abs=1e-4)
    softmax_only = make_criterion()(dict(outputs, pred_logits=(similarity + shift) * scale), [image_text_target(0)])
    assert softmax_only["loss_image"].item() == pytest.approx(0.4076, abs=1e-4)
    losses["loss_image"].backward()
    # the softmax is blind to a query's shift; only the objectness term moves it, at q0 alone
    assert shift.grad[0, :, 0].tolist() == pytest.approx([-0.5 * torch.sigmoid(torch.tensor(-2.0)).item(), 0.0],
                                                        abs=1e-6)


@pytest.mark.parametrize("overrides", [{"image_loss_objectness": -1.0},
                                       {"image_loss_objectness": 1.0, "image_loss": "max_score"}])
def test_image_loss_objectness_settings_are_checked(overrides):
    with pytest.raises(OvdetError, match="image_loss_objectness"):
        LossConfig(**overrides)


def test_max_score_softmax_ignores_padded_texts():
    logits = torch.tensor([[[2.0, 0.0, 1.0, 9.0], [1.0, 3.0, 0.0, 9.0]]])
    outputs = {"pred_logits": logits, "pred_boxes": torch.rand(1, 2, 4), "text_mask": torch.tensor([[1, 1, 1, 0]]).bool()}
    losses = make_criterion(image_loss="max_score_softmax")(outputs, [image_text_target(0)])
    assert losses["loss_image"].item() == pytest.approx(0.4076, abs=1e-4)


def test_image_loss_none_leaves_the_term_out():
    outputs, targets = random_batch()
    losses = make_criterion(image_loss="none")(outputs, [with_image_labels(targets[0], 0), targets[1]])
    assert "loss_image" not in losses
    assert {"loss_labels", "loss_contrastive", "loss_l1", "loss_giou"} <= losses.keys()


def test_weighted_sum_uses_weights_of_present_losses():
    losses = {"loss_labels": torch.tensor(2.0), "loss_l1": torch.tensor(3.0)}
    total = weighted_sum(losses, {"loss_labels": 0.5, "loss_l1": 2.0, "loss_image": 10.0})
    assert total.item() == pytest.approx(7.0)


def test_gradients_flow_through_the_weighted_loss():
    outputs, targets = random_batch()
    outputs["pred_logits"].requires_grad_(True)
    outputs["pred_boxes"].requires_grad_(True)
    cfg = LossConfig()
    losses = make_criterion()(outputs, [targets[0], with_image_labels(targets[1], 2)])
    weighted_sum(losses, cfg.weights).backward()
    for name in ("pred_logits", "pred_boxes"):
        grad = outputs[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_counts_are_averaged_over_ranks_in_one_reduction(monkeypatch):
    reductions = []

    def other_rank_has_7_boxes_and_no_positives(values):
        reductions.append(values)
        return [values[0] + 7.0, values[1]]

    monkeypatch.setattr(dist, "sum_over_ranks", other_rank_has_7_boxes_and_no_positives)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    outputs, targets = random_batch()
    assignments = make_criterion().assign(outputs, [{**t, "has_boxes": True} for t in targets])
    counts = global_counts({"positives": count_positives(assignments), "image_positives": 0})
    assert counts == {"positives": pytest.approx((5 + 7) / 2), "image_positives": pytest.approx(1 / 2)}
    assert reductions == [[5.0, 0.0]]


def test_counts_are_at_least_one():
    assert global_counts({"positives": 0.0}) == {"positives": 1.0}


def test_padded_texts_with_infinite_logits_keep_losses_and_grads_finite():
    outputs, targets = random_batch(texts=4)
    logits = torch.cat([outputs["pred_logits"], torch.full((2, 6, 2), -math.inf)], dim=-1).requires_grad_(
        True
    )
    padded = {**outputs, "pred_logits": logits, "text_mask": torch.tensor([[True] * 4 + [False] * 2] * 2)}
    losses = make_criterion()(padded, [with_image_labels(targets[0], 1), targets[1]])
    total = weighted_sum(losses, LossConfig().weights)
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(logits.grad).all()


def test_zero_losses_stay_finite_next_to_infinite_padded_logits():
    logits = torch.tensor([[[0.5, -math.inf]]], requires_grad=True)
    outputs = {"pred_logits": logits, "pred_boxes": torch.tensor([[[0.5, 0.5, 0.3, 0.3]]])}
    outputs["text_mask"] = torch.tensor([[True, False]])
    losses = make_criterion()(outputs, [no_target()])
    assert losses["loss_contrastive"].item() == 0.0 and losses["loss_image"].item() == 0.0
    weighted_sum(losses, LossConfig().weights).backward()
    assert torch.isfinite(logits.grad).all()


def test_every_registered_term_is_one_method_returning_its_scalars():
    outputs, targets = random_batch()
    outputs["token_grid"] = torch.tensor([2, 3])  # the 6 queries on a 2 x 3 grid
    outputs["box_distribution"] = torch.randn(2, 6, 4, 16)
    outputs["quality_logits"] = torch.randn(2, 6)
    cfg = LossConfig()
    criterion = SetCriterion(build_matcher(cfg), cfg, quality="centerness")
    targets = [{**targets[0], "has_boxes": True}, {**with_image_labels(targets[1], 2), "has_boxes": True}]
    assignments = criterion.assign(outputs, targets)
    counts = {"positives": 5.0, "image_positives": 1.0}
    assert list(criterion.loss_map) == list(LOSS_TERMS)
    for term, scalars in LOSS_TERMS.items():
        assert criterion.loss_map[term].__name__ == f"loss_{term}"
        assert list(criterion.loss_map[term](outputs, targets, assignments, counts)) == list(scalars), term
    assert list(criterion(outputs, targets)) == list(weight_names())

