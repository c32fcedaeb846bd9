"""``ovdet submit``: render the sbatch templates of ``slurm/`` for one run and submit them.

``submit_stages(["train"], run, resources)`` fills a copy of ``slurm/pretrain.sbatch`` with the
``#SBATCH`` lines for the requested nodes and GPUs and the settings block for the run (venv,
config, overrides, output folders), writes it to ``RUN_DIR/slurm/JOB.sbatch`` and submits it with
``sbatch --parsable``. ``pipeline`` submits shard -> train -> eval -> publish, each job depending
on the previous one with ``--dependency=afterok:ID``, so the chain stops at the first failure and
a requeued training job holds the evaluation back until it really finishes.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ovdet.config import DataConfig, is_data_config, load_config
from ovdet.errors import OvdetError
from ovdet.resources import config_file, slurm_template_dir
from ovdet.runs import RunPaths

STAGES = ("shard", "train", "eval", "publish")
TEMPLATES = {"shard": "shard.sbatch", "train": "pretrain.sbatch", "eval": "eval.sbatch", "publish": "publish.sbatch"}
SETTINGS_BEGIN, SETTINGS_END = "# >>> settings", "# <<< settings"
PREEMPTION_WARNING_S = 120  # seconds before the time limit Slurm sends USR1: room for one step + a save


@dataclass
class Resources:
    """What to ask Slurm for; the training job gets nodes x max(gpus_per_node, 1) tasks by default."""

    nodes: int = 1
    gpus_per_node: int = 0
    ntasks: int | None = None  # training tasks in total (default nodes x max(gpus_per_node, 1))
    cpus_per_task: int | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None


@dataclass
class RunSpec:
    """The run the jobs work on: absolute paths, so the jobs do not depend on the submit directory."""

    config: Path
    run_dir: Path
    overrides: list[str] = field(default_factory=list)
    venv: Path = Path(sys.prefix)
    repo_id: str | None = None
    upload: bool = True
    workdir: Path = field(default_factory=Path.cwd)


@dataclass
class Job:
    stage: str
    name: str
    path: Path  # RUN_DIR/slurm/NAME.sbatch
    script: str


def load_run_spec(config: str, overrides: list[str], run_dir: str | None = None, **extra) -> RunSpec:
    """Validate the config and overrides now (a typo fails here, not in the queue) and find run_dir."""
    config_path = config_file(config).resolve()
    if is_data_config(config_path):
        load_config(config_path, [o.removeprefix("data.") for o in overrides], cls=DataConfig)
        resolved_run_dir = run_dir or load_config(None).run_dir
    else:
        if run_dir:
            overrides = [*overrides, f"run_dir={run_dir}"]
        resolved_run_dir = load_config(config_path, overrides).run_dir
    return RunSpec(config=config_path, run_dir=Path(resolved_run_dir).resolve(), overrides=list(overrides), **extra)


def check_stages(stages: list[str], run: RunSpec) -> None:
    """Refuse what would only fail once the job starts."""
    if is_data_config(run.config) and stages != ["shard"]:
        raise OvdetError(f"{run.config}: a data config (top-level 'sources') can only be sharded; "
                         f"{', '.join(s for s in stages if s != 'shard')} need a run config (run_dir, data, loader, ...)")
    if "eval" in stages:
        eval_cfg = load_config(run.config, run.overrides).eval
        if not eval_cfg.gt or not eval_cfg.vocab:
            raise OvdetError(f"{run.config}: eval needs eval.gt and eval.vocab (set them in the config or as overrides)")
    if "publish" in stages and not run.repo_id:
        raise OvdetError("publish needs --repo-id ORG/NAME")


def job_name(run: RunSpec, stage: str) -> str:
    return f"{run.run_dir.name}-{stage}"


def train_tasks_per_node(resources: Resources) -> int:
    if resources.ntasks is None:
        return max(resources.gpus_per_node, 1)
    if resources.ntasks < 1 or resources.ntasks % resources.nodes:
        raise OvdetError(f"--ntasks {resources.ntasks} must be a positive multiple of --nodes {resources.nodes}")
    return resources.ntasks // resources.nodes


def stage_shape(stage: str, resources: Resources) -> tuple[int, int, int]:
    """(nodes, tasks per node, GPUs per node) of a stage's job."""
    if stage == "train":
        return resources.nodes, train_tasks_per_node(resources), resources.gpus_per_node
    if stage == "shard":  # one Ray node per Slurm node
        return resources.nodes, 1, 0
    if stage == "eval":
        return 1, 1, min(resources.gpus_per_node, 1)
    return 1, 1, 0


