"""End to end: `ovdet demo` at a tiny size runs synth -> Ray shard -> DeepSpeed train -> eval."""

import json
import os
import subprocess
import sys

import pytest

TINY = [
    "synth.image_size=96", "synth.num_detection=24", "synth.num_grounding=12", "synth.num_image_text=24",
    "synth.num_eval=8", "data.samples_per_shard=16", "loader.image_size=96", "loader.batch_size=4",
    "loader.num_workers=0", "train.steps=6", "train.log_every=2", "train.checkpoint_every=3", "train.threads=1",
]


@pytest.mark.slow
def test_demo_runs_every_stage_at_a_tiny_size(tmp_path):
    run_dir = tmp_path / "demo"
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    command = [sys.executable, "-m", "ovdet.cli", "demo", "--config", "configs/demo.yaml", f"run_dir={run_dir}", *TINY]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AP50" in result.stdout and "HM" in result.stdout

    manifest = json.loads((run_dir / "shards" / "manifest.json").read_text())
    assert {s["kind"] for s in manifest["sources"].values()} == {"detection", "grounding", "image_text"}
    for source in manifest["sources"].values():
        assert source["read"] == source["written"] + source["rejected"]
    steps = [json.loads(line)["step"] for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 6
    assert (run_dir / "train" / "final" / "model.safetensors").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("AP", "AP50"):
        assert set(metrics[key]) == {"base", "novel", "all", "hm"}
        assert all(0.0 <= v <= 1.0 for v in metrics[key].values())
    assert (run_dir / "report.md").is_file() and (run_dir / "eval" / "report.md").is_file()
    eval_metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert eval_metrics["num_images"] == 8

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr  # the same command resumes instead of starting over
