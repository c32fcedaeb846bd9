"""`ovdet publish` of a transformers (``hf:``) detector, and `ovdet eval/detect --model hf:FOLDER`.

A tiny random-init OWLv2 / OWL-ViT with its real tokenizer (``write_tiny_model``) is trained for a few
steps on a tiny synthetic world, evaluated and published. The published folder must load with
``transformers`` alone (a subprocess that never imports ovdet) and give ovdet's detections; ovdet's
card and metadata files sit beside the ``save_pretrained`` files, without the training machine's paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from drawn_images import write_drawn_images
from huggingface_hub import ModelCard, metadata_load
from PIL import Image

from ovdet.cli import main
from ovdet.infer import Detector
from ovdet.models.hf.tiny import write_tiny_model
from ovdet.publish import publish

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REPO_ID = "my-org/owl-tiny"
KINDS = ("owlv2", "owlvit")
VOCABULARY = ["red circle", "blue square", "green star"]
SCORE_TOLERANCE, BOX_TOLERANCE_PX = 1e-4, 1e-3
METADATA_FILES = {"model_spec.json", "metrics.json", "vocab.yaml", "training_config.yaml", "data_summary.json",
                  "README.md"}  # fmt: skip
# what AutoModelForZeroShotObjectDetection and AutoProcessor read from an OWL folder
SAVE_PRETRAINED_FILES = {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
                         "tokenizer_config.json"}  # fmt: skip
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

# Loads the folder with transformers only; prints, per image, the processor's detections (one label per
# box, the best) and, for the first image, the pipeline's (one per box and label, boxes in whole pixels).
TRANSFORMERS_SCRIPT = """
import json, sys
import torch
from PIL import Image
from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, pipeline

