"""`ovdet submit` renders the slurm/ templates into runnable sbatch scripts (no cluster needed)."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
import yaml

from ovdet import submit
from ovdet.errors import OvdetError
from ovdet.resources import slurm_template_dir
from ovdet.submit import Resources, load_run_spec, render_job


@pytest.fixture
def run_config(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "runs" / "exp1"),
        "train": {"steps": 10},
        "eval": {"gt": "/data/eval.json", "vocab": "/data/vocab.yaml"},
    }))
    return path


def render(stage: str, config: Path, resources: Resources, overrides=(), **extra) -> str:
    return render_job(stage, load_run_spec(str(config), list(overrides), **extra), resources).script


def directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_train_job_has_one_task_per_gpu_and_asks_for_the_gpus(run_config):
    script = render("train", run_config, Resources(nodes=2, gpus_per_node=4, partition="gpu", time="01:00:00",
                                                    cpus_per_task=8, account="proj"))
    lines = directives(script)
    for expected in ("--nodes=2", "--ntasks=8", "--ntasks-per-node=4", "--gres=gpu:4", "--cpus-per-task=8",
                     "--partition=gpu", "--time=01:00:00", "--account=proj", "--signal=USR1@120", "--requeue",
                     "--job-name=exp1-train"):
        assert expected in lines
    assert "DS_ACCELERATOR" not in script.split("# <<< settings")[0]
    assert 'srun --kill-on-bad-exit=1 "$OVDET" train --config "$OVDET_CONFIG" "${OVDET_OVERRIDES[@]}"' in script


def test_cpu_training_sets_ds_accelerator_and_asks_for_no_gres(run_config):
    script = render("train", run_config, Resources(nodes=3, gpus_per_node=0))
    lines = directives(script)
    assert "--ntasks=3" in lines and "--ntasks-per-node=1" in lines
    assert not any(line.startswith("--gres") for line in lines)
    assert "\nexport DS_ACCELERATOR=cpu" in script


def test_ntasks_sets_the_number_of_training_ranks(run_config):
    lines = directives(render("train", run_config, Resources(nodes=2, ntasks=4)))
    assert "--ntasks=4" in lines and "--ntasks-per-node=2" in lines
    with pytest.raises(OvdetError, match="multiple of --nodes"):
        render("train", run_config, Resources(nodes=2, ntasks=3))


def test_logs_and_job_name_come_from_run_dir(run_config, tmp_path):
    run = load_run_spec(str(run_config), [])
    job = render_job("train", run, Resources())
    run_dir = tmp_path / "runs" / "exp1"
    assert job.name == "exp1-train"
    assert job.path == run_dir / "slurm" / "exp1-train.sbatch"
    assert f"--output={run_dir}/slurm/%x-%j.out" in directives(job.script)
    assert f"--error={run_dir}/slurm/%x-%j.err" in directives(job.script)
    assert f"--chdir={Path.cwd()}" in directives(job.script)


def test_run_dir_option_and_override_move_the_run(run_config, tmp_path):
    assert load_run_spec(str(run_config), [], run_dir=str(tmp_path / "other")).run_dir == tmp_path / "other"
    assert load_run_spec(str(run_config), [f"run_dir={tmp_path / 'o2'}"]).run_dir == tmp_path / "o2"


def test_overrides_reach_the_job_exactly_as_given(run_config, tmp_path):
    overrides = ["train.steps=5", "loader.shard_dirs=[/data/a b, /data/c]", "eval.prompt_templates=['a {}.']"]
    script = render("train", run_config, Resources(), overrides)
    settings = script.split("# >>> settings")[1].split("# <<< settings")[0].split("\n", 1)[1]
    printed = subprocess.run(["bash", "-c", settings + '\nprintf "%s\\n" "${OVDET_OVERRIDES[@]}"'],
                             capture_output=True, text=True, check=True).stdout
    assert printed.splitlines() == overrides


def test_bad_override_fails_at_submit_time(run_config):
    with pytest.raises(OvdetError, match="unknown key"):
        load_run_spec(str(run_config), ["train.stepz=5"])


@pytest.mark.parametrize("stage", submit.STAGES)
def test_rendered_scripts_are_valid_bash_with_header_before_commands(run_config, stage, tmp_path):
    script = render(stage, run_config, Resources(nodes=2, gpus_per_node=2), repo_id="org/name")
    path = tmp_path / f"{stage}.sbatch"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))


def test_shard_job_runs_one_ray_node_per_slurm_node(run_config, tmp_path):
    script = render("shard", run_config, Resources(nodes=4, gpus_per_node=8, cpus_per_task=32))
    lines = directives(script)
    assert "--nodes=4" in lines and "--ntasks-per-node=1" in lines and "--cpus-per-task=32" in lines
    assert not any(line.startswith("--gres") for line in lines)
    assert "ray start --head --block" in script
    assert f"SHARD_DIR={tmp_path / 'runs' / 'exp1' / 'shards'}" in script
    assert '"$OVDET" shard --config "$OVDET_CONFIG" --out "$SHARD_DIR" --ray-address "$RAY_ADDRESS"' in script


def test_eval_and_publish_are_single_task_jobs(run_config, tmp_path):
    run_dir = tmp_path / "runs" / "exp1"
    evaluation = render("eval", run_config, Resources(nodes=4, gpus_per_node=8))
    assert {"--nodes=1", "--ntasks=1", "--gres=gpu:1"} <= set(directives(evaluation))
    assert f"MODEL_DIR={run_dir / 'train' / 'final'}" in evaluation and f"EVAL_DIR={run_dir / 'eval'}" in evaluation
    publish = render("publish", run_config, Resources(nodes=4, gpus_per_node=8), repo_id="org/name", upload=False)
    assert {"--nodes=1", "--ntasks=1"} <= set(directives(publish))
    assert "REPO_ID=org/name" in publish and "PUBLISH_ARGS=(--dry-run)" in publish
    assert f"RUN_DIR={run_dir}" in publish


class FakeSbatch:
    """Stands in for ``subprocess.run(["sbatch", ...])``; hands out job ids 100, 101, ..."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, command, **kwargs):
        self.calls.append(command)
        return subprocess.CompletedProcess(command, 0, stdout=f"{100 + len(self.calls) - 1};cluster\n", stderr="")


