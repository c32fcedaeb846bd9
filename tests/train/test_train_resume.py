"""A run killed with SIGKILL after its second checkpoint, re-run with the same command, ends with
the weights of an uninterrupted run: bitwise on one CPU rank, within 1e-6 on two (ZeRO-2, one rank
killed). A rank that dies stops the job in seconds; one that hangs, after train.collective_timeout_s."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from train_runs import (
    TWO_RANKS,
    describe,
    final_weights,
    latest_tag,
    max_abs_difference,
    metrics,
    rank_processes,
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
def test_one_killed_rank_stops_a_two_rank_zero2_job_within_seconds_and_the_rerun_resumes_within_1e_6(
    tiny_shards, two_rank_run, tmp_path
):
    """SIGKILL of rank 1 mid-run: rank 0's next collective fails at once (the dead rank's sockets
    close) and the deepspeed launcher stops the job non-zero; nothing waits for train.collective_timeout_s."""
    options, reference = TWO_RANKS, two_rank_run
    out = tmp_path / "train"
    process = start_train(out, tiny_shards, "deepspeed", **options)
    wait_until(lambda: latest_tag(out) == "step-0000004" and len(rank_processes(out)) == 2, process)
    survivor = rank_processes(out)[0]
    os.kill(rank_processes(out)[1], signal.SIGKILL)
    killed_at = time.monotonic()
    process.wait(timeout=60)
    assert process.returncode != 0 and time.monotonic() - killed_at < 30
    assert not Path(f"/proc/{survivor}").exists() and not (out / "final").exists()
    result = run_train(out, tiny_shards, "deepspeed", **options)
    assert result.returncode == 0 and "at step 4" in result.stderr, describe(result)
    assert max_abs_difference(final_weights(out), final_weights(reference)) <= 1e-6
    assert_same_metrics(out, reference, tolerance=1e-5)


@pytest.mark.slow
def test_a_hung_rank_makes_the_other_time_out_after_collective_timeout_s(tiny_shards, tmp_path):
    """SIGSTOP of rank 1 (a frozen process or a vanished node: no socket closes): rank 0 raises
    from its collective after train.collective_timeout_s instead of waiting forever."""
    out = tmp_path / "train"
    process = start_train(out, tiny_shards, "torchrun", train__steps=400, train__collective_timeout_s=8)
    wait_until(lambda: latest_tag(out) == "step-0000002" and len(rank_processes(out)) == 2, process)
    ranks = rank_processes(out)
    os.kill(ranks[1], signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        while Path(f"/proc/{ranks[0]}").exists() and process_state(ranks[0]) != "Z":
            assert time.monotonic() - stopped_at < 40, "rank 0 still waits 40 s after its peer froze"
            time.sleep(0.1)
        waited = time.monotonic() - stopped_at
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        os.kill(ranks[1], signal.SIGKILL)
        process.wait()
    assert 8 <= waited < 40
    assert "Timed out waiting 8000ms" in (out.parent / "train.log").read_text()


def process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
