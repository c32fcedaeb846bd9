"""The walking skeleton: synth -> shard (Ray) -> train (DeepSpeed) -> eval, in one run folder.

Re-running the same config resumes each stage (the world is not redrawn, finished shards are
skipped, training continues from its latest checkpoint); a run folder holding a different
config is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from ovdet.config import Config, to_dict
from ovdet.errors import OvdetError

log = logging.getLogger(__name__)
HEADLINE = ("AP50", "AP")


def claim_run_dir(cfg: Config, overwrite: bool) -> Path:
    run_dir = Path(cfg.run_dir)
    marker = run_dir / "demo_config.json"
    if marker.exists() and json.loads(marker.read_text()) != to_dict(cfg):
        if not overwrite:
            raise OvdetError(f"{run_dir}: holds a run with a different config; pass --overwrite to replace it")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(to_dict(cfg), indent=1))
    return run_dir


def run_demo(cfg: Config, overwrite: bool = False) -> dict[str, Any]:
    from ovdet.data.synthetic import generate_world
    from ovdet.eval.evaluator import evaluate_model, make_validator
    from ovdet.train.trainer import run_training
    from pipelines.shard import run_shard_stage
    from pipelines.shard_report import stage_problems

    run_dir = claim_run_dir(cfg, overwrite)
    timings: dict[str, float] = {}
    synth_dir = run_dir / "synth"
    with timed(timings, "synth"):
        generate_world(cfg.synth, synth_dir)
    cfg.data.root = cfg.data.root or str(synth_dir.resolve())
    with timed(timings, "shard"):
        problems = stage_problems(run_shard_stage(cfg.data, run_dir / "shards"), cfg.data.max_rejected_fraction)
    if problems:
        raise OvdetError("shard stage failed: " + "; ".join(problems))
    cfg.eval.gt = cfg.eval.gt or str(synth_dir / "eval.json")
    cfg.eval.vocab = cfg.eval.vocab or str(synth_dir / "vocab.yaml")
    cfg.eval.image_root = cfg.eval.image_root or str(synth_dir / "images")
    validate = make_validator(cfg.eval) if cfg.eval.every else None
    with timed(timings, "train"):
        trained = run_training(cfg.train, cfg.model, cfg.loss, cfg.loader, [run_dir / "shards"], run_dir / "train",
                               to_dict(cfg), validate=validate, validate_every=cfg.eval.every)
    if trained["stopped"] != "completed":
        raise OvdetError(f"training {trained['stopped']} at step {trained['step']}; re-run the same command to resume")
    with timed(timings, "eval"):
        metrics = evaluate_model(run_dir / "train" / "final", cfg.eval, run_dir / "eval")
    summary = headline(metrics, timings)
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    (run_dir / "report.md").write_text(demo_report(summary, run_dir))
    print_headline(summary)
    return summary


class timed:
    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        log.info("stage %s ...", self.name)
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = round(time.perf_counter() - self.start, 1)
        log.info("stage %s done in %.1f s", self.name, self.timings[self.name])


def headline(metrics: dict, timings: dict[str, float]) -> dict[str, Any]:
    return {key: metrics[key] for key in HEADLINE} | {"seconds": timings}


def print_headline(summary: dict) -> None:
    print("\n            base    novel   all     HM")
    for key in HEADLINE:
        row = summary[key]
        print(f"{key:8s}  " + "  ".join(f"{row[k]:.4f}" for k in ("base", "novel", "all", "hm")))
    print("stage seconds: " + ", ".join(f"{k} {v}" for k, v in summary["seconds"].items()))


def demo_report(summary: dict, run_dir: Path) -> str:
    lines = ["# ovdet demo run", "", "| metric | base | novel | all | HM |", "|---|---|---|---|---|"]
    for key in HEADLINE:
        row = summary[key]
        lines.append(f"| {key} | " + " | ".join(f"{row[k]:.4f}" for k in ("base", "novel", "all", "hm")) + " |")
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v}" for k, v in summary["seconds"].items()), "",
              f"Details: [eval report](eval/report.md), metrics in `eval/metrics.json`, training log in "
              f"`train/metrics.jsonl`; shards and counts in `shards/manifest.json`. Run folder: `{run_dir}`."]
    return "\n".join(lines) + "\n"