folder, vocabulary, paths = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval()
processor = AutoProcessor.from_pretrained(folder)
images = [Image.open(path).convert("RGB") for path in paths]
labels = [vocabulary] * len(images)
inputs = processor(text=labels, images=images, return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
found = processor.post_process_grounded_object_detection(
    outputs, threshold=0.0, target_sizes=[(image.height, image.width) for image in images], text_labels=labels)
piped = pipeline("zero-shot-object-detection", model=folder)(images[0], candidate_labels=vocabulary, threshold=0.0)
assert "ovdet" not in sys.modules, "loading the folder imported ovdet"
print(json.dumps({
    "processor": [[{"label": label, "score": float(score), "box": box.tolist()}
                   for label, score, box in zip(r["text_labels"], r["scores"], r["boxes"], strict=True)] for r in found],
    "pipeline": [{"label": d["label"], "score": d["score"], "box": [d["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]}
                 for d in piped],
}))
"""


@dataclass(frozen=True)
class World:
    """A run folder's ``synth/`` and ``shards/`` (``ovdet synth`` + ``ovdet shard``)."""

    root: Path

    @property
    def synth(self) -> Path:
        return self.root / "synth"

    @property
    def shards(self) -> Path:
        return self.root / "shards"


@dataclass(frozen=True)
class PublishedRun:
    kind: str
    run: Path
    folder: Path


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    return env | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_checked(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, env=clean_env(), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{argv[:3]} exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def world(tiny_shards, tmp_path_factory) -> World:
    """The session's tiny synthetic world and its shards (tests/conftest.py), as one run folder's."""
    world = World(tmp_path_factory.mktemp("hf-world"))
    world.synth.symlink_to(tiny_shards.parent / "world")
    world.shards.symlink_to(tiny_shards)
    return world


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-tiny")
    return {kind: write_tiny_model(root / f"tiny-{kind}", kind) for kind in KINDS}


@pytest.fixture(scope="module", params=[pytest.param(kind, marks=pytest.mark.slow) for kind in KINDS])
def published(request, world, tiny_models, tmp_path_factory) -> PublishedRun:
    """A run of ``hf:tiny-KIND``: 4 training steps, heads sharpened, evaluated, then published (dry run)."""
    kind = request.param
    run = tmp_path_factory.mktemp(f"hf-run-{kind}")
    for name in ("synth", "shards"):
        (run / name).symlink_to(world.root / name)
    overrides = ["recipe=owl", f"model.name=hf:{tiny_models[kind]}", "loader.image_size=64", "loader.num_workers=0",
                 "loader.batch_size=4", "loader.num_negatives=8", f"loader.shard_dirs=[{run / 'shards'}]",
                 "loader.sources=[]", "train.threads=1", "train.steps=4", "train.warmup_steps=1",
                 "train.log_every=1", "train.checkpoint_every=4"]  # fmt: skip
    run_checked([str(BIN / "ovdet"), "train", "--config", "demo", "--out", str(run / "train"), *overrides], run)
    sharpen_heads(run / "train" / "final" / "model.safetensors")
    assert main(["eval", "--model", str(run / "train" / "final"), "--gt", str(run / "synth" / "eval.json"),
                 "--vocab", str(run / "synth" / "vocab.yaml"), "--out", str(run / "eval")]) == 0  # fmt: skip
    return PublishedRun(kind, run, publish(run, REPO_ID, dry_run=True))


def sharpen_heads(weights: Path) -> None:
    """Make every query's score and box its own: at random init OWL's std-1 heads saturate (every score
    ~0.5, every box stretched to the image's corners), so a comparison of detections would not tell
    one query from another. The logit scale becomes 4, the shift and the box offsets small."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    tensors["class_head.logit_scale.weight"].zero_()
    tensors["class_head.logit_scale.bias"].fill_(3.0)  # elu(3) + 1
    tensors["class_head.logit_shift.weight"] *= 0.02
    tensors["box_head.dense2.weight"] *= 0.01  # boxes near each patch's prior box
    save_file(tensors, str(weights), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def images(world, tmp_path_factory) -> list[Path]:
    """Two drawn images that are not square (OWLv2 pads, OWL-ViT stretches) and a synthetic eval image."""
    paths = write_drawn_images(tmp_path_factory.mktemp("hf-images"))
    return [*paths, sorted((world.synth / "images" / "eval").iterdir())[0]]


def transformers_detections(folder: Path, images: list[Path], cwd: Path) -> dict:
    argv = [sys.executable, "-c", TRANSFORMERS_SCRIPT, str(folder), json.dumps(VOCABULARY), *map(str, images)]
    return json.loads(run_checked(argv, cwd, timeout=120).stdout.strip().splitlines()[-1])


def clipped(box: list[float], width: int, height: int) -> list[float]:
    return [min(max(box[0], 0), width), min(max(box[1], 0), height), min(max(box[2], 0), width),
            min(max(box[3], 0), height)]  # fmt: skip


def unmatched(theirs: list[dict], ours, size: tuple[int, int], box_tolerance: float, min_side: float):
    """The detections of ``theirs`` with no ovdet detection of the same label, score and (clipped) box,
    and how many were compared: ovdet drops boxes clipped to under a pixel, so those are skipped."""
    missing, compared = [], 0
    for det in theirs:
        box = clipped(det["box"], *size)
        if box[2] - box[0] < min_side or box[3] - box[1] < min_side:
            continue
        compared += 1
        if not any(o.label == det["label"] and abs(o.score - det["score"]) <= SCORE_TOLERANCE
                   and max(abs(a - b) for a, b in zip(o.box_xyxy, box, strict=True)) <= box_tolerance for o in ours):
            missing.append(det)
    return missing, compared


def test_published_folder_loads_in_transformers_alone_with_ovdets_detections(published, images, tmp_path):
    theirs = transformers_detections(published.folder, images, tmp_path)
    ours = Detector.from_pretrained(published.folder).detect(images, VOCABULARY, score_threshold=0.0, top_k=10_000)
    sizes = [Image.open(path).size for path in images]
    total = 0
    for image_theirs, image_ours, size in zip(theirs["processor"], ours, sizes, strict=True):
        # the tolerance on the side: a box ovdet keeps at 1.0 px may be 0.9999 px here
        missing, compared = unmatched(image_theirs, image_ours, size, BOX_TOLERANCE_PX, min_side=1.01)
        assert missing == [], f"{published.kind} {size}: {missing[:3]}"
        total += compared
    assert total >= 8  # OWLv2 queries over its padding predict boxes that clip to nothing
    # the pipeline of the card's one-line load: integer boxes (truncated), one forward per label
    missing, compared = unmatched(theirs["pipeline"], ours[0], sizes[0], box_tolerance=1.0, min_side=2)
    assert missing == [] and compared >= 4


def test_published_folder_is_a_save_pretrained_folder_with_ovdets_files(published):
    files = {p.name for p in published.folder.iterdir() if p.is_file()}
    assert SAVE_PRETRAINED_FILES | METADATA_FILES <= files
    final = published.run / "train" / "final"
    assert (published.folder / "model.safetensors").read_bytes() == (final / "model.safetensors").read_bytes()
    config = json.loads((published.folder / "config.json").read_text())
    assert config["model_type"] == published.kind and config["architectures"] == [
        {"owlv2": "Owlv2ForObjectDetection", "owlvit": "OwlViTForObjectDetection"}[published.kind]]
    spec = json.loads((published.folder / "model_spec.json").read_text())["spec"]
    assert spec["kind"] == "hf" and spec["source"] == "." and spec["name"] == f"hf:{REPO_ID}"
    metrics = json.loads((published.folder / "metrics.json").read_text())
    assert metrics["model"] == REPO_ID and set(metrics["AP"]) >= {"base", "novel", "all", "hm"}
    assert yaml.safe_load((published.folder / "vocab.yaml").read_text())["categories"]
    assert json.loads((published.folder / "data_summary.json").read_text())["total_samples"] == 80
    assert yaml.safe_load((published.folder / "training_config.yaml").read_text())["train"]["steps"] == 4


def test_card_names_transformers_and_shows_the_one_line_load(published):
    meta = metadata_load(published.folder / "README.md")
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "zero-shot-object-detection"
    assert published.kind in meta["tags"]
    card = ModelCard.load(published.folder / "README.md")
    assert {r.metric_type for r in card.data.eval_results} >= {"AP_base", "AP_all", "AP50_base", "AP50_all"}
    assert f'pipeline("zero-shot-object-detection", model="{REPO_ID}")' in card.text
    assert f'AutoModelForZeroShotObjectDetection.from_pretrained("{REPO_ID}")' in card.text
    assert "Detector.from_pretrained" not in card.text
    assert "| AP |" in card.text and "| AP50 |" in card.text


def test_no_published_file_holds_a_path_of_the_training_machine(published, tmp_path_factory):
    local = [str(tmp_path_factory.getbasetemp()).encode(), str(REPO).encode()]
    for path in published.folder.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not any(p in content for p in local), f"{path.name} holds a local path"
    training_config = yaml.safe_load((published.folder / "training_config.yaml").read_text())
    assert training_config["model"]["name"] == f"hf:tiny-{published.kind}"  # the folder's name only
    assert training_config["loader"]["shard_dirs"] == ["shards"]


def test_published_folder_republishes_under_another_name(published, tmp_path):
    again = publish(published.folder, "my-org/owl-again", out_dir=tmp_path / "again", dry_run=True)
    assert {p.name for p in again.iterdir()} == {p.name for p in published.folder.iterdir()}
    assert (again / "model.safetensors").read_bytes() == (published.folder / "model.safetensors").read_bytes()
    assert json.loads((again / "model_spec.json").read_text())["spec"]["name"] == "hf:my-org/owl-again"
    assert metadata_load(again / "README.md")["library_name"] == "transformers"


@pytest.mark.parametrize("kind", KINDS)
def test_eval_scores_any_transformers_folder(kind, world, tiny_models, tmp_path):
    out = tmp_path / "eval"
    model = f"hf:{tiny_models[kind]}"
    assert main(["eval", "--model", model, "--gt", str(world.synth / "eval.json"),
                 "--vocab", str(world.synth / "vocab.yaml"), "--out", str(out)]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("AP", "AP50", "AP75"):
        assert all(isinstance(metrics[key][split], float) for split in ("base", "novel", "all", "hm"))
    assert metrics["model"] == model and metrics["num_images"] == 8
    assert json.loads((out / "detections.json").read_text())


@pytest.mark.parametrize("kind", KINDS)
def test_detect_writes_detections_for_any_transformers_folder(kind, world, tiny_models, tmp_path):
    images = world.synth / "images" / "eval"
    assert main(["detect", "--model", f"hf:{tiny_models[kind]}", "--vocab", ",".join(VOCABULARY), str(images),
                 "--out", str(tmp_path), "--threshold", "0"]) == 0  # fmt: skip
    written = sorted(tmp_path.glob("*.json"))
    assert len(written) == 8 and len(list(tmp_path.glob("*.jpg"))) == 8
    record = json.loads(written[0].read_text())
    assert record["vocabulary"] == VOCABULARY and record["detections"]
    assert {d["label"] for d in record["detections"]} <= set(VOCABULARY)


@pytest.fixture
def bad_models(tiny_models, tmp_path) -> dict[str, tuple[str, str]]:
    """case -> (``--model``, the text the error line must name)."""
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "empty").mkdir()
    owl = tiny_models["owlv2"]
    return {
        "missing folder": (f"hf:{tmp_path / 'missing'}", str(tmp_path / "missing")),
        "not a detector": (f"hf:{tmp_path / 'bert'}", "model_type 'bert' is not a detector"),
        "no config.json": (f"hf:{tmp_path / 'empty'}", "no config.json"),
        "a file": (f"hf:{owl / 'config.json'}", "is a file"),
        "no hf: prefix": (str(owl), f"pass --model hf:{owl}"),
    }


@pytest.mark.parametrize("command", ["eval", "detect"])
@pytest.mark.parametrize("case", ["missing folder", "not a detector", "no config.json", "a file", "no hf: prefix"])
def test_bad_hf_model_fails_in_one_line_naming_it(command, case, bad_models, world, tmp_path, capsys):
    model, named = bad_models[case]
    tail = (["--gt", str(world.synth / "eval.json"), "--vocab", str(world.synth / "vocab.yaml")] if command == "eval"
            else ["--vocab", "red circle", str(world.synth / "images" / "eval")])  # fmt: skip
    assert main([command, "--model", model, "--out", str(tmp_path / "out"), *tail]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ovdet: error: ") and named in err, err


def test_local_paths_are_cut_to_their_last_component():
    from ovdet.publish.export import without_local_paths

    config = {"model": {"name": "hf:/home/me/owlv2/"}, "loader": {"shard_dirs": ["/data/shards", "rel/shards"]},
              "cache": "~/hf", "url": "https://huggingface.co/google/owlv2", "hub": "hf:google/owlv2", "steps": 4}
    assert without_local_paths(config) == {
        "model": {"name": "hf:owlv2"}, "loader": {"shard_dirs": ["shards", "rel/shards"]}, "cache": "hf",
        "url": "https://huggingface.co/google/owlv2", "hub": "hf:google/owlv2", "steps": 4}


def test_a_run_without_a_synthetic_world_takes_the_vocabulary_from_its_metrics(tmp_path):
    """A run folder trained on the user's own shards has no ``synth/vocab.yaml``; publishing it with
    ``--metrics`` (the README's three commands) takes the vocabulary from the metrics' categories."""
    from ovdet.publish.export import find_vocabulary
    from ovdet.runs import RunLocation, RunPaths

    run = RunLocation(model_dir=tmp_path / "train" / "final", train_dir=tmp_path / "train", run=RunPaths(tmp_path))
    metrics = {"per_category": {"cat": {"id": 1, "split": "base"}, "zebra": {"id": 2, "split": "novel"}}}
    vocab = find_vocabulary(run, None, {"eval": {"vocab": "lvis"}}, metrics)
    assert [(c.name, c.split) for c in vocab.categories] == [("cat", "base"), ("zebra", "novel")]
