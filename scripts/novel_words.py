"""Learning words no box ever showed: arms A-D on the novel-words world -> docs/results.md.

    .venv/bin/python scripts/novel_words.py [--steps 400 --seeds 0 1 2 --out runs/novel-words]

The world is `synth.world=novel-words` (docs/synthetic.md): the 9 novel names use colour and shape
words that no box and no grounding phrase carries; only image-text captions name them. Arms (same
world, budget and seeds): A detection only, B + grounding, C + image-text (scripts/ov_transfer.py's
arms), and D, OWL-ST self-training: arm C's model of the same seed pseudo-labels the image-text
images (`ovdet pseudo-label`), then round 2 trains from scratch, with the same budget, on detection +
grounding + the pseudo-labels + image-text. The pseudo-labels are scored against the hidden ground
truth of the image-text images (the synthetic world redraws each image's objects). Finished runs,
pseudo-labels and evaluations are reused when their config, data and code are unchanged, so
re-running the command resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ov_transfer import (  # noqa: E402
    ARMS,
    OVDET,
    PARTS,
    REPO,
    add_code_arguments,
    code_state,
    commits_line,
    curves,
    display_path,
    mean_spread,
    metric_lists,
    prepare_data,
    run,
    train_and_eval,
)

PSEUDO_SOURCE = "pseudo-synth-image-text"
NW_ARMS = {
    **ARMS,
    "D": ("round 2 on detection + grounding + pseudo-labels + image-text (round 1: arm C)",
          [*ARMS["C"][1], PSEUDO_SOURCE]),
}
# What was tried when a target was missed: name -> (arm, what changed, training overrides,
# pseudo-label overrides). A D variant pseudo-labels with the C run of the same seed and main settings
# (round 3: with its D run); its training overrides change round 2 only.
VARIANTS = {
    "C-max-score": ("C", "image loss max_score BCE (MIL over queries) instead of max_score_softmax",
                    ["loss.image_loss=max_score"], []),
    "C-image-w2": ("C", "loss_image weight 2 instead of 1", ["loss.weights.loss_image=2.0"], []),
    "C-share2": ("C", "image-text source weight 2 instead of 1", ["loader.source_weights={synth-image-text: 2.0}"], []),
    "D-threshold0.1": ("D", "pseudo-label threshold 0.1 instead of 0.3", [], ["pseudo_label.threshold=0.1"]),
    "D-top1": ("D", "pseudo-label top_k 1 instead of 3", [], ["pseudo_label.top_k=1"]),
    "D-pseudo-w2": ("D", "pseudo-label source weight 2 instead of 1 (its share of samples 2 of 4.5)",
                    ["loader.source_weights={pseudo-synth-image-text: 2.0}"], []),
    "D-round3": ("D", "round 3: labelled by the round-2 (arm D) model instead of arm C's", [], []),
}
ROUND3 = "D-round3"  # its teacher is the seed's arm D run
SHORT = {"A": "detection", "B": "+ grounding", "C": "+ image-text", "D": "round 2: + pseudo-labels"}
MARK_BEGIN, MARK_END = "<!-- novel-words: begin -->", "<!-- novel-words: end -->"
PLOT = "results_novel_words_ap50_novel.png"


def pseudo_label(c_run: Path, shards: Path, out: Path, overrides: list[str]) -> Path:
    """Arm C's final model labels the image-text shards into ``out`` (finished shards are kept)."""
    run([*OVDET, "pseudo-label", "--model", str(c_run / "train" / "final"), "--shards", str(shards),
         "--source", "synth-image-text", "--out", str(out), "--overwrite", *overrides], out.parent / f"{out.name}.log")
    return out


