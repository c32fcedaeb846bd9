"""Data parallelism: 2 ranks x batch b follow the loss curve of 1 rank x batch 2b (the logged loss
is the mean over ranks), under the deepspeed launcher with ZeRO-0 and ZeRO-2.

The references are the session's runs (tests/train/conftest.py): ``uninterrupted_run`` is 1 rank x
batch 4, ``two_rank_run`` is 2 ranks x batch 2 with ZeRO-2; checkpoints do not change what they
train. torchrun's 2 ranks are held to the deepspeed launcher's within 1e-6 in test_multi_node.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from train_runs import TWO_RANKS, describe, final_weights, max_abs_difference, metrics, run_train

TOLERANCE = 1e-4  # relative; the ranks encode text subsets, so float sums differ slightly
# Every term is a per-rank sum divided by an all-reduced count (positives, caption positives).
GLOBALLY_NORMALIZED = ("loss_labels", "loss_l1", "loss_smooth_l1", "loss_iou", "loss_giou", "loss_diou", "loss_ciou",
                       "loss_contrastive", "loss_image")


@pytest.fixture(scope="module")
def one_rank_batch_4(uninterrupted_run):
    assert run_config(uninterrupted_run)["loader"]["batch_size"] == 4
    return uninterrupted_run


def run_config(out) -> dict:
    return json.loads((out / "config.json").read_text())


@pytest.fixture(scope="module", params=["zero0", "zero2"])
def two_ranks_batch_2(request, tiny_shards, two_rank_run, tmp_path_factory):
    if request.param == "zero2":
        assert run_config(two_rank_run)["train"]["zero_stage"] == 2
        assert run_config(two_rank_run)["loader"]["batch_size"] == 2
        return two_rank_run
    out = tmp_path_factory.mktemp(request.param) / "train"
    result = run_train(out, tiny_shards, "deepspeed", **{**TWO_RANKS, "train__zero_stage": 0},
                       train__checkpoint_every=0)  # fmt: skip
    assert result.returncode == 0, describe(result)
    return out


def is_close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(1.0, abs(b))


@pytest.mark.slow
def test_two_ranks_log_the_global_batch_loss_of_one_rank(two_ranks_batch_2, one_rank_batch_4):
    """Step 1 (same weights): every term normalized by the global box count matches, so the
    ranks split the global batch exactly and the trainer logs the mean over ranks."""
    first_two, first_one = metrics(two_ranks_batch_2)[0], metrics(one_rank_batch_4)[0]
    assert [m["step"] for m in metrics(two_ranks_batch_2)] == list(range(1, 9))
    for name in GLOBALLY_NORMALIZED:
        assert is_close(first_two[name], first_one[name]), (name, first_two[name], first_one[name])


@pytest.mark.slow
def test_two_ranks_follow_the_loss_curve_of_one_rank(two_ranks_batch_2, one_rank_batch_4):
    for a, b in zip(metrics(two_ranks_batch_2), metrics(one_rank_batch_4), strict=True):
        assert is_close(a["loss"], b["loss"]), (a["step"], a["loss"], b["loss"])
    assert max_abs_difference(final_weights(two_ranks_batch_2), final_weights(one_rank_batch_4)) < 1e-3


def shm_buffers() -> set[str]:
    return {path.name for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*")}


@pytest.mark.slow
def test_two_ranks_leave_no_shared_memory_behind(tiny_shards, tmp_path):
    """DeepSpeed's CPU all-reduce maps a ~69 MB /dev/shm workspace per rank and never unlinks it;
    300 runs' files once filled a CI machine's memory. ``dist.init_distributed`` unlinks them."""
    before = shm_buffers()
    result = run_train(tmp_path / "train", tiny_shards, "deepspeed", **TWO_RANKS, train__steps=2,
                       train__checkpoint_every=0)  # fmt: skip
    assert result.returncode == 0, describe(result)
    assert shm_buffers() - before == set()
