"""Training steps/s of the detection-toolbox recipes against the OWL recipe, side by side.

    python tests/benchmarks/bench_recipes.py [--shards DIR --steps 60 --rounds 2]

Each run is ``ovdet train`` with the demo config (the demo model, batch 8, 192 px, detection +
grounding) and one recipe's overrides from ``scripts/recipes.py`` (``RECIPES``), on the same
shards: the demo's world (``runs/recipes/shards`` when given, else drawn and sharded into a temp
folder first). The recipes run interleaved (owl, glip, yolo-world, owl, ...) so load from other jobs
falls on all of them alike. Throughput is the trainer's own: the median of its logged windows
(``samples_per_s``, 10 steps each, the first window dropped), setup and export excluded.

Prints each recipe's steps/s (best round) and the ratio against the peer, the OWL recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from recipes import RECIPES  # noqa: E402

BATCH = 8
WINDOW = 10


def ovdet(*args: str) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    result = subprocess.run([str(Path(sys.executable).parent / "ovdet"), *args], cwd=REPO, env=env,
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode:
        sys.exit(f"ovdet {args[0]} failed:\n{result.stderr[-2000:]}")


def demo_shards(work: Path) -> Path:
    world, shards = work / "world", work / "shards"
    ovdet("synth", "--config", "configs/demo.yaml", "--out", str(world))
    ovdet("shard", "--config", "configs/data/synthetic.yaml", "--out", str(shards), f"root={world}")
    return shards


def steps_per_second(shards: Path, out: Path, overrides: list[str], steps: int) -> float:
    ovdet("train", "--config", "configs/demo.yaml", "--out", str(out), f"loader.shard_dirs=[{shards}]",
          f"train.steps={steps}", f"train.log_every={WINDOW}", "train.checkpoint_every=0", "eval.every=0",
          *overrides)  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [row["samples_per_s"] for row in rows if "samples_per_s" in row][1:]
    if not windows:
        sys.exit(f"{out}: no throughput logged after the first window; raise --steps above {2 * WINDOW}")
    return statistics.median(windows) / BATCH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, help="the demo world's shards (default: draw them in a temp folder)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = parser.parse_args()
    if "owl" not in args.recipes:
        args.recipes.insert(0, "owl")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shards = args.shards.resolve() if args.shards else demo_shards(work)
        measured: dict[str, list[float]] = {name: [] for name in args.recipes}
        for round_ in range(args.rounds):
            for name in args.recipes:
                value = steps_per_second(shards, work / f"{name}-{round_}", RECIPES[name][1], args.steps)
                measured[name].append(value)
                print(f"round {round_ + 1} {name}: {value:.2f} steps/s", flush=True)
    peer = max(measured["owl"])
    print(f"\n{args.steps} steps, batch {BATCH}, demo model and world; best of {args.rounds} interleaved rounds")
    for name in args.recipes:
        best = max(measured[name])
        print(f"{name:12s} {best:.2f} steps/s  ratio vs owl (peer) {best / peer:.2f}")


if __name__ == "__main__":
    main()