def sbatch_directives(stage: str, name: str, resources: Resources, run: RunSpec) -> list[str]:
    nodes, tasks_per_node, gpus = stage_shape(stage, resources)
    log_dir = RunPaths(run.run_dir).slurm
    options = [f"--job-name={name}", f"--chdir={run.workdir}",
               f"--output={log_dir}/%x-%j.out", f"--error={log_dir}/%x-%j.err",
               f"--nodes={nodes}", f"--ntasks={nodes * tasks_per_node}", f"--ntasks-per-node={tasks_per_node}"]
    if gpus > 0:
        options.append(f"--gres=gpu:{gpus}")
    if resources.cpus_per_task and stage != "publish":
        options.append(f"--cpus-per-task={resources.cpus_per_task}")
    for flag, value in (("partition", resources.partition), ("account", resources.account), ("time", resources.time)):
        if value:
            options.append(f"--{flag}={value}")
    if stage == "train":
        options += [f"--signal=USR1@{PREEMPTION_WARNING_S}", "--requeue", "--open-mode=append"]
    return [f"#SBATCH {option}" for option in options]


def settings_lines(stage: str, run: RunSpec, resources: Resources) -> list[str]:
    """The shell variables the template's body reads (see the settings block of each template)."""
    quote = shlex.quote
    lines = [f"OVDET_VENV={quote(str(run.venv))}"]
    if stage != "publish":
        lines.append(f"OVDET_CONFIG={quote(str(run.config))}")
        lines.append(f"OVDET_OVERRIDES=({' '.join(quote(o) for o in run.overrides)})")
    if stage == "shard":
        lines.append(f"SHARD_DIR={quote(str(RunPaths(run.run_dir).shards))}")
    if stage == "eval":
        lines.append(f"MODEL_DIR={quote(str(RunPaths(run.run_dir).final_model))}")
        lines.append(f"EVAL_DIR={quote(str(RunPaths(run.run_dir).eval))}")
    if stage == "publish":
        lines.append(f"RUN_DIR={quote(str(run.run_dir))}")
        lines.append(f"REPO_ID={quote(run.repo_id or '')}")
        lines.append(f"PUBLISH_ARGS=({'' if run.upload else '--dry-run'})")
    if stage in ("train", "eval") and resources.gpus_per_node == 0:
        lines.append("export DS_ACCELERATOR=cpu  # no GPUs requested: DeepSpeed on CPU with gloo")
    return lines


def render_template(template: str, directives: list[str], settings: list[str], source: str) -> str:
    """Replace the template's ``#SBATCH`` lines and its settings block; keep everything else."""
    lines = template.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("#SBATCH")), None)
    if first is None or SETTINGS_BEGIN not in "\n".join(lines):
        raise OvdetError(f"{source}: not an ovdet sbatch template (needs #SBATCH lines and a "
                         f"'{SETTINGS_BEGIN}' ... '{SETTINGS_END}' block)")
    header = lines[:first] + [f"# rendered by `ovdet submit` from {source}"] + directives
    rest = [line for line in lines[first:] if not line.startswith("#SBATCH")]
    begin = next(i for i, line in enumerate(rest) if line.startswith(SETTINGS_BEGIN))
    end = next((i for i, line in enumerate(rest) if line.startswith(SETTINGS_END)), None)
    if end is None or end < begin:
        raise OvdetError(f"{source}: settings block opened by '{SETTINGS_BEGIN}' is never closed by '{SETTINGS_END}'")
    body = rest[: begin + 1] + settings + rest[end:]
    return "\n".join(header + body) + "\n"


def render_job(stage: str, run: RunSpec, resources: Resources, template_dir: Path | None = None) -> Job:
    template_path = (template_dir or slurm_template_dir()) / TEMPLATES[stage]
    try:
        template = template_path.read_text()
    except OSError as exc:
        raise OvdetError(f"{template_path}: cannot read the sbatch template: {exc.strerror or exc}") from None
    name = job_name(run, stage)
    script = render_template(template, sbatch_directives(stage, name, resources, run),
                             settings_lines(stage, run, resources), str(template_path))
    return Job(stage=stage, name=name, path=RunPaths(run.run_dir).slurm / f"{name}.sbatch", script=script)


