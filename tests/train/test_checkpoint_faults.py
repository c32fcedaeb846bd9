"""Checkpoint faults: a tag truncated or corrupted after its save is caught by its checksums and
skipped for the newest older tag that checks out (one warning line each); a disk that fills
mid-save is one error line, the partial tag is removed and the previous checkpoint stays loadable."""

from __future__ import annotations

import logging
import shlex
import subprocess

import pytest
from train_runs import (
    REPO,
    clean_env,
    copy_run,
    describe,
    final_weights,
    latest_tag,
    max_abs_difference,
    run_train,
    train_argv,
)

from ovdet.errors import OvdetError
from ovdet.train.checkpoint import CHECKSUMS, checkpoint_problem, resolve_resume, write_checksums


def fake_tag(ckpt_dir, step: int, checksums: bool = True):
    """A tag folder with two small files (and their checksums), the shape resume looks at."""
    tag_dir = ckpt_dir / f"step-{step:07d}"
    tag_dir.mkdir(parents=True)
    (tag_dir / "mp_rank_00_model_states.pt").write_bytes(bytes(range(256)) * 8)
    (tag_dir / "train_state.json").write_text(f'{{"step": {step}}}')
    if checksums:
        write_checksums(tag_dir)
    return tag_dir


def corrupt(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":  # same size, one bit of difference: only the hash sees it
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :])
    else:
        path.unlink()


@pytest.mark.parametrize(
    ("how", "reason"),
    [("truncated", "has 1024 bytes, 2048 were saved"), ("flipped", "does not match its SHA-256"),
     ("deleted", "mp_rank_00_model_states.pt is missing")],  # fmt: skip
)
def test_checkpoint_problem_names_the_file_and_what_is_wrong(tmp_path, how, reason):
    tag_dir = fake_tag(tmp_path, 2)
    assert checkpoint_problem(tag_dir) is None
    corrupt(tag_dir / "mp_rank_00_model_states.pt", how)
    assert reason in checkpoint_problem(tag_dir)


def test_a_tag_without_checksums_or_with_a_broken_checksums_file_is_not_trusted(tmp_path):
    assert "has no checksums.json" in checkpoint_problem(fake_tag(tmp_path, 2, checksums=False))
    tag_dir = fake_tag(tmp_path, 4)
    (tag_dir / CHECKSUMS).write_text("{")
    assert "checksums.json is unreadable" in checkpoint_problem(tag_dir)
    assert checkpoint_problem(tmp_path / "step-0000006") == "does not exist"


def test_latest_falls_back_over_every_bad_tag_to_the_newest_good_one_with_a_warning_line_each(tmp_path, caplog):
    fake_tag(tmp_path, 2)
    fake_tag(tmp_path, 4)
    corrupt(fake_tag(tmp_path, 6) / "train_state.json", "flipped")
    fake_tag(tmp_path, 8, checksums=False)  # a save that died before its checksums
    fake_tag(tmp_path, 10)  # newer than `latest` (left by a run resumed from an older tag): never loaded
    (tmp_path / "latest").write_text("step-0000008")
    caplog.set_level(logging.WARNING)
    assert resolve_resume(tmp_path, "latest") == (str(tmp_path), "step-0000004")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split()[1] for w in warnings] == [str(tmp_path / "step-0000008"), str(tmp_path / "step-0000006")]
    assert all("\n" not in w for w in warnings)


def test_no_intact_checkpoint_is_a_user_error_that_says_how_to_start_over(tmp_path):
    corrupt(fake_tag(tmp_path, 2) / "train_state.json", "truncated")
    (tmp_path / "latest").write_text("step-0000002")
    with pytest.raises(OvdetError, match=r"no intact checkpoint .*train.resume=none"):
        resolve_resume(tmp_path, "latest")


def test_a_named_tag_is_checked_and_refused_if_corrupt_but_loaded_with_a_warning_if_it_has_no_checksums(
    tmp_path, caplog
):
    bad = fake_tag(tmp_path, 2)
    corrupt(bad / "mp_rank_00_model_states.pt", "truncated")
    with pytest.raises(OvdetError, match="step-0000002: mp_rank_00_model_states.pt has 1024 bytes"):
        resolve_resume(tmp_path, str(bad))
    unchecked = fake_tag(tmp_path, 4, checksums=False)
    assert resolve_resume(tmp_path, str(unchecked)) == (str(tmp_path), "step-0000004")
    assert "loading it unchecked" in caplog.text


def test_truncated_latest_checkpoint_resumes_from_the_previous_one_and_ends_bitwise_equal(
    uninterrupted_run, tiny_shards, tmp_path, in_process, caplog
):
    out = copy_run(uninterrupted_run, tmp_path / "train")
    corrupt(out / "checkpoints" / "step-0000008" / "mp_rank_00_model_states.pt", "truncated")
    caplog.set_level(logging.WARNING)
    summary = in_process(out, tiny_shards)
    assert summary["resumed_from"] == 6 and summary["step"] == 8
    assert "step-0000008 mp_rank_00_model_states.pt has" in caplog.text
    assert max_abs_difference(final_weights(out), final_weights(uninterrupted_run)) == 0.0
    assert checkpoint_problem(out / "checkpoints" / "step-0000008") is None  # saved again, whole


@pytest.mark.slow
def test_disk_filling_during_a_save_is_one_error_line_and_the_previous_checkpoint_resumes_exactly(
    tiny_shards, uninterrupted_run, tmp_path
):
    """The run's folder is on a 150 MiB tmpfs (in a private mount namespace): the first checkpoint
    (about 97 MiB: the tiny model with its MiniLM text tower) fits, the second does not."""
    disk, kept = tmp_path / "small-disk", tmp_path / "kept"
    disk.mkdir()
    train = shlex.join(train_argv(disk / "train", tiny_shards))
    script = (f"mount -t tmpfs -o size=150m tmpfs {disk} || exit 99; {train}; status=$?; "
              f"cp -a {disk}/train {kept}; exit $status")  # fmt: skip
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                            env=clean_env(), cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2, describe(result)
    error = result.stderr.strip().splitlines()[-1]
    assert f"{disk / 'train' / 'checkpoints' / 'step-0000004'}: checkpoint save failed" in error, describe(result)
    assert "partial tag removed, `latest` still names step-0000002" in error
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["latest", "step-0000002"]
    assert checkpoint_problem(kept / "checkpoints" / "step-0000002") is None
    assert latest_tag(kept) == "step-0000002"
    resumed = run_train(kept, tiny_shards)
    assert resumed.returncode == 0 and "at step 2" in resumed.stderr, describe(resumed)
    assert max_abs_difference(final_weights(kept), final_weights(uninterrupted_run)) == 0.0