def iou(a: list[float], b: list[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score_pseudo_labels(pseudo: Path, world: Path) -> dict[str, dict[str, float]]:
    """Precision and recall of the pseudo-boxes against the drawn objects of the image-text images, per
    split (base / novel names): a box is right when it overlaps a not yet matched object of its own name
    at IoU >= 0.5 (boxes taken by score, highest first). Recall counts every object of the labelled and
    the rejected images. Cached in ``pseudo/score.json`` by the manifest's digest of the shards."""
    from ovdet.pipelines.pseudo_label import read_shard

    from ovdet.config import SynthConfig
    from ovdet.data.synthetic import stored_config
    from ovdet.data.synthetic_scenes import novel_names, sample_image

    manifest = json.loads((pseudo / "manifest.json").read_text())
    digest = [shard["sha256"] for shard in manifest["sources"][PSEUDO_SOURCE]["shards"]]
    cache = pseudo / "score.json"
    if cache.exists() and json.loads(cache.read_text())["shards"] == digest:
        return json.loads(cache.read_text())["score"]
    config = stored_config(json.loads((world / "world.json").read_text()))
    cfg = SynthConfig(**config)
    novel = set(novel_names(cfg.world))
    labelled = {}
    for tar in sorted((pseudo / PSEUDO_SOURCE).glob("*.tar")):
        for record, _ in read_shard(tar):
            labelled[record.meta["row"] - 1] = record
    counts = {split: {"boxes": 0, "right": 0, "objects": 0, "found": 0} for split in ("base", "novel")}
    for index in range(cfg.num_image_text):
        objects = sample_image(cfg, "image_text", index).objects
        for obj in objects:
            counts["novel" if obj.name in novel else "base"]["objects"] += 1
        record = labelled.get(index)
        if record is None:
            continue
        scores = record.meta["pseudo_label"]["scores"]
        taken = set()
        for k in sorted(range(len(scores)), key=lambda k: -scores[k]):
            name = record.category_names[k]
            split = "novel" if name in novel else "base"
            counts[split]["boxes"] += 1
            match = [j for j, obj in enumerate(objects) if obj.name == name and j not in taken
                     and iou(record.boxes[k], obj.box) >= 0.5]
            if match:
                best = max(match, key=lambda j: iou(record.boxes[k], objects[j].box))
                taken.add(best)
                counts[split]["right"] += 1
                counts[split]["found"] += 1
    score = {
        split: {**c, "precision": c["right"] / c["boxes"] if c["boxes"] else 0.0,
                "recall": c["found"] / c["objects"] if c["objects"] else 0.0}
        for split, c in counts.items()
    }
    score["images"] = {"labelled": len(labelled), "rejected": cfg.num_image_text - len(labelled)}
    cache.write_text(json.dumps({"shards": digest, "score": score}, indent=1))
    return score


def train_arms(args, world: Path, shards: Path, seed: int) -> dict[str, Path]:
    """Arms A-D of one seed, with the main settings; ``"pseudo"``: arm D's pseudo-labels."""
    outs = {arm: train_and_eval(arm, seed, args, world, shards, overrides=tuple(args.overrides), arms=NW_ARMS)
            for arm in "ABC"}
    outs["pseudo"] = pseudo_label(outs["C"], shards, args.out / f"pseudo-seed{seed}", args.pseudo_overrides)
    outs["D"] = train_and_eval("D", seed, args, world, shards, overrides=tuple(args.overrides), arms=NW_ARMS,
                               extra_shards=(outs["pseudo"],))
    return outs


def train_long(args, world: Path, shards: Path, seed: int) -> dict[str, Path]:
    """``--long-arms`` of one seed at ``--long-steps``; D pseudo-labels with the C run of that budget."""
    outs = {arm: train_and_eval(arm, seed, args, world, shards, overrides=tuple(args.overrides), arms=NW_ARMS,
                                steps=args.long_steps) for arm in "ABC" if arm in args.long_arms or arm == "C"}
    if "D" in args.long_arms:
        outs["pseudo"] = pseudo_label(outs["C"], shards, args.out / f"pseudo-steps{args.long_steps}-seed{seed}",
                                      args.pseudo_overrides)
        outs["D"] = train_and_eval("D", seed, args, world, shards, overrides=tuple(args.overrides), arms=NW_ARMS,
                                   extra_shards=(outs["pseudo"],), steps=args.long_steps)
    return outs


def variant_pseudo_dir(args, name: str, seed: int, steps: int | None) -> Path:
    """Where a D variant's pseudo-labels of one seed and budget are written."""
    budget = f"-steps{steps}" if steps and steps != args.steps else ""
    return args.out / f"{name}-pseudo{budget}-seed{seed}"


def train_variant(args, world: Path, shards: Path, seed: int, name: str, main: dict[str, Path],
                  steps: int | None = None) -> Path:
    """One variant's run of one seed at ``steps`` (default ``--steps``; ``main`` holds the seed's runs
    of that budget): a C variant trains C with its overrides; a D variant labels with its rule from
    the seed's main C run (round 3: from the main D run) and trains round 2 with its overrides."""
    arm, _, overrides, pseudo_overrides = VARIANTS[name]
    overrides = (*args.overrides, *overrides)
    if arm == "C":
        return train_and_eval("C", seed, args, world, shards, name, overrides, arms=NW_ARMS, steps=steps)
    teacher = main["D"] if name == ROUND3 else main["C"]
    pseudo = pseudo_label(teacher, shards, variant_pseudo_dir(args, name, seed, steps),
                          [*args.pseudo_overrides, *pseudo_overrides])
    return train_and_eval("D", seed, args, world, shards, name, overrides, arms=NW_ARMS, extra_shards=(pseudo,),
                          steps=steps)


def plot(runs: dict[str, list[Path]], path: Path, val_images: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for arm, outs in runs.items():
        steps, values = curves(outs)
        axis.plot(steps, values, marker="o", label=f"{arm}: {SHORT[arm]}")
    axis.set_xlabel("training step")
    axis.set_ylabel(f"AP50 novel (first {val_images} eval images)")
    axis.set_title("novel-words world: novel AP50 during training (mean over seeds)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def command_line(args) -> str:
    command = f".venv/bin/python scripts/novel_words.py --steps {args.steps} --seeds {' '.join(map(str, args.seeds))}"
    if args.overrides:
        command += " --overrides " + " ".join(args.overrides)
    if args.pseudo_overrides:
        command += " --pseudo-overrides " + " ".join(args.pseudo_overrides)
    if args.variants:
        command += " --variants " + " ".join(args.variants)
        if args.variant_seeds != [0]:
            command += " --variant-seeds " + " ".join(map(str, args.variant_seeds))
        if args.variants_long:
            command += " --variants-long"
    if args.long_steps:
        command += (f" --long-steps {args.long_steps} --long-seeds {' '.join(map(str, args.long_seeds))}"
                    f" --long-arms {' '.join(args.long_arms)}")
    return command


def target(text: str, value: float, bar: float) -> str:
    return f"- {text}: {value:.3f} vs {bar:.3f} → {'met' if value >= bar else 'missed'}"


def markdown(table: dict, scores: list[dict], args) -> str:
    mean = {arm: {k: {p: statistics.mean(v) for p, v in parts.items()} for k, parts in table[arm].items()}
            for arm in NW_ARMS}
    lines = [
        MARK_BEGIN, "## The novel-words world: learning words no box ever showed", "",
        f"Reproduce: `{command_line(args)}` (runs in `{display_path(args.out)}`; finished runs are reused). "
        f"World `synth.world=novel-words` (`docs/synthetic.md`: 48 base and 9 novel categories; the novel colour and "
        f"shape words occur in no box and no grounding phrase, only in image-text captions), the demo model and "
        f"settings (`configs/demo.yaml`{', with ' + ', '.join(f'`{o}`' for o in args.overrides) if args.overrides else ''}), "
        f"{args.steps} steps per run and per round, seeds {', '.join(map(str, args.seeds))}, evaluated on the whole "
        "eval split with the 57-name vocabulary (generalized setting). Mean ± standard deviation over seeds.", "",
        "| arm | sources | AP50 base | AP50 novel | AP50 all | AP50 HM | AP base | AP novel | AP HM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in NW_ARMS:
        cells = [mean_spread(table[arm]["AP50"][p]) for p in PARTS]
        cells += [mean_spread(table[arm]["AP"][p]) for p in ("base", "novel", "hm")]
        lines.append(f"| {arm} | {NW_ARMS[arm][0]} | " + " | ".join(cells) + " |")
    a, c, d = mean["A"]["AP50"], mean["C"]["AP50"], mean["D"]["AP50"]
    lines += [
        "", table["commits"], "", "### Targets", "",
        target("C AP50_novel ≥ A AP50_novel + 0.15", c["novel"], a["novel"] + 0.15),
        target("C AP50_novel ≥ 0.5 × C AP50_base", c["novel"], 0.5 * c["base"]),
        target("D AP50_novel ≥ C AP50_novel + 0.05", d["novel"], c["novel"] + 0.05),
        "", "### Synonyms of the novel names (frozen text tower)", "",
        "Each novel name renamed with a synonym never seen in training (`pink` → `rose`, `cyan` → `turquoise`, "
        "`white` → `ivory`, `arrow` → `pointer`, `crescent` → `sickle`, `ring` → `hoop`: the vocabulary's first "
        "synonym), base names unchanged:", "",
        "| arm | vocabulary | AP50 base | AP50 novel | AP50 HM |", "|---|---|---|---|---|",
    ]
    for arm in ("C", "D"):
        for label, key in (("original names", arm), ("novel names → synonyms", f"{arm}-synonyms")):
            row = table[key]["AP50"]
            lines.append(f"| {arm} | {label} | {mean_spread(row['base'])} | {mean_spread(row['novel'])} | "
                         f"{mean_spread(row['hm'])} |")
    rule = ", ".join(args.pseudo_overrides) or "the default rule: threshold 0.3, top_k 3, 20 negatives"
    lines += [
        "", "### Pseudo-labels against the hidden ground truth", "",
        f"Arm C's model of each seed labels the {scores[0]['images']['labelled'] + scores[0]['images']['rejected']} "
        f"image-text images ({rule}; `docs/pseudo-label.md`). A box is right when it overlaps a drawn object of its "
        "name at IoU ≥ 0.5 (each object matched once); recall is over every drawn object of the images.", "",
        "| split | boxes | precision | recall | images labelled |", "|---|---|---|---|---|",
    ]
    def counts(values: list[float]) -> str:
        return f"{statistics.mean(values):.0f} ± {statistics.stdev(values) if len(values) > 1 else 0:.0f}"

    for split in ("base", "novel"):
        boxes = counts([s[split]["boxes"] for s in scores])
        precision = mean_spread([s[split]["precision"] for s in scores])
        recall = mean_spread([s[split]["recall"] for s in scores])
        images = counts([s["images"]["labelled"] for s in scores]) if split == "base" else ""
        lines.append(f"| {split} | {boxes} | {precision} | {recall} | {images} |")
    lines += ["", "### AP50_novel during training", "", f"![AP50 novel against training steps, arms A-D]({PLOT})", ""]
    if args.long_steps:
        show = mean_spread if len(args.long_seeds) > 1 else (lambda values: f"{values[0]:.3f}")
        lines += [
            f"### At {args.long_steps} steps", "",
            f"Arms {', '.join(args.long_arms)} at {args.long_steps} steps per run and per round, seed(s) "
            f"{', '.join(map(str, args.long_seeds))}{' (one seed: no spread)' if len(args.long_seeds) == 1 else ''}; "
            "D's round 1 is the C run of this budget:", "",
            "| arm | AP50 base | AP50 novel | AP50 HM | AP novel | novel → synonyms AP50 |", "|---|---|---|---|---|---|",
        ]
        for arm in args.long_arms:
            row = table[f"{arm}-long"]
            synonyms = show(table[f"{arm}-long-synonyms"]["AP50"]["novel"]) if arm >= "C" else ""
            lines.append(f"| {arm} | {show(row['AP50']['base'])} | {show(row['AP50']['novel'])} | "
                         f"{show(row['AP50']['hm'])} | {show(row['AP']['novel'])} | {synonyms} |")
        if "D" in args.long_arms:
            novel = [s["novel"] for s in table["long-pseudo"]]
            lines += ["", f"Its pseudo-labels: novel precision {show([n['precision'] for n in novel])}, recall "
                          f"{show([n['recall'] for n in novel])} ({statistics.mean(n['boxes'] for n in novel):.0f} boxes)."]
        if {"C", "D"} <= set(args.long_arms):
            c_long, d_long = table["C-long"]["AP50"], table["D-long"]["AP50"]
            gains = [d - c for d, c in zip(d_long["novel"], c_long["novel"], strict=True)]
            c_mean = {part: statistics.mean(values) for part, values in c_long.items()}
            lines += [
                "", f"D − C novel AP50 per seed: {', '.join(f'{g:+.3f}' for g in gains)} (mean {show(gains)}).", "",
                f"Targets at {args.long_steps} steps (arm A at {args.steps} steps: no box or phrase carries a novel word):",
                "", target("C AP50_novel ≥ A AP50_novel + 0.15", c_mean["novel"], a["novel"] + 0.15),
                target("C AP50_novel ≥ 0.5 × C AP50_base", c_mean["novel"], 0.5 * c_mean["base"]),
                target("D AP50_novel ≥ C AP50_novel + 0.05", statistics.mean(d_long["novel"]), c_mean["novel"] + 0.05),
            ]
        lines.append("")
    if args.variants:
        budget = args.long_steps if args.variants_long else args.steps
        lines += [
            "### What was tried", "",
            f"One change each against the main settings at {budget} steps, seed(s) "
            f"{', '.join(map(str, args.variant_seeds))} (screening: differences below the table's seed spread are "
            "noise). A D variant is round 2 on the pseudo-labels of the same-seed C run of that budget, labelled "
            "with the changed rule; round 3 is labelled by the same-seed D run.", "",
            "| run | what changed | AP50 base | AP50 novel | AP50 HM | novel − C novel | novel → synonyms AP50 |",
            "|---|---|---|---|---|---|---|",
        ]
        c_novel = statistics.mean(table["C-variant-seeds"]["AP50"]["novel"])
        rows = [(arm, NW_ARMS[arm][0], table[f"{arm}-variant-seeds"]) for arm in ("A", "C", "D")
                if f"{arm}-variant-seeds" in table]
        rows += [(name, VARIANTS[name][1], table[name]) for name in args.variants]
        for name, what, row in rows:
            cells = [f"{statistics.mean(row['AP50'][p]):.3f}" for p in ("base", "novel", "hm")]
            synonyms = row.get("synonyms")
            lines.append(f"| {name} | {what} | " + " | ".join(cells)
                         + f" | {statistics.mean(row['AP50']['novel']) - c_novel:+.3f} | "
                         + (f"{statistics.mean(synonyms['AP50']['novel']):.3f}" if synonyms else "") + " |")
        pseudo = [(name, table[f"{name}-pseudo"]) for name in args.variants if f"{name}-pseudo" in table]
        show = mean_spread if len(args.variant_seeds) > 1 else (lambda values: f"{values[0]:.3f}")
        if pseudo:
            lines += ["", "Their pseudo-labels against the hidden ground truth (novel objects):", "",
                      "| run | novel boxes | novel precision | novel recall |", "|---|---|---|---|"]
            for name, scored in pseudo:
                novel = [s["novel"] for s in scored]
                lines.append(f"| {name} | {statistics.mean(n['boxes'] for n in novel):.0f} | "
                             f"{show([n['precision'] for n in novel])} | {show([n['recall'] for n in novel])} |")
        lines.append("")
    return "\n".join(lines + [MARK_END])


def write_section(results: Path, section: str) -> None:
    """Replace the novel-words section of ``results`` (or append it): scripts/ov_transfer.py keeps
    everything below its notes marker, where this section lives."""
    text = results.read_text() if results.exists() else ""
    if MARK_BEGIN in text:
        head, _, rest = text.partition(MARK_BEGIN)
        text = head + section + rest.partition(MARK_END)[2]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    results.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--val-images", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("runs/novel-words"))
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides for every arm's training")
    parser.add_argument("--pseudo-overrides", nargs="*", default=[], help="pseudo_label.* overrides for arm D")
    parser.add_argument("--variants", nargs="*", default=[], choices=list(VARIANTS))
    parser.add_argument("--variant-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants-long", action="store_true",
                        help="train the variants at --long-steps against the long runs (default: at --steps)")
    parser.add_argument("--long-steps", type=int, default=0, help="also train --long-arms this long (0: no)")
    parser.add_argument("--long-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--long-arms", nargs="+", default=["C", "D"], choices=list(NW_ARMS))
    add_code_arguments(parser)
    args = parser.parse_args()
    args.out, args.code = args.out.resolve(), code_state()
    world, shards = prepare_data(args.out, "novel-words")
    runs: dict[str, list[Path]] = {arm: [] for arm in NW_ARMS}
    scores, by_seed = [], {}
    for seed in args.seeds:
        by_seed[seed] = train_arms(args, world, shards, seed)
        for arm in NW_ARMS:
            runs[arm].append(by_seed[seed][arm])
        scores.append(score_pseudo_labels(by_seed[seed]["pseudo"], world))
        print(f"done: seed {seed}", flush=True)
    table = {arm: metric_lists(outs, "eval") for arm, outs in runs.items()}
    table.update({f"{arm}-synonyms": metric_lists(runs[arm], "eval-synonyms") for arm in ("C", "D")})
    table["commits"] = commits_line([out for outs in runs.values() for out in outs])
    long_runs = [train_long(args, world, shards, seed) for seed in args.long_seeds] if args.long_steps else []
    if args.variants:
        if args.variants_long:
            missing = sorted(set(args.variant_seeds) - set(args.long_seeds))
            if not args.long_steps or missing or not {"C", "D"} <= set(args.long_arms):
                parser.error(f"--variants-long needs --long-steps, --long-arms C D and every --variant-seeds in "
                             f"--long-seeds (missing {missing})")
            main_runs = {seed: outs for seed, outs in zip(args.long_seeds, long_runs, strict=True)}
        else:
            for seed in args.variant_seeds:
                if seed not in by_seed:
                    by_seed[seed] = train_arms(args, world, shards, seed)
            main_runs = by_seed
        for arm in ("A", "C", "D"):
            if all(arm in main_runs[s] for s in args.variant_seeds):
                outs = [main_runs[s][arm] for s in args.variant_seeds]
                table[f"{arm}-variant-seeds"] = metric_lists(outs, "eval")
                if arm >= "C":
                    table[f"{arm}-variant-seeds"]["synonyms"] = metric_lists(outs, "eval-synonyms")
        steps = args.long_steps if args.variants_long else None
        for name in args.variants:
            outs = [train_variant(args, world, shards, seed, name, main_runs[seed], steps)
                    for seed in args.variant_seeds]
            table[name] = metric_lists(outs, "eval")
            table[name]["synonyms"] = metric_lists(outs, "eval-synonyms")
            if VARIANTS[name][0] == "D":
                table[f"{name}-pseudo"] = [score_pseudo_labels(variant_pseudo_dir(args, name, seed, steps), world)
                                           for seed in args.variant_seeds]
            print(f"done: variant {name}", flush=True)
    if args.long_steps:
        for arm in args.long_arms:
            table[f"{arm}-long"] = metric_lists([outs[arm] for outs in long_runs], "eval")
            if arm >= "C":
                table[f"{arm}-long-synonyms"] = metric_lists([outs[arm] for outs in long_runs], "eval-synonyms")
        if "D" in args.long_arms:
            table["long-pseudo"] = [score_pseudo_labels(outs["pseudo"], world) for outs in long_runs]
        print("done: long runs", flush=True)
    args.docs.mkdir(parents=True, exist_ok=True)
    plot(runs, args.docs / PLOT, args.val_images)
    section = markdown(table, scores, args)
    write_section(args.docs / "results.md", section)
    (args.out / "table.json").write_text(json.dumps({"table": table, "pseudo_labels": scores}, indent=1))
    print(section)


if __name__ == "__main__":
    main()
