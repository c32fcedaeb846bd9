"""The image-level loss schedule: off for ``loss.image_loss_start`` steps, then ramped in."""

from __future__ import annotations

import json

import pytest
from train_runs import run_train

from ovdet.config import LossConfig
from ovdet.train.task import scheduled_weights


def test_image_loss_weight_is_zero_before_start_then_ramps_linearly():
    weights = {"loss_labels": 2.0, "loss_image": 0.5}
    factors = [scheduled_weights(weights, step, 3, 4)["loss_image"] / 0.5 for step in range(9)]
    assert factors == [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert all(scheduled_weights(weights, step, 3, 4)["loss_labels"] == 2.0 for step in range(9))
    assert scheduled_weights(weights, 0, 0, 0) == weights
    assert scheduled_weights({"loss_labels": 1.0}, 0, 5, 5) == {"loss_labels": 1.0}


@pytest.mark.slow
def test_trainer_applies_the_schedule_at_each_optimizer_step(tmp_path, tiny_shards):
    result = run_train(tmp_path / "run", tiny_shards, train__steps=6, loss__image_loss_start=3, train__checkpoint_every=6)
    assert result.returncode == 0, result.stderr[-2000:]
    weights = LossConfig().weights
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if "loss_labels" in row]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert sum(row["loss_image"] > 0 for row in rows[3:]) >= 2  # batches with image-text samples
    for row in rows:  # log_every=1: each row is one step; row["step"] - 1 is the step it trained
        with_image = row["step"] - 1 >= 3
        expected = sum(w * row[name] for name, w in weights.items() if name != "loss_image" or with_image)
        assert row["loss"] == pytest.approx(expected, rel=1e-5), row
