"""ovdet.runs: the one description of a run folder, and finding a run from any folder inside it."""

from pathlib import Path

import pytest

from ovdet.errors import OvdetError
from ovdet.runs import RunPaths, TrainPaths, find_model_dir, locate_run


def write_model(folder: Path, spec: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    if spec:
        (folder / "model_spec.json").write_text('{"spec": {}}')
    return folder


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run folder as `ovdet demo` leaves it (the files that matter for discovery)."""
    run = tmp_path / "run"
    write_model(run / "train" / "final")
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text("{}")
    return run


def test_run_paths_name_every_stage_folder():
    run = RunPaths("runs/demo")
    assert run.run_dir == Path("runs/demo")
    assert run.synth == Path("runs/demo/synth") and run.synth_vocab == Path("runs/demo/synth/vocab.yaml")
    assert run.shards == Path("runs/demo/shards") and run.manifest == Path("runs/demo/shards/manifest.json")
    assert run.train == Path("runs/demo/train") and run.final_model == Path("runs/demo/train/final")
    assert run.eval == Path("runs/demo/eval") and run.metrics == Path("runs/demo/eval/metrics.json")
    assert run.publish("ovdet-demo") == Path("runs/demo/publish/ovdet-demo")
    assert run.slurm == Path("runs/demo/slurm") and run.demo_log == Path("runs/demo/logs/demo.log")
    assert run.summary == Path("runs/demo/metrics.json") and run.report == Path("runs/demo/report.md")


def test_train_paths_name_the_training_folder_files():
    train = TrainPaths("out/train")
    assert train.final_model == Path("out/train/final") and train.config == Path("out/train/config.json")
    assert train.log == Path("out/train/logs/train.log") and train.checkpoints == Path("out/train/checkpoints")
    assert TrainPaths(RunPaths("r").train).final_model == RunPaths("r").final_model


@pytest.mark.parametrize("given", ["run", "train", "final"])
def test_model_training_and_run_folders_locate_the_same_run(run_dir, given):
    folder = {"run": run_dir, "train": run_dir / "train", "final": run_dir / "train" / "final"}[given]
    found = locate_run(folder)
    assert found.model_dir == run_dir / "train" / "final" and found.train_dir == run_dir / "train"
    assert found.run == RunPaths(run_dir) and found.home == run_dir
    assert found.publish("name") == run_dir / "publish" / "name"


def test_a_training_folder_outside_a_run_is_its_own_home(tmp_path):
    write_model(tmp_path / "train" / "final")
    found = locate_run(tmp_path / "train")
    assert found.run is None and found.home == tmp_path / "train"


def test_a_model_folder_not_named_final_has_no_training_folder(tmp_path):
    model = write_model(tmp_path / "exported")
    found = locate_run(model)
    assert (found.model_dir, found.train_dir, found.run, found.home) == (model, None, None, model)


def test_deepspeed_checkpoint_and_folders_without_a_model_are_refused(tmp_path):
    (tmp_path / "train_state.json").write_text("{}")
    with pytest.raises(OvdetError, match="DeepSpeed training checkpoint"):
        locate_run(tmp_path)
    with pytest.raises(OvdetError, match="not a model, training or run folder"):
        locate_run(tmp_path / "empty")
    write_model(tmp_path / "nospec", spec=False)
    with pytest.raises(OvdetError, match="without model_spec.json"):
        locate_run(tmp_path / "nospec")


def test_find_model_dir_accepts_a_model_or_training_folder_only(run_dir):
    assert find_model_dir(run_dir / "train" / "final") == run_dir / "train" / "final"
    assert find_model_dir(run_dir / "train") == run_dir / "train" / "final"
    assert find_model_dir(run_dir) is None
