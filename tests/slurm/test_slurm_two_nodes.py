"""`ovdet submit train --nodes 2` on a real two-node Slurm cluster: one rank per node, resume, same losses.

The two nodes are two slurmd daemons on this host (``slurm_two_node_cluster``: ci-node1 and ci-node2,
1 CPU each), so ``--nodes 2 --gpus-per-node 0`` starts one CPU rank on each, and the ranks meet at
MASTER_ADDR=ci-node1 as they would on a real cluster. Which node ran which rank is recorded by a
task prolog (srun reads ``SLURM_TASK_PROLOG``; sbatch exports the submit environment into the job),
written by Slurm on the node itself: sacct needs slurmdbd, which the CI cluster lacks.

The reference is the same training with two ranks on one node, run on the one-node cluster before
the switch. The LR stays constant after warmup (``train.min_lr_ratio=1.0``), so the two-node run,
stopped at step 4 and extended to 6 by a second job that resumes from the checkpoint, must log the
losses of the uninterrupted 6 steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from slurm_jobs import read_metrics, submit_and_wait

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

RECORD_PLACEMENT = """#!/bin/sh
echo "$SLURM_JOB_ID $SLURM_PROCID $SLURM_NODEID $SLURMD_NODENAME" >> "$OVDET_TEST_PLACEMENT"
"""


def losses(train_dir: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in read_metrics(train_dir)]


@dataclass
class TwoNodeRun:
    run_dir: Path
    jobs: list[dict[str, str]]  # `scontrol show job` of the 4-step job, then of the resumed 6-step one
    placement: list[tuple[str, str, str, str]]  # (job id, SLURM_PROCID, SLURM_NODEID, SLURMD_NODENAME)


@pytest.fixture(scope="module")
def two_node_run(tiny_world, shards, one_node_run, slurm_two_node_cluster, slurm_job_env, tmp_path_factory):
    """4 steps on two nodes, then a second job to 6 steps that resumes from the first one's checkpoint.

    Takes ``one_node_run`` so that the reference runs before the cluster is switched to two nodes.
    """
    _, run_config = tiny_world
    root = tmp_path_factory.mktemp("two-nodes")
    prolog = root / "record-placement.sh"
    prolog.write_text(RECORD_PLACEMENT)
    prolog.chmod(0o755)
    placement = root / "placement.txt"
    env = {**slurm_job_env, "SLURM_TASK_PROLOG": str(prolog), "OVDET_TEST_PLACEMENT": str(placement)}
    run_dir = root / "run"
    resources = ["--nodes", "2", "--gpus-per-node", "0"]
    jobs = [submit_and_wait(run_config, run_dir, resources, shards, steps, env) for steps in (4, 6)]
    records = [tuple(line.split()) for line in placement.read_text().splitlines()]
    return TwoNodeRun(run_dir=run_dir, jobs=jobs, placement=records)


def test_two_node_job_runs_one_rank_on_each_node(two_node_run, slurm_two_node_cluster):
    node1, node2 = slurm_two_node_cluster
    for fields in two_node_run.jobs:
        assert fields["NodeList"] == "ci-node[1-2]" and fields["NumNodes"] == "2"
        assert fields["NumTasks"] == "2"
        ranks = sorted(record[1:] for record in two_node_run.placement if record[0] == fields["JobId"])
        assert ranks == [("0", "0", node1), ("1", "1", node2)], two_node_run.placement


def test_two_node_run_resumes_from_its_checkpoint_and_ends_with_a_final_model(two_node_run):
    train_dir = two_node_run.run_dir / "train"
    train_log = (train_dir / "logs" / "train.log").read_text(errors="replace")
    assert "at step 4" in train_log and "resumed from" in train_log, train_log[-3000:]
    assert (train_dir / "checkpoints" / "latest").read_text().strip() == "step-0000006"
    assert (train_dir / "final" / "model.safetensors").is_file()


def test_two_node_losses_equal_one_node_two_rank_losses(two_node_run, one_node_run):
    two_nodes, one_node = losses(two_node_run.run_dir / "train"), losses(one_node_run[0] / "train")
    assert [step for step, _ in one_node] == [2, 4, 6]
    assert [step for step, _ in two_nodes] == [2, 4, 6]
    # Bitwise equal here (ZeRO stage 0); 1e-6 is the two-rank resume tolerance of tests/train/test_train_resume.py.
    for (step, a), (_, b) in zip(two_nodes, one_node, strict=True):
        assert abs(a - b) <= 1e-6, (step, two_nodes, one_node)
