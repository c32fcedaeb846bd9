"""Open-vocabulary transfer on the synthetic world: three data arms x seeds -> docs/results.md.

    .venv/bin/python scripts/ov_transfer.py [--steps 400 --seeds 0 1 2 --out runs/ov-transfer]

Arms (same world, same budget, same seeds): A detection only; B detection + grounding;
C detection + grounding + image-text. Novel categories have no box in any source; only the
image-text captions name them. Each run trains with `ovdet train` (periodic AP on the first
`--val-images` eval images every `--eval-every` steps, for the AP50_novel-vs-steps plot), then
`ovdet eval` on the whole eval split. Arm C is also evaluated with a vocabulary in which every
novel name is replaced by a synonym never seen in training ("crimson circle" for "red circle").
Finished runs are reused, so re-running the command resumes the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ARMS = {
    "A": ("detection only", ["synth-detection"]),
    "B": ("detection + grounding", ["synth-detection", "synth-grounding"]),
    "C": ("detection + grounding + image-text", ["synth-detection", "synth-grounding", "synth-image-text"]),
}
# What was tried when arm C missed its target: name -> (arm, what changed, overrides of configs/demo.yaml).
VARIANTS = {
    "C-no-image-loss": ("C", "no image-level loss: image-text samples only take batch share", ["loss.image_loss=none"]),
    "C-image-bce": ("C", "image loss max_score BCE (MIL) instead of max_score_softmax", ["loss.image_loss=max_score"]),
    "C-image-bce-similarity": ("C", "max_score BCE, its gradient kept off the logit shift and scale",
                               ["loss.image_loss=max_score", "loss.image_loss_grad=similarity"]),
    "C-max-size": ("C", "image loss max_size BCE (Detic) instead of max_score_softmax", ["loss.image_loss=max_size"]),
    "C-image-w2": ("C", "loss_image weight 2 instead of 1", ["loss.weights.loss_image=2.0"]),
    "C-image-start200": ("C", "loss_image off for 200 steps, then ramped in over 100 (box warm start, as Detic)",
                         ["loss.image_loss_start=200", "loss.image_loss_ramp=100"]),
    "C-share0.5": ("C", "image-text source weight 0.5 instead of 1", ["loader.source_weights={synth-image-text: 0.5}"]),
    "C-share0.5-w2": ("C", "image-text source weight 0.5 and loss_image weight 2",
                      ["loader.source_weights={synth-image-text: 0.5}", "loss.weights.loss_image=2.0"]),
    "C-negatives20": ("C", "20 negative names per image instead of 60", ["loader.num_negatives=20"]),
    "C-one-template": ("C", "training prompts always 'a photo of a {}.' (the eval template)",
                       ["loader.prompt_templates=['a photo of a {}.']", "loader.template_probability=1.0"]),
    "C-best": ("C", "the three best single changes together: one template, image-text weight 0.5, loss_image weight 2",
               ["loader.prompt_templates=['a photo of a {}.']", "loader.template_probability=1.0",
                "loader.source_weights={synth-image-text: 0.5}", "loss.weights.loss_image=2.0"]),
    "A-one-template": ("A", "arm A with training prompts always 'a photo of a {}.'",
                       ["loader.prompt_templates=['a photo of a {}.']", "loader.template_probability=1.0"]),
    "C-text-tuned": ("C", "text tower tuned (lr x0.1) instead of frozen", ["model.freeze_text=false"]),
}
PARTS = ("base", "novel", "all", "hm")
REPO = Path(__file__).resolve().parents[1]
OVDET = [sys.executable, "-m", "ovdet.cli"]


def run(command: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as stream:
        result = subprocess.run(command, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT,
                                env={**os.environ, "DS_ACCELERATOR": "cpu"})
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}; see {log}")


def prepare_data(out: Path, world_name: str = "compositional") -> tuple[Path, Path]:
    """The world ``synth.world=world_name`` (drawn once) and its shards (the shard stage skips shards
    whose input is unchanged)."""
    world, shards = out / "synth", out / "shards"
    if (world / "world.json").exists():
        drawn = json.loads((world / "world.json").read_text())["config"].get("world", "compositional")
        if drawn != world_name:
            sys.exit(f"{world} holds the {drawn} world, not {world_name}: choose another --out")
    else:
        run([*OVDET, "synth", "--config", "configs/demo.yaml", "--out", str(world), f"synth.world={world_name}"],
            out / "logs" / "synth.log")
    run([*OVDET, "shard", "--config", "configs/data/synthetic.yaml", "--out", str(shards), f"root={world.resolve()}",
         "--overwrite"], out / "logs" / "shard.log")
    return world, shards


def synonym_vocabulary(world: Path, out: Path) -> Path:
    """The eval vocabulary with each novel name replaced by its first synonym."""
    vocab = yaml.safe_load((world / "vocab.yaml").read_text())
    for category in vocab["categories"]:
        if category["split"] == "novel":
            category["name"], category["synonyms"] = category["synonyms"][0], [category["name"]]
    path = out / "vocab-novel-synonyms.yaml"
    path.write_text(yaml.safe_dump(vocab, sort_keys=False))
    return path


# Settings that cannot change a run without image-text samples (loss.image_loss*, the loss_image
# weight): its reuse ignores them.
IMAGE_LOSS_KEYS = ("loss.image_loss", "loss.weights.loss_image")


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


RESULT_NEUTRAL_KEYS = ("train.checkpoint_every", "train.keep_checkpoints", "train.collective_timeout_s",
                       "recipe")  # a recipe is its settings, which are compared key by key
# The tables here were measured with the OWL recipe (the demo's default until configs/demo.yaml moved
# to YOLO-World's): every run pins it, and a run's own overrides come after it
RECIPE_PIN = ("recipe=owl",)


def changed_settings(out: Path, sources: list[str], train_overrides: list[str]) -> list[str]:
    """The config keys on which the finished run in ``out`` differs from the run now asked for
    (keys the run's config predates count as their defaults)."""
    from ovdet.config import Config, load_config, to_dict

    stored = flatten(json.loads((out / "train" / "config.json").read_text()))
    wanted = flatten(to_dict(load_config(REPO / "configs" / "demo.yaml", train_overrides)))
    defaults = flatten(to_dict(Config()))
    keys = [k for k in sorted(set(wanted) | set(stored)) if stored.get(k, defaults.get(k)) != wanted.get(k, defaults.get(k))]
    # synth.* and data.* say how `make demo` draws and shards its own world; what a run here trains
    # on is the shards, which train_and_eval checks by checksum
    keys = [k for k in keys if not k.startswith(("synth.", "data."))]
    # how often a run checkpoints, how many it keeps and how long a rank waits for another change
    # nothing it computes (resume is bitwise: tests/train): a run interrupted under one setting
    # resumes under another
    keys = [k for k in keys if k not in RESULT_NEUTRAL_KEYS]
    if "synth-image-text" not in sources:
        keys = [k for k in keys if not k.startswith(IMAGE_LOSS_KEYS)]
    # a mixing weight of a source the arm does not train on cannot change it
    return [k for k in keys if not (k.startswith("loader.source_weights.") and k.split(".", 2)[2] not in sources)]


CODE_PATHS = ("ovdet", "pipelines", "configs", "requirements.lock")  # what decides a run's numbers


def code_state() -> dict[str, str]:
    """The commit and a digest of the code a run is trained with: the committed files under
    ``CODE_PATHS`` plus uncommitted changes and untracked files there (``commit`` then ends in
    ``+changes``). Stored per run in ``code.json``; a finished run is reused only with the same digest."""
    import hashlib

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout

    diff = git("diff", "HEAD", "--", *CODE_PATHS)
    untracked = git("ls-files", "--others", "--exclude-standard", "--", *CODE_PATHS).split()
    digest = hashlib.sha256(git("ls-files", "-s", "--", *CODE_PATHS).encode() + diff.encode())
    for name in untracked:
        digest.update(name.encode() + (REPO / name).read_bytes())
    commit = git("rev-parse", "--short=12", "HEAD").strip()
    return {"commit": commit + ("+changes" if diff or untracked else ""), "code": digest.hexdigest()}


def add_code_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reuse-across-code", action="store_true", help=(
        "keep finished runs trained with other code (default: train them again); the tables name each "
        "run's commit either way"))


