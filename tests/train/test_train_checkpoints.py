"""Checkpoint policy: resume none/PATH/latest, keep K, `latest` names a complete tag, every ZeRO
stage and precision loads back exactly, and loading never unpickles arbitrary objects."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from train_runs import checkpoint_tags, copy_run, final_weights, latest_tag, max_abs_difference, metrics

from ovdet.train.checkpoint import WeightsOnlyCheckpointEngine, write_checksums


def test_only_the_latest_k_checkpoints_are_kept(uninterrupted_run):
    assert checkpoint_tags(uninterrupted_run) == ["step-0000006", "step-0000008"]  # keep_checkpoints=2
    assert latest_tag(uninterrupted_run) == "step-0000008"


def test_resume_none_starts_over(uninterrupted_run, tiny_shards, tmp_path, in_process):
    out = copy_run(uninterrupted_run, tmp_path / "train")
    summary = in_process(out, tiny_shards, train__resume="none")
    assert summary["resumed_from"] == -1 and summary["step"] == 8
    assert [m["step"] for m in metrics(out)] == list(range(1, 9))
    assert max_abs_difference(final_weights(out), final_weights(uninterrupted_run)) == 0.0


def test_resume_path_loads_that_tag(uninterrupted_run, tiny_shards, tmp_path, in_process):
    out = copy_run(uninterrupted_run, tmp_path / "train")
    summary = in_process(out, tiny_shards, train__resume=str(out / "checkpoints" / "step-0000006"))
    assert summary["resumed_from"] == 6
    assert [m["step"] for m in metrics(out)] == list(range(1, 9))
    assert max_abs_difference(final_weights(out), final_weights(uninterrupted_run)) == 0.0


def test_incomplete_newer_tag_is_ignored(uninterrupted_run, tiny_shards, tmp_path, in_process):
    out = copy_run(uninterrupted_run, tmp_path / "train")
    partial = out / "checkpoints" / "step-0000010"  # a crash mid-save: files written, `latest` not
    partial.mkdir()
    (partial / "mp_rank_00_model_states.pt").write_bytes(b"truncated")
    summary = in_process(out, tiny_shards, train__steps=10)
    assert summary["resumed_from"] == 8 and summary["step"] == 10 and latest_tag(out) == "step-0000010"
    assert (out / "final" / "model.safetensors").exists()


def test_latest_naming_a_missing_tag_falls_back_to_the_newest_intact_one(
    uninterrupted_run, tiny_shards, tmp_path, in_process, caplog
):
    out = copy_run(uninterrupted_run, tmp_path / "train")
    (out / "checkpoints" / "latest").write_text("step-0000099")
    summary = in_process(out, tiny_shards, train__steps=10)
    assert summary["resumed_from"] == 8 and latest_tag(out) == "step-0000010"
    assert "step-0000099 does not exist" in caplog.text


@pytest.mark.parametrize(
    ("zero_stage", "precision"),
    [
        (0, "fp32"),
        (2, "fp32"),
        pytest.param(0, "bf16", marks=pytest.mark.slow),
        pytest.param(2, "bf16", marks=pytest.mark.slow),
    ],
)
def test_each_zero_stage_and_precision_resumes_exactly_with_weights_only_loads(
    zero_stage, precision, tiny_shards, tmp_path, in_process, monkeypatch
):
    options = {"train__zero_stage": zero_stage, "train__precision": precision, "train__steps": 4}
    reference = tmp_path / "reference"
    in_process(reference, tiny_shards, **options)
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "step-0000002", out / "checkpoints" / "step-0000002")
    (out / "checkpoints" / "latest").write_text("step-0000002")
    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    in_process(out, tiny_shards, **options)
    assert loads and all(flag is True for flag in loads)
    assert max_abs_difference(final_weights(out), final_weights(reference)) == 0.0


class RunsShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def write_malicious_checkpoint(path, marker) -> None:
    torch.save({"module": RunsShellCommand(marker), "weights": torch.zeros(2)}, path)


def test_loading_a_malicious_pickle_raises_instead_of_executing(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    write_malicious_checkpoint(path, marker)
    with pytest.raises(pickle.UnpicklingError):
        WeightsOnlyCheckpointEngine().load(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("file_name", ["mp_rank_00_model_states.pt", "rng-rank-00000.pt"])
def test_resuming_from_a_malicious_checkpoint_raises_instead_of_executing(
    file_name, uninterrupted_run, tiny_shards, tmp_path, in_process
):
    out = copy_run(uninterrupted_run, tmp_path / "train")
    marker = tmp_path / "pwned"
    write_malicious_checkpoint(out / "checkpoints" / "step-0000008" / file_name, marker)
    write_checksums(out / "checkpoints" / "step-0000008")  # as an attacker would, so the load is reached
    with pytest.raises(pickle.UnpicklingError):
        in_process(out, tiny_shards)
    assert not marker.exists()