@pytest.fixture
def fake_sbatch(monkeypatch):
    fake = FakeSbatch()
    monkeypatch.setattr(submit.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(submit.subprocess, "run", fake)
    return fake


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ovdet")
    submit.add_submit_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.func is submit.cmd_submit
    return args.func(args)


def test_pipeline_chains_shard_train_eval_publish_with_afterok(run_config, fake_sbatch, capsys, tmp_path):
    code = run_cli(["submit", "pipeline", "--config", str(run_config), "--nodes", "2", "--gpus-per-node", "8",
                    "--partition", "gpu", "--repo-id", "org/exp1", "train.steps=50"])
    assert code == 0
    scripts = [Path(call[-1]) for call in fake_sbatch.calls]
    assert [p.name for p in scripts] == [f"exp1-{s}.sbatch" for s in ("shard", "train", "eval", "publish")]
    assert all(p.parent == tmp_path / "runs" / "exp1" / "slurm" and p.is_file() for p in scripts)
    assert fake_sbatch.calls[0][:2] == ["sbatch", "--parsable"] and "--dependency" not in " ".join(fake_sbatch.calls[0])
    for previous, call in zip((100, 101, 102), fake_sbatch.calls[1:], strict=True):
        assert f"--dependency=afterok:{previous}" in call and "--kill-on-invalid-dep=yes" in call
    assert capsys.readouterr().out.splitlines() == ["shard 100", "train 101", "eval 102", "publish 103"]
    assert "train.steps=50" in scripts[1].read_text()


def test_single_stage_prints_only_the_job_id(run_config, fake_sbatch, capsys):
    assert run_cli(["submit", "train", "--config", str(run_config)]) == 0
    assert capsys.readouterr().out == "100\n"
    assert len(fake_sbatch.calls) == 1


def test_dry_run_prints_the_scripts_and_submits_nothing(run_config, monkeypatch, capsys, tmp_path):
    def no_sbatch(*args, **kwargs):
        raise AssertionError("sbatch must not run in a dry run")

    monkeypatch.setattr(submit.subprocess, "run", no_sbatch)
    assert run_cli(["submit", "pipeline", "--config", str(run_config), "--repo-id", "org/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 4
    assert "--dependency=afterok:<train>" in out
    assert not (tmp_path / "runs" / "exp1" / "slurm").exists()


def test_missing_sbatch_is_a_one_line_user_error(run_config, monkeypatch, capsys):
    monkeypatch.setattr(submit.shutil, "which", lambda name: None)
    with pytest.raises(OvdetError, match="sbatch not found") as error:
        run_cli(["submit", "train", "--config", str(run_config)])
    assert "\n" not in str(error.value)
    assert submit.main(["train", "--config", str(run_config)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_sbatch_rejection_is_a_user_error_with_its_reason(run_config, monkeypatch):
    monkeypatch.setattr(submit.shutil, "which", lambda name: "/usr/bin/sbatch")
    monkeypatch.setattr(submit.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(
        command, 1, stdout="", stderr="sbatch: error: invalid partition specified: gpu\n"))
    with pytest.raises(OvdetError, match="invalid partition specified: gpu"):
        run_cli(["submit", "train", "--config", str(run_config), "--partition", "gpu"])


def test_stages_that_would_fail_in_the_queue_are_refused(run_config, tmp_path, fake_sbatch):
    with pytest.raises(OvdetError, match="--repo-id"):
        run_cli(["submit", "publish", "--config", str(run_config)])
    with pytest.raises(OvdetError, match="eval.gt and eval.vocab"):
        run_cli(["submit", "eval", "--config", str(run_config), "eval.gt="])
    data_config = tmp_path / "data.yaml"
    data_config.write_text(yaml.safe_dump({"root": str(tmp_path), "sources": []}))
    with pytest.raises(OvdetError, match="can only be sharded"):
        run_cli(["submit", "train", "--config", str(data_config)])
    assert fake_sbatch.calls == []


def test_a_data_config_can_be_sharded_into_the_given_run_dir(tmp_path, fake_sbatch):
    data_config = tmp_path / "data.yaml"
    data_config.write_text(yaml.safe_dump({"root": str(tmp_path), "sources": [], "samples_per_shard": 16}))
    assert run_cli(["submit", "shard", "--config", str(data_config), "--run-dir", str(tmp_path / "r")]) == 0
    script = Path(fake_sbatch.calls[0][-1]).read_text()
    assert f"SHARD_DIR={tmp_path / 'r' / 'shards'}" in script


def test_templates_are_documented_at_the_top():
    for name in submit.TEMPLATES.values():
        head = (slurm_template_dir() / name).read_text().splitlines()[:12]
        text = "\n".join(head)
        assert head[0] == "#!/bin/bash" and "Expects" in (slurm_template_dir() / name).read_text()
        assert f"slurm/{name}" in text
