"""Preemption: SIGTERM or SIGUSR1 -> finish the step, checkpoint, exit 0 with the reason logged;
re-running resumes from that step."""

from __future__ import annotations

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


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_exits_zero_and_the_rerun_resumes(
    signal_number, tiny_shards, uninterrupted_run, tmp_path
):
    out = tmp_path / "train"
    process = start_train(out, tiny_shards, train__checkpoint_every=0)
    metrics_file = out / "metrics.jsonl"
    wait_until(lambda: metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 2, process)
    process.send_signal(signal_number)
    assert process.wait(timeout=120) == 0
    log = (tmp_path / "train.log").read_text()
    stopped_at = len(metrics(out))
    assert 2 <= stopped_at < 8, log
    assert f"preempted by {signal.Signals(signal_number).name}" in log
    assert latest_tag(out) == f"step-{stopped_at:07d}" and not (out / "final").exists()

    result = run_train(out, tiny_shards, train__checkpoint_every=0)
    assert result.returncode == 0, describe(result)
    assert f"at step {stopped_at}" in result.stderr
    assert [m["step"] for m in metrics(out)] == list(range(1, 9))
    assert max_abs_difference(final_weights(out), final_weights(uninterrupted_run)) == 0.0
