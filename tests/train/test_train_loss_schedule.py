"""The trainer applies the image-level loss schedule (``scheduled_weights``, tested in
tests/losses/test_registry.py) at each optimizer step."""

from __future__ import annotations

import json

import pytest
from train_runs import run_train

from ovdet.config import LossConfig


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
        # the demo model has no DFL box head and no quality head: those terms are not computed
        assert {name for name in weights if name not in row} == {"loss_dfl", "loss_quality"}
        logged = {name: w for name, w in weights.items() if name in row}
        expected = sum(w * row[name] for name, w in logged.items() if name != "loss_image" or with_image)
        assert row["loss"] == pytest.approx(expected, rel=1e-5), row
