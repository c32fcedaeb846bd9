"""Suite-wide settings, applied before any test module imports ray.

Tests send traffic to the loopback range only. A local Ray cluster otherwise takes the machine's
outward address for 127.0.0.1 and listens on every interface; with this it stays on 127.0.0.1
(``ray._private.services.get_node_ip_address``). Subprocesses inherit it: ``ovdet shard`` runs,
drivers joining a test cluster, the Slurm test jobs' one-node Ray head. ``pipelines/shard.py`` sets
the same for the local clusters it starts itself.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent



TINY_WORLD = ["synth.image_size=64", "synth.num_detection=32", "synth.num_grounding=16",
              "synth.num_image_text=32", "synth.num_eval=8"]  # fmt: skip


def data_config(world: Path) -> str:
    """configs/data/synthetic.yaml with ``root`` at ``world`` and 16 samples per shard."""
    text = (REPO / "configs" / "data" / "synthetic.yaml").read_text()
    lines = [f"root: {world}" if line.startswith("root:") else line for line in text.splitlines()]
    lines = ["samples_per_shard: 16" if line.startswith("samples_per_shard:") else line for line in lines]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """The tiny synthetic world (``world/`` beside the returned folder), sharded 16 samples a shard:
    shared by the trainer and the publish tests."""
    root = tmp_path_factory.mktemp("tiny-world")
    world, shards, config = root / "world", root / "shards", root / "data.yaml"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    subprocess.run(
        [str(BIN / "ovdet"), "synth", "--out", str(world), *TINY_WORLD],
        env=env,
        check=True,
        capture_output=True,
    )
    config.write_text(data_config(world))
    subprocess.run([str(BIN / "ovdet"), "shard", "--config", str(config), "--out", str(shards)], env=env, check=True,
                   capture_output=True)  # fmt: skip
    return shards
