"""Non-finite losses: a step is skipped and counted; K in a row stop the run with a one-line error
(exit 2) and leave the last good checkpoint as it was."""

from __future__ import annotations

import hashlib

import pytest
import torch
from train_runs import DEMO_CONFIG, latest_tag, metrics, tiny_overrides

from ovdet import cli
from ovdet.train.task import DetectionTask


def poison_micro_steps(monkeypatch, is_poisoned) -> None:
    """Make DetectionTask return a NaN total on the micro-steps ``is_poisoned(index)`` picks."""
    real_forward = DetectionTask.forward
    calls = {"n": 0}

    def forward(self, batch):
        total, parts = real_forward(self, batch)
        calls["n"] += 1
        return (total * float("nan") if is_poisoned(calls["n"]) else total), parts

    monkeypatch.setattr(DetectionTask, "forward", forward)


def test_a_nonfinite_step_is_skipped_and_counted(tiny_shards, tmp_path, in_process, monkeypatch):
    poison_micro_steps(monkeypatch, lambda n: n == 3)
    summary = in_process(tmp_path / "train", tiny_shards)
    assert summary["stopped"] == "completed" and summary["step"] == 8
    logged = metrics(tmp_path / "train")
    assert [m["step"] for m in logged] == list(range(1, 9))
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in logged)
    assert logged[-1]["nonfinite_total"] == 1.0
    state = (tmp_path / "train" / "checkpoints" / "step-0000008" / "train_state.json").read_text()
    assert '"samples_consumed": 36' in state  # 9 batches of 4: the skipped batch is consumed, not retried


def tree_digest(folder) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def test_consecutive_nonfinite_steps_stop_with_one_line_and_keep_the_checkpoint(
    tiny_shards, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "train"
    digests = {}

    def poisoned_after_step_4(n):
        if n == 5:
            digests["before"] = tree_digest(out / "checkpoints" / "step-0000004")
        return n >= 5

    poison_micro_steps(monkeypatch, poisoned_after_step_4)
    argv = ["train", "--config", str(DEMO_CONFIG), "--out", str(out),
            *tiny_overrides(tiny_shards, train__max_nonfinite_steps=3)]  # fmt: skip
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DS_ACCELERATOR", "cpu")
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.delenv(name, raising=False)
        assert cli.main(argv) == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ovdet: error:")]
    assert len(error_lines) == 1 and "3 consecutive non-finite losses at step 4" in error_lines[0]
    assert latest_tag(out) == "step-0000004"
    assert tree_digest(out / "checkpoints" / "step-0000004") == digests["before"]
    assert not (out / "final").exists()