def sbatch_command(job: Job, after: str | None) -> list[str]:
    command = ["sbatch", "--parsable"]
    if after is not None:
        # A failed predecessor cancels the rest of the chain instead of leaving it pending forever.
        command += [f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes"]
    return command + [str(job.path)]


def submit_job(job: Job, after: str | None) -> str:
    """Write the script and submit it; returns the job id."""
    if shutil.which("sbatch") is None:
        raise OvdetError("sbatch not found on PATH: run `ovdet submit` on a Slurm login node, or use --dry-run")
    job.path.parent.mkdir(parents=True, exist_ok=True)
    job.path.write_text(job.script)
    result = subprocess.run(sbatch_command(job, after), capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip() or result.stdout.strip() or f"exit {result.returncode}").splitlines()[-1]
        raise OvdetError(f"{job.path}: sbatch failed: {reason}")
    return result.stdout.strip().split(";")[0]


def submit_stages(stages: list[str], run: RunSpec, resources: Resources, dry_run: bool = False) -> list[tuple[Job, str]]:
    """Render one job per stage, chained with afterok; submit them (or only render, for ``dry_run``).

    Returns ``(job, job_id)`` pairs; a dry run's ids are placeholders like ``<train>``.
    """
    check_stages(stages, run)
    jobs = [render_job(stage, run, resources) for stage in stages]
    submitted: list[tuple[Job, str]] = []
    after = None
    for job in jobs:
        job_id = f"<{job.stage}>" if dry_run else submit_job(job, after)
        submitted.append((job, job_id))
        after = job_id
    return submitted


def cmd_submit(args) -> int:
    stages = list(STAGES) if args.stage == "pipeline" else [args.stage]
    resources = Resources(nodes=args.nodes, gpus_per_node=args.gpus_per_node, ntasks=args.ntasks,
                          cpus_per_task=args.cpus_per_task, partition=args.partition, time=args.time,
                          account=args.account)
    if resources.nodes < 1 or resources.gpus_per_node < 0:
        raise OvdetError("--nodes must be at least 1 and --gpus-per-node at least 0")
    run = load_run_spec(args.config, args.overrides, args.run_dir, repo_id=getattr(args, "repo_id", None),
                        upload=not getattr(args, "no_upload", False))
    submitted = submit_stages(stages, run, resources, dry_run=args.dry_run)
    after = None
    for job, job_id in submitted:
        if args.dry_run:
            print(f"# ==> {job.path}  ({' '.join(sbatch_command(job, after))})")
            print(job.script)
        elif len(submitted) == 1:
            print(job_id)
        else:
            print(f"{job.stage} {job_id}")
        after = job_id
    return 0


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config file or packaged config name, e.g. demo (for shard, also a data config)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes for shard and train (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=0,
                        help="GPUs per node; 0 trains on CPU (DS_ACCELERATOR=cpu) (default 0)")
    parser.add_argument("--ntasks", type=int, default=None,
                        help="training ranks in total (default nodes x max(gpus-per-node, 1))")
    parser.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per task (Ray CPUs per node for shard)")
    parser.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's)")
    parser.add_argument("--time", default=None, help="time limit per job, e.g. 24:00:00 (default: the partition's)")
    parser.add_argument("--account", default=None, help="Slurm account to charge")
    parser.add_argument("--run-dir", default=None, help="run folder (default: the config's run_dir)")
    parser.add_argument("--dry-run", action="store_true", help="print the rendered scripts, submit nothing")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides passed to every stage")


def add_publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo-id", default=None, help="ORG/NAME on the Hub (required)")
    parser.add_argument("--no-upload", action="store_true", help="export the Hub folder but upload nothing")


def add_submit_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ovdet submit STAGE ...`` on the CLI's subparsers."""
    parser = subparsers.add_parser("submit", help="render sbatch scripts from slurm/ and submit them", description=(
        "Render slurm/*.sbatch for a run (written to RUN_DIR/slurm/) and submit with sbatch; "
        "`pipeline` chains shard -> train -> eval -> publish with --dependency=afterok."))
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    helps = {"shard": "Ray shard stage (slurm/shard.sbatch)", "train": "DeepSpeed training (slurm/pretrain.sbatch)",
             "eval": "evaluation (slurm/eval.sbatch)", "publish": "Hub upload (slurm/publish.sbatch)",
             "pipeline": "shard -> train -> eval -> publish, chained with afterok"}
    for stage, text in helps.items():
        stage_parser = stages.add_parser(stage, help=text, description=text)
        add_common_arguments(stage_parser)
        if stage in ("publish", "pipeline"):
            add_publish_arguments(stage_parser)
        stage_parser.set_defaults(func=cmd_submit)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ovdet")
    add_submit_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["submit", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except OvdetError as exc:
        print(f"ovdet: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
