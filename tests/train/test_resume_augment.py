"""Exact resume with every augmentation on (docs/augmentation.md): the loader's state alone restores
the stream, because each sample is a function of (seed, stream index) and each input size of
(seed, global batch index); and a training run with them on resumes bitwise from a checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
from test_train_resume import torch_equal
from train_runs import final_weights, max_abs_difference, metrics

from ovdet.config import LoaderConfig
from ovdet.data.loader import TrainLoader

AUGMENTED = {"mosaic_probability": 0.5, "mixup_probability": 0.5, "photometric_probability": 0.5,
             "min_scale": 0.5}  # fmt: skip


def loader_config(**overrides) -> LoaderConfig:
    defaults = {"image_size": 64, "batch_size": 4, "num_workers": 2, "num_negatives": 8,
                "multiscale_sizes": [32, 64, 96], **AUGMENTED}  # fmt: skip
    return LoaderConfig(**(defaults | overrides))


def assert_same_batches(left: list[dict], right: list[dict]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a["key"] == b["key"] and a["texts"] == b["texts"]
        assert torch_equal(a["images"], b["images"])
        for name in ("boxes", "labels", "image_labels"):
            assert all(torch_equal(x, y) for x, y in zip(a[name], b[name], strict=True)), name


def test_augmented_loader_resumes_from_its_state_with_the_next_batches_of_an_uninterrupted_run(tiny_shards):
    cfg = loader_config()
    uninterrupted = list(TrainLoader([tiny_shards], cfg).iterate(7))
    assert len({batch["images"].shape[-1] for batch in uninterrupted}) > 1  # multi-scale is on
    loader = TrainLoader([tiny_shards], cfg)
    list(loader.iterate(4))
    state = json.loads(json.dumps(loader.state_dict()))  # survives a checkpoint round trip
    resumed = TrainLoader([tiny_shards], cfg)
    resumed.load_state_dict(state)
    assert_same_batches(list(resumed.iterate(3)), uninterrupted[4:])

    # on twice the ranks with half the batch, the ranks' slices of the global batches are those batches
    per_rank = []
    for rank in range(2):
        on_two_ranks = TrainLoader(
            [tiny_shards], loader_config(batch_size=2, num_workers=0), rank, world_size=2
        )
        on_two_ranks.load_state_dict(state)
        per_rank.append(list(on_two_ranks.iterate(3)))
    for (first, second), expected in zip(zip(*per_rank, strict=True), uninterrupted[4:], strict=True):
        assert first["key"] + second["key"] == expected["key"]
        assert first["texts"] + second["texts"] == expected["texts"]
        assert torch_equal(first["images"], expected["images"][:2])
        assert torch_equal(second["images"], expected["images"][2:])


# The tiny ViT's position embedding has one input size, so the run trains at 64 only (multi-scale
# needs an image tower that takes any size: a convnet)
TRAIN_AUGMENTED = {f"loader__{key}": value for key, value in AUGMENTED.items()} | {"train__steps": 4}


@pytest.mark.slow
def test_training_with_augmentations_resumed_from_a_checkpoint_ends_with_the_uninterrupted_weights(
    tiny_shards, tmp_path, in_process
):
    """The checkpoint tests' resume (tests/train/test_train_checkpoints.py), in process to fit the
    time limit; test_train_resume.py's SIGKILL run covers the process being killed."""
    reference = tmp_path / "reference"
    in_process(reference, tiny_shards, **TRAIN_AUGMENTED)
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "step-0000002", out / "checkpoints" / "step-0000002")
    (out / "checkpoints" / "latest").write_text("step-0000002")
    summary = in_process(out, tiny_shards, **TRAIN_AUGMENTED)
    assert summary["resumed_from"] == 2 and summary["step"] == 4
    assert max_abs_difference(final_weights(out), final_weights(reference)) == 0.0
    losses = [(m["step"], m["loss"]) for m in metrics(out)]
    assert losses == [(m["step"], m["loss"]) for m in metrics(reference)[2:]]
