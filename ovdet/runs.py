"""A run folder's layout, defined once: where each stage writes and where the next one reads.

    runs/demo/                 RunPaths("runs/demo")
      demo_config.json         .demo_config   the demo's config; a re-run with another one is refused
      synth/                   .synth         the synthetic world (``ovdet synth``); .synth_vocab
      shards/                  .shards        tar shards (``ovdet shard``); .manifest
      train/                   .train         the training folder (``ovdet train``), see TrainPaths
        final/                 .final_model   the model folder: model.safetensors + model_spec.json
      eval/                    .eval          ``ovdet eval``: .metrics (metrics.json), report.md
      publish/NAME/            .publish(NAME) the Hub export (``ovdet publish``)
      slurm/                   .slurm         rendered sbatch scripts and job logs (``ovdet submit``)
      logs/demo.log            .demo_log
      metrics.json, report.md  .summary, .report: the demo's headline

``locate_run`` goes the other way: from a model, training or run folder to the pieces around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ovdet.data.shards import MANIFEST
from ovdet.errors import OvdetError

MODEL_WEIGHTS = "model.safetensors"
MODEL_SPEC = "model_spec.json"
CHECKPOINT_STATE = "train_state.json"  # in every DeepSpeed checkpoint tag folder (ovdet.train.checkpoint)


@dataclass(frozen=True)
class TrainPaths:
    """A training folder (``ovdet train --out``, default ``RUN_DIR/train``)."""

    train_dir: Path

    def __post_init__(self):
        object.__setattr__(self, "train_dir", Path(self.train_dir))

    @property
    def final_model(self) -> Path:
        """The model folder training writes when it completes."""
        return self.train_dir / "final"

    @property
    def config(self) -> Path:
        """The resolved config of the run, as JSON."""
        return self.train_dir / "config.json"

    @property
    def checkpoints(self) -> Path:
        return self.train_dir / "checkpoints"

    @property
    def metrics_log(self) -> Path:
        return self.train_dir / "metrics.jsonl"

    @property
    def log(self) -> Path:
        return self.train_dir / "logs" / "train.log"


@dataclass(frozen=True)
class RunPaths:
    """Every stage's folder and file inside ``run_dir`` (the config's ``run_dir``)."""

    run_dir: Path

    def __post_init__(self):
        object.__setattr__(self, "run_dir", Path(self.run_dir))

    @property
    def demo_config(self) -> Path:
        return self.run_dir / "demo_config.json"

    @property
    def synth(self) -> Path:
        return self.run_dir / "synth"

    @property
    def synth_vocab(self) -> Path:
        return self.synth / "vocab.yaml"

    @property
    def shards(self) -> Path:
        return self.run_dir / "shards"

    @property
    def manifest(self) -> Path:
        return self.shards / MANIFEST

    @property
    def train(self) -> Path:
        return self.run_dir / "train"

    @property
    def final_model(self) -> Path:
        return TrainPaths(self.train).final_model

    @property
    def eval(self) -> Path:
        return self.run_dir / "eval"

    @property
    def metrics(self) -> Path:
        """The evaluation's ``metrics.json``."""
        return self.eval / "metrics.json"

    @property
    def eval_report(self) -> Path:
        return self.eval / "report.md"

    def publish(self, name: str) -> Path:
        """The default export folder for a Hub repo ``ORG/NAME``."""
        return self.run_dir / "publish" / name

    @property
    def slurm(self) -> Path:
        return self.run_dir / "slurm"

    @property
    def demo_log(self) -> Path:
        return self.run_dir / "logs" / "demo.log"

    @property
    def summary(self) -> Path:
        """The demo's headline metrics."""
        return self.run_dir / "metrics.json"

    @property
    def report(self) -> Path:
        return self.run_dir / "report.md"

    def is_run(self) -> bool:
        """Whether a stage has left its mark: an evaluation, a shard manifest or a synthetic world."""
        return any(path.is_file() for path in (self.metrics, self.manifest, self.synth_vocab))


@dataclass(frozen=True)
class RunLocation:
    """Where the pieces of one training run live; anything but ``model_dir`` may be missing."""

    model_dir: Path
    train_dir: Path | None = None
    run: RunPaths | None = None

    @property
    def home(self) -> Path:
        """The outermost folder found: the run, else the training folder, else the model folder."""
        return self.run.run_dir if self.run else self.train_dir or self.model_dir

    def publish(self, name: str) -> Path:
        """The default export folder: ``publish/NAME`` in the run (or in the outermost folder found)."""
        return RunPaths(self.home).publish(name)


def is_model_dir(path: Path) -> bool:
    return (path / MODEL_WEIGHTS).is_file()


def find_model_dir(path: str | Path) -> Path | None:
    """The model folder ``path`` is or holds: itself, or a training folder's ``final/``."""
    path = Path(path)
    return next((d for d in (path, TrainPaths(path).final_model) if is_model_dir(d)), None)


def locate_run(path: str | Path) -> RunLocation:
    """A model folder, a training folder (its ``final/``) or a run folder (``train/final/``), and what surrounds it.

    A training folder whose parent holds a stage's output (``RunPaths.is_run``) belongs to that run.
    """
    path = Path(path)
    if (path / CHECKPOINT_STATE).is_file():
        raise OvdetError(f"{path}: a DeepSpeed training checkpoint; give the model folder final/ "
                         "that training writes at the end (or the training folder)")
    candidates = (path, TrainPaths(path).final_model, RunPaths(path).final_model)
    model_dir = next((d for d in candidates if is_model_dir(d)), None)
    if model_dir is None:
        raise OvdetError(f"{path}: not a model, training or run folder (no {MODEL_WEIGHTS} in it, "
                         "in final/ or in train/final/)")
    if not (model_dir / MODEL_SPEC).is_file():
        raise OvdetError(f"{model_dir}: {MODEL_WEIGHTS} without {MODEL_SPEC}")
    train_dir = model_dir.parent if model_dir == TrainPaths(model_dir.parent).final_model else None
    run = RunPaths(train_dir.parent) if train_dir is not None else None
    return RunLocation(model_dir, train_dir, run if run is not None and run.is_run() else None)
