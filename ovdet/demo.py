"""The walking skeleton: synth -> shard (Ray) -> train (DeepSpeed) -> eval, in one run folder.

Re-running the same config resumes each stage (the world is not redrawn, finished shards are
skipped, training continues from its latest checkpoint); a run folder holding a different
config is refused unless ``overwrite``.
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import Any

from ovdet.config import Config, to_dict
from ovdet.errors import OvdetError
from ovdet.eval.report import format_split_table
from ovdet.fileio import read_json, write_json_atomic, write_text_atomic
from ovdet.runs import RunPaths, TrainPaths

log = logging.getLogger(__name__)
HEADLINE = ("AP50", "AP")
LEGEND = "Box AP in %; HM is the harmonic mean of base and novel AP."


def claim_run_dir(cfg: Config, overwrite: bool) -> RunPaths:
    run = RunPaths(cfg.run_dir)
    config = to_dict(cfg)
    if run.demo_config.exists() and read_json(run.demo_config) != config:
        if not overwrite:
            raise OvdetError(f"{run.run_dir}: holds a run with a different config; pass --overwrite to replace it")
        shutil.rmtree(run.run_dir)
    write_json_atomic(run.demo_config, config)
    return run


def run_demo(cfg: Config, overwrite: bool = False) -> dict[str, Any]:
    from ovdet.data.synthetic import generate_world
    from ovdet.eval.evaluator import evaluate_model, make_validator
    from ovdet.pipelines.shard import run_shard_stage
    from ovdet.pipelines.shard_report import stage_problems
    from ovdet.train.trainer import run_training

    run = claim_run_dir(cfg, overwrite)
    timings: dict[str, float] = {}
    with timed(timings, "synth"):
        world = generate_world(cfg.synth, run.synth)
    world_file = {key: run.synth / name for key, name in world["files"].items()}
    cfg.data.root = cfg.data.root or str(run.synth.resolve())
    with timed(timings, "shard"):
        problems = stage_problems(run_shard_stage(cfg.data, run.shards), cfg.data.max_rejected_fraction)
    if problems:
        raise OvdetError("shard stage failed: " + "; ".join(problems))
    cfg.eval.gt = cfg.eval.gt or str(world_file["eval"])
    cfg.eval.vocab = cfg.eval.vocab or str(world_file["vocab"])
    cfg.eval.image_root = cfg.eval.image_root or str(world_file["images"])
    validate = make_validator(cfg.eval) if cfg.eval.every else None
    with timed(timings, "train"):
        trained = run_training(cfg.train, cfg.model, cfg.loss, cfg.loader, [run.shards], run.train,
                               to_dict(cfg), validate=validate, validate_every=cfg.eval.every)
    if trained["stopped"] != "completed":
        raise OvdetError(f"training {trained['stopped']} at step {trained['step']}; re-run the same command to resume")
    with timed(timings, "eval"):
        metrics = evaluate_model(run.final_model, cfg.eval, run.eval)
    summary = headline(metrics, timings)
    write_json_atomic(run.summary, summary, sort_keys=False)
    write_text_atomic(run.report, demo_report(summary, run))
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


def stage_times(summary: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in summary["seconds"].items())


def print_headline(summary: dict) -> None:
    print(f"\n{LEGEND}")
    print(format_split_table(summary, HEADLINE, digits=2))
    print(f"stage seconds: {stage_times(summary)}")


def demo_report(summary: dict, run: RunPaths) -> str:
    """``report.md``: the headline table, stage times and links into the run folder."""

    def link(path) -> str:
        return path.relative_to(run.run_dir).as_posix()

    lines = ["# ovdet demo run", "", LEGEND, "", format_split_table(summary, HEADLINE, markdown=True, digits=2), "",
             f"Stage times (s): {stage_times(summary)}", "",
             f"Details: [eval report]({link(run.eval_report)}), metrics in `{link(run.metrics)}`, training log in "
             f"`{link(TrainPaths(run.train).metrics_log)}`; shards and counts in `{link(run.manifest)}`. "
             f"Run folder: `{run.run_dir}`."]
    return "\n".join(lines) + "\n"