def run_commit(out: Path) -> str:
    """The commit ``code.json`` records for a finished run ("unrecorded" for runs older than it)."""
    path = out / "code.json"
    return json.loads(path.read_text())["commit"] if path.exists() else "unrecorded"


def commits_line(outs: list[Path]) -> str:
    """"Runs trained at commit X" (or each commit with its run count) for a table's runs."""
    counts: dict[str, int] = {}
    for commit in map(run_commit, outs):
        counts[commit] = counts.get(commit, 0) + 1
    listed = ", ".join(f"`{commit}` ({n} run{'s' * (n > 1)})" for commit, n in counts.items())
    return f"Runs trained at commit {listed}."


def shard_checksums(shard_dirs: list[Path], sources: list[str]) -> dict[str, list[str]]:
    """The sha256 of every shard of ``sources``, per source (from the manifests of ``shard_dirs``)."""
    found = {}
    for folder in shard_dirs:
        found.update(json.loads((folder / "manifest.json").read_text())["sources"])
    return {name: [shard["sha256"] for shard in found[name]["shards"]] for name in sources}


def train_and_eval(arm: str, seed: int, args, world: Path, shards: Path, name: str = "",
                   overrides: tuple[str, ...] = (), steps: int = 0, arms: dict | None = None,
                   extra_shards: tuple[Path, ...] = ()) -> Path:
    """Train and evaluate one run in ``args.out/NAME-seedS``, reusing a finished run with the same config.
    ``arms`` (default ``ARMS``) names each arm's sources, found in ``shards`` and ``extra_shards``;
    arms with image-text supervision (C and after) are also evaluated with the synonym vocabulary."""
    arms = arms or ARMS
    steps = steps or args.steps
    out = args.out / (f"{name or arm}-seed{seed}" if steps == args.steps else f"{name or arm}-steps{steps}-seed{seed}")
    eval_overrides = [f"eval.gt={world / 'eval.json'}", f"eval.vocab={world / 'vocab.yaml'}",
                      f"eval.image_root={world / 'images'}"]
    sources = "[" + ",".join(arms[arm][1]) + "]"
    shard_dirs = [shards, *extra_shards]
    train_overrides = [
        f"loader.shard_dirs=[{','.join(map(str, shard_dirs))}]", f"loader.sources={sources}", f"train.seed={seed}", f"loader.seed={seed}",
        f"train.steps={steps}", f"train.checkpoint_every={min(steps, 200)}", f"eval.every={args.eval_every}",
        f"eval.max_images={args.val_images}", *eval_overrides, *RECIPE_PIN, *overrides,
    ]
    data = shard_checksums(shard_dirs, arms[arm][1])
    if (out / "train" / "config.json").exists():
        changed = changed_settings(out, arms[arm][1], train_overrides)
        if not (out / "data.json").exists() or json.loads((out / "data.json").read_text()) != data:
            changed.append("training shards")
        stored = json.loads((out / "code.json").read_text()) if (out / "code.json").exists() else {}
        if stored.get("code") != args.code["code"]:
            if getattr(args, "reuse_across_code", False):
                print(f"{out.name}: trained at commit {run_commit(out)}, kept (--reuse-across-code)", flush=True)
            else:
                changed.append(f"code (trained at {run_commit(out)}, now {args.code['commit']})")
        if changed:
            print(f"{out.name}: {', '.join(changed)} changed; training again", flush=True)
            shutil.rmtree(out)
    if not (out / "train" / "final" / "model.safetensors").exists():
        out.mkdir(parents=True, exist_ok=True)
        (out / "data.json").write_text(json.dumps(data, indent=1))
        (out / "code.json").write_text(json.dumps(args.code, indent=1))
        run([*OVDET, "train", "--config", "configs/demo.yaml", "--out", str(out / "train"), *train_overrides],
            out / "train.log")
    if not (out / "eval" / "metrics.json").exists():
        run([*OVDET, "eval", "--config", "configs/demo.yaml", "--model", str(out / "train" / "final"),
             "--out", str(out / "eval"), *eval_overrides], out / "eval.log")
    if arm >= "C" and not (out / "eval-synonyms" / "metrics.json").exists():
        run([*OVDET, "eval", "--config", "configs/demo.yaml", "--model", str(out / "train" / "final"),
             "--out", str(out / "eval-synonyms"), *eval_overrides[:1], f"eval.vocab={synonym_vocabulary(world, args.out)}",
             eval_overrides[2]], out / "eval-synonyms.log")
    return out


