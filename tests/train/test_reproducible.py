"""Same code, same seed, same machine -> identical numbers.

Two runs from scratch with the recipe (YOLO-World's: TAL, DFL, mosaic) and the thread and worker settings
of `make demo` (torch's default threads: 2 on this machine; one loader worker process), each evaluated: the loss
curves, the weights and every metric are bitwise equal. Dependency versions are the third input:
`make` installs them from requirements.lock (tests/test_packaging.py).
"""

from __future__ import annotations

import json

import pytest
from train_runs import describe, final_weights, metrics, run_train

from ovdet.cli import main

MEASURED = ("samples_per_s", "max_rss_mib")


def computed(row: dict) -> dict:
    return {key: value for key, value in row.items() if key not in MEASURED}


@pytest.mark.slow
def test_the_same_seed_trains_and_evaluates_to_identical_numbers(tiny_shards, tmp_path):
    world = tiny_shards.parent / "world"
    scored = []
    for name in ("first", "second"):
        out = tmp_path / name
        result = run_train(out / "train", tiny_shards, train__threads=2, loader__num_workers=1,
                           train__checkpoint_every=0, train__seed=3, recipe="yolo-world")  # fmt: skip
        assert result.returncode == 0, describe(result)
        assert main(["eval", "--model", str(out / "train" / "final"), "--gt", str(world / "eval.json"),
                     "--vocab", str(world / "vocab.yaml"), "--out", str(out / "eval")]) == 0  # fmt: skip
        scored.append(json.loads((out / "eval" / "metrics.json").read_text()))
        assert scored[-1].pop("model") == str(out / "train" / "final")  # the one field that names the run
    first, second = (tmp_path / name / "train" for name in ("first", "second"))
    # every loss term and the LR at every step (not the speed and memory the log also records)
    assert [computed(row) for row in metrics(first)] == [computed(row) for row in metrics(second)]
    assert len(metrics(first)) == 8 and len(computed(metrics(first)[0])) >= 10
    weights = final_weights(first), final_weights(second)
    assert weights[0].keys() == weights[1].keys()
    assert all(bool((weights[0][k] == weights[1][k]).all()) for k in weights[0])
    assert scored[0] == scored[1]
    assert scored[0]["num_images"] == 8 and 0.0 < scored[0]["AP50"]["all"] <= 1.0
