"""A run killed with SIGKILL after its second checkpoint, re-run with the same command, ends with
the weights of an uninterrupted run: bitwise on one CPU rank, within 1e-6 on two (ZeRO-2)."""

from __future__ import annotations

import os
import signal

import pytest
from train_runs import (
    describe,
    final_weights,
    latest_tag,
    max_abs_difference,
    metrics,
    run_train,
    start_train,
    wait_until,
)


def kill_after_second_checkpoint(out, shards, launcher="single", **extra) -> None:
    process = start_train(out, shards, launcher, **extra)
    wait_until(lambda: latest_tag(out) == "step-0000004", process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "final").exists()


def assert_same_metrics(resumed, reference, tolerance: float) -> None:
    resumed_losses = [(m["step"], m["loss"]) for m in metrics(resumed)]
    reference_losses = [(m["step"], m["loss"]) for m in metrics(reference)]
    assert [s for s, _ in resumed_losses] == [s for s, _ in reference_losses]
    for (_, a), (_, b) in zip(resumed_losses, reference_losses, strict=True):
        assert abs(a - b) <= tolerance


@pytest.mark.slow
def test_killed_run_resumes_bitwise_on_one_rank(tiny_shards, uninterrupted_run, tmp_path):
    out = tmp_path / "train"
    kill_after_second_checkpoint(out, tiny_shards)
    result = run_train(out, tiny_shards)
    assert result.returncode == 0, describe(result)
    assert "resumed from" in result.stderr and "at step 4" in result.stderr
    resumed, reference = final_weights(out), final_weights(uninterrupted_run)
    assert all(torch_equal(resumed[k], reference[k]) for k in reference), max_abs_difference(
        resumed, reference
    )
    assert_same_metrics(out, uninterrupted_run, tolerance=0.0)


def torch_equal(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())


@pytest.mark.slow
def test_killed_two_rank_zero2_run_resumes_within_1e_6(tiny_shards, tmp_path):
    reference = tmp_path / "reference"
    result = run_train(reference, tiny_shards, "deepspeed", train__zero_stage=2, loader__batch_size=2)
    assert result.returncode == 0, describe(result)
    out = tmp_path / "train"
    kill_after_second_checkpoint(out, tiny_shards, "deepspeed", train__zero_stage=2, loader__batch_size=2)
    result = run_train(out, tiny_shards, "deepspeed", train__zero_stage=2, loader__batch_size=2)
    assert result.returncode == 0, describe(result)
    assert max_abs_difference(final_weights(out), final_weights(reference)) <= 1e-6
    assert_same_metrics(out, reference, tolerance=1e-5)