def display_path(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


NOTES_MARKER = "<!-- notes: kept when the script rewrites the tables -->"


def mean_spread(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def metric_lists(outs: list[Path], folder: str) -> dict[str, dict[str, list[float]]]:
    """{"AP50"|"AP": {part: [value per run]}} from each run's ``folder/metrics.json``."""
    metrics = [json.loads((o / folder / "metrics.json").read_text()) for o in outs]
    return {key: {part: [m[key][part] for m in metrics] for part in PARTS} for key in ("AP50", "AP")}


def collect(runs: dict[str, list[Path]]) -> dict:
    table = {arm: metric_lists(outs, "eval") for arm, outs in runs.items()}
    table["C-synonyms"] = metric_lists(runs["C"], "eval-synonyms")
    return table


def curves(outs: list[Path]) -> tuple[list[int], list[float]]:
    """Mean over seeds of the periodic val/AP50_novel, per step."""
    by_step: dict[int, list[float]] = {}
    for out in outs:
        for line in (out / "train" / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            if "val/AP50_novel" in row:
                by_step.setdefault(row["step"], []).append(row["val/AP50_novel"])
    steps = sorted(by_step)
    return steps, [statistics.mean(by_step[s]) for s in steps]


def plot(runs: dict[str, list[Path]], path: Path, val_images: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for arm, outs in runs.items():
        steps, values = curves(outs)
        axis.plot(steps, values, marker="o", label=f"{arm}: {ARMS[arm][0]}")
    axis.set_xlabel("training step")
    axis.set_ylabel(f"AP50 novel (first {val_images} eval images)")
    axis.set_title("Novel-category AP50 during training (mean over seeds)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def results_markdown(table: dict, args, plot_name: str) -> str:
    command = f".venv/bin/python scripts/ov_transfer.py --steps {args.steps} --seeds {' '.join(map(str, args.seeds))}"
    if args.variants != list(VARIANTS):
        command += (" --variants " + " ".join(args.variants)).rstrip()
    if args.variants:
        command += " --variant-seeds " + " ".join(map(str, args.variant_seeds))
    if args.long_steps:
        command += f" --long-steps {args.long_steps} --long-seeds " + " ".join(map(str, args.long_seeds))
        if args.long_arms != list(ARMS):
            command += " --long-arms " + " ".join(args.long_arms)
    lines = [
        "# Open-vocabulary transfer on the synthetic world", "",
        f"Reproduce the whole table (about 3.5 minutes per run on a 2-core CPU): `{command}`",
        f"(runs in `{display_path(args.out)}`; finished runs are reused). Setting: the demo's world (600 detection, "
        f"300 grounding, 600 image-text training images; 150 eval images; 48 colour x shape categories, "
        f"12 novel), the demo model (frozen MiniLM text tower, EfficientNet-Lite0), batch 8, "
        f"{args.steps} steps per run, seeds {', '.join(map(str, args.seeds))} (training and loader seed; the world "
        "is fixed), everything else as in `configs/demo.yaml` (image-text labels: the world's vocabulary names "
        "matched in each caption; image-level loss `max_score_softmax`, weight 1; image-text source weight 1 of "
        "2.5). Novel categories have no box in any source; only image-text captions name them. "
        "Values are mean ± standard deviation over seeds, evaluated on the whole eval split with the full "
        "48-name vocabulary (generalized setting).", "",
        "| arm | sources | AP50 base | AP50 novel | AP50 all | AP50 HM | AP base | AP novel | AP all | AP HM |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ("A", "B", "C"):
        row = table[arm]
        cells = [mean_spread(row[k][p]) for k in ("AP50", "AP") for p in PARTS]
        lines.append(f"| {arm} | {ARMS[arm][0]} | " + " | ".join(cells) + " |")
    lines += ["", table["commits"]]
    a_novel = statistics.mean(table["A"]["AP50"]["novel"])
    c_base, c_novel = statistics.mean(table["C"]["AP50"]["base"]), statistics.mean(table["C"]["AP50"]["novel"])
    syn = table["C-synonyms"]["AP50"]
    lines += [
        "", "## Targets", "",
        f"- arm C AP50_novel ≥ 0.5 × its AP50_base: {c_novel:.3f} vs 0.5 × {c_base:.3f} = {0.5 * c_base:.3f} → "
        f"{'met' if c_novel >= 0.5 * c_base else 'missed'}",
        f"- arm C AP50_novel ≥ arm A AP50_novel + 0.10: {c_novel:.3f} vs {a_novel:.3f} + 0.10 = {a_novel + 0.10:.3f} → "
        f"{'met' if c_novel >= a_novel + 0.10 else 'missed'}",
        "", "## Zero-shot synonyms (arm C, frozen text tower)", "",
        "Every novel category renamed to a synonym never seen in training (colour or shape word swapped: "
        "\"crimson circle\" for \"red circle\", see `docs/synthetic.md`), base names unchanged:", "",
        "| vocabulary | AP50 base | AP50 novel | AP50 HM |", "|---|---|---|---|",
        f"| original names | {mean_spread(table['C']['AP50']['base'])} | {mean_spread(table['C']['AP50']['novel'])} | "
        f"{mean_spread(table['C']['AP50']['hm'])} |",
        f"| novel names → synonyms | {mean_spread(syn['base'])} | {mean_spread(syn['novel'])} | {mean_spread(syn['hm'])} |",
        "", "## AP50_novel during training", "", f"![AP50 novel against training steps]({plot_name})", "",
    ]
    return "\n".join(lines + long_markdown(table, args) + variants_markdown(table, args)) + "\n"


def long_markdown(table: dict, args) -> list[str]:
    """The three arms at the demo's step budget (``--long-steps``)."""
    if not args.long_steps:
        return []
    seeds = ", ".join(map(str, args.long_seeds))
    lines = [
        f"## At the demo's budget ({args.long_steps} steps)", "",
        f"Arms {', '.join(args.long_arms)} trained for {args.long_steps} steps (the `make demo` length), seed(s) {seeds} "
        "(one seed: no spread):", "",
        "| arm | AP50 base | AP50 novel | AP50 all | AP50 HM | AP base | AP novel | AP HM |", "|---|---|---|---|---|---|---|---|",
    ]
    show = mean_spread if len(args.long_seeds) > 1 else (lambda values: f"{values[0]:.3f}")
    for arm in args.long_arms:
        row = table[f"{arm}-long"]
        cells = [show(row["AP50"][p]) for p in PARTS] + [show(row["AP"][p]) for p in ("base", "novel", "hm")]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines + [""]


def variants_markdown(table: dict, args) -> list[str]:
    """The table of what was tried: each variant of arm C next to arms A and C on the same seeds."""
    if not args.variants:
        return []
    seeds = ", ".join(map(str, args.variant_seeds))
    lines = [
        "## What was tried", "",
        f"Variants of arm C, {args.steps} steps, seed(s) {seeds}, each changing one thing against `configs/demo.yaml` "
        "(the overrides are in `VARIANTS` in `scripts/ov_transfer.py`); arms A and C on the same seed(s) for "
        "reference. Screening runs on one seed: read differences below the seed spread of the main table as noise.", "",
        "| run | what changed | AP50 base | AP50 novel | AP50 HM | novel − A novel |", "|---|---|---|---|---|---|",
    ]
    a_novel = statistics.mean(table["A-variant-seeds"]["AP50"]["novel"])
    rows = [("A", ARMS["A"][0], table["A-variant-seeds"]), ("C", ARMS["C"][0], table["C-variant-seeds"])]
    rows += [(name, VARIANTS[name][1], table[name]) for name in args.variants]
    for name, what, row in rows:
        ap50 = row["AP50"]
        cells = [f"{statistics.mean(ap50[p]):.3f}" for p in ("base", "novel", "hm")]
        lines.append(f"| {name} | {what} | " + " | ".join(cells) + f" | {statistics.mean(ap50['novel']) - a_novel:+.3f} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--val-images", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("runs/ov-transfer"))
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                        help="variants of arm C to run (default: all; none: just the three arms)")
    parser.add_argument("--variant-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--long-steps", type=int, default=0, help="also train the three arms this long (0: no)")
    parser.add_argument("--long-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--long-arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    add_code_arguments(parser)
    args = parser.parse_args()
    args.out, args.code = args.out.resolve(), code_state()
    world, shards = prepare_data(args.out)
    runs = {arm: [] for arm in ARMS}
    for seed in args.seeds:
        for arm in ARMS:
            runs[arm].append(train_and_eval(arm, seed, args, world, shards))
            print(f"done: arm {arm} seed {seed}", flush=True)
    variant_runs = {}
    for name in args.variants:
        arm, _, overrides = VARIANTS[name]
        variant_runs[name] = [train_and_eval(arm, seed, args, world, shards, name, tuple(overrides))
                              for seed in args.variant_seeds]
        print(f"done: variant {name}", flush=True)
    table = collect(runs)
    table["commits"] = commits_line([out for outs in runs.values() for out in outs])
    for arm in ("A", "C"):
        reference = [train_and_eval(arm, seed, args, world, shards) for seed in args.variant_seeds]
        table[f"{arm}-variant-seeds"] = metric_lists(reference, "eval")
    table.update({name: metric_lists(outs, "eval") for name, outs in variant_runs.items()})
    if args.long_steps:
        for arm in args.long_arms:
            outs = [train_and_eval(arm, seed, args, world, shards, steps=args.long_steps) for seed in args.long_seeds]
            table[f"{arm}-long"] = metric_lists(outs, "eval")
    args.docs.mkdir(parents=True, exist_ok=True)
    plot(runs, args.docs / "results_ap50_novel.png", args.val_images)
    results = args.docs / "results.md"
    notes = results.read_text().partition(NOTES_MARKER)[2] if results.exists() else ""
    results.write_text(results_markdown(table, args, "results_ap50_novel.png") + NOTES_MARKER + (notes or "\n"))
    (args.out / "table.json").write_text(json.dumps(table, indent=1))
    print((args.docs / "results.md").read_text())


if __name__ == "__main__":
    main()
