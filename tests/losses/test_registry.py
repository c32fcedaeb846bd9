"""The loss registry: default weights, allowed weight names, the image-loss weight schedule."""

from ovdet.losses.registry import LOSS_TERMS, default_weights, scheduled_weights, weight_names

NAMES = ("loss_labels", "loss_l1", "loss_smooth_l1", "loss_iou", "loss_giou", "loss_diou", "loss_ciou", "loss_dfl",
         "loss_quality", "loss_contrastive", "loss_image")


def test_weight_names_and_defaults_come_from_the_terms_in_order():
    assert weight_names() == NAMES
    assert default_weights() == {"loss_labels": 2.0, "loss_l1": 5.0, "loss_smooth_l1": 0.0, "loss_iou": 0.0,
                                 "loss_giou": 2.0, "loss_diou": 0.0, "loss_ciou": 0.0, "loss_dfl": 1.5,
                                 "loss_quality": 1.0, "loss_contrastive": 0.5, "loss_image": 1.0}
    assert [name for scalars in LOSS_TERMS.values() for name in scalars] == list(default_weights())


def test_default_weights_are_a_fresh_dict_each_time():
    weights = default_weights()
    weights["loss_labels"] = 0.0
    assert default_weights()["loss_labels"] == 2.0


def test_image_loss_weight_is_zero_before_start_then_ramps_linearly():
    weights = {"loss_labels": 2.0, "loss_image": 0.5}
    factors = [scheduled_weights(weights, step, 3, 4)["loss_image"] / 0.5 for step in range(9)]
    assert factors == [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert all(scheduled_weights(weights, step, 3, 4)["loss_labels"] == 2.0 for step in range(9))
    assert scheduled_weights(weights, 0, 0, 0) == weights
    assert scheduled_weights({"loss_labels": 1.0}, 0, 5, 5) == {"loss_labels": 1.0}
