"""Two nodes of one rank each, simulated on this machine: two ``torchrun`` agents meeting at a c10d
rendezvous on 127.0.0.1, or two ``deepspeed --no_ssh --node_rank N`` launchers, each "node" with its
own scratch folder (``TMPDIR``). The run equals one
node of two ranks, writes each checkpoint file once into the shared training folder, resumes on one
node of two ranks, and a training folder that one node sees as a node-local disk is refused."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest
from train_runs import (
    REPO,
    TWO_RANKS,
    clean_env,
    copy_run,
    describe,
    final_weights,
    free_port,
    max_abs_difference,
    metrics,
    node_argv,
    run_train,
)

from ovdet.train.checkpoint import checkpoint_problem

pytestmark = pytest.mark.slow

ONE_CHECKPOINT = {  # what one tag of a 2-rank ZeRO-2 run holds: each rank's files, once
    "checksums.json", "train_state.json", "mp_rank_00_model_states.pt", "rng-rank-00000.pt", "rng-rank-00001.pt",
    "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt",
}  # fmt: skip


def start_nodes(out, shards, tmp_path, launcher="torchrun", wrap=lambda node, argv: argv, **extra) -> list[subprocess.Popen]:
    endpoint = f"127.0.0.1:{free_port()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    processes = []
    for node in (0, 1):
        scratch = tmp_path / f"node{node}-scratch"
        scratch.mkdir()
        argv = wrap(node, node_argv(out, shards, node, endpoint, launcher, **TWO_RANKS, **extra))
        log = open(tmp_path / f"node{node}.log", "w")
        processes.append(subprocess.Popen(argv, env=clean_env() | {"TMPDIR": str(scratch)}, cwd=REPO, stdout=log,
                                          stderr=subprocess.STDOUT))  # fmt: skip
    return processes


def node_logs(tmp_path) -> str:
    return "\n".join((tmp_path / f"node{node}.log").read_text()[-3000:] for node in (0, 1))


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_two_nodes_train_like_one_node_of_two_ranks_and_write_each_checkpoint_file_once(
    tiny_shards, two_rank_run, tmp_path, launcher
):
    out = tmp_path / "shared" / "train"
    codes = [process.wait(timeout=600) for process in start_nodes(out, tiny_shards, tmp_path, launcher)]
    assert codes == [0, 0], node_logs(tmp_path)
    assert [m["step"] for m in metrics(out)] == list(range(1, 9))  # logged once, by rank 0
    for ours, reference in zip(metrics(out), metrics(two_rank_run), strict=True):
        assert abs(ours["loss"] - reference["loss"]) <= 1e-5
    assert max_abs_difference(final_weights(out), final_weights(two_rank_run)) <= 1e-6
    for tag in ("step-0000006", "step-0000008"):
        assert {p.name for p in (out / "checkpoints" / tag).iterdir()} == ONE_CHECKPOINT
        assert checkpoint_problem(out / "checkpoints" / tag) is None
    for node in (0, 1):  # nothing of the run lands on a node's own disk
        stray = [p for p in (tmp_path / f"node{node}-scratch").rglob("*")
                 if p.suffix == ".pt" or p.name in ("latest", "metrics.jsonl", "model.safetensors")]  # fmt: skip
        assert stray == []

    if launcher == "torchrun":
        return  # the deepspeed launcher's run resumes below; both wrote the same files
    resumed = copy_run(out, tmp_path / "resumed")  # onto one node of two ranks, from step 6
    shutil.rmtree(resumed / "checkpoints" / "step-0000008")
    (resumed / "checkpoints" / "latest").write_text("step-0000006")
    result = run_train(resumed, tiny_shards, "deepspeed", **TWO_RANKS)
    assert result.returncode == 0 and "at step 6" in result.stderr, describe(result)
    assert max_abs_difference(final_weights(resumed), final_weights(two_rank_run)) <= 1e-6


def test_a_training_folder_that_is_node_local_on_one_node_is_refused_by_every_rank(tiny_shards, tmp_path):
    """Node 1 mounts its own disk (a tmpfs in a private mount namespace) where node 0's shared
    folder is: same path, other files."""
    shared = tmp_path / "shared"
    shared.mkdir()

    def on_a_local_disk(node: int, argv: list[str]) -> list[str]:
        if node == 0:
            return argv
        script = f"mount -t tmpfs tmpfs {shlex.quote(str(shared))} || exit 99; exec {shlex.join(argv)}"
        return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script]

    processes = start_nodes(shared / "train", tiny_shards, tmp_path, wrap=on_a_local_disk, train__shared_folder_wait_s=2)
    codes = [process.wait(timeout=600) for process in processes]
    logs = node_logs(tmp_path)
    assert all(code not in (0, 99) for code in codes), logs
    refusal = "1 of 2 ranks do not see the files rank 0 writes there; the training folder (--out) must be on storage"
    assert all(refusal in (tmp_path / f"node{node}.log").read_text() for node in (0, 1)), logs
    assert not (shared / "train" / "checkpoints").exists()
