"""The ``ovdet`` command: parse, load config, call one library function per subcommand.

User errors (``OvdetError``) print one line and exit 2; bugs keep their traceback. Heavy imports
(torch, ray, deepspeed) happen inside the subcommands, so ``ovdet eval`` on precomputed
detections never loads torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ovdet.config import Config, is_data_config, load_config, to_yaml
from ovdet.errors import OvdetError
from ovdet.resources import config_file
from ovdet.runs import MODEL_SPEC, MODEL_WEIGHTS, RunPaths, TrainPaths

log = logging.getLogger("ovdet")

MODEL_HELP = ("model folder, training folder, Hub repo id, or hf:FOLDER (any transformers "
              "OWL-ViT/OWLv2/Grounding DINO folder; hf:ORG/NAME for a Hub one)")


def setup_logging(log_file: Path | None = None, verbose: bool = False) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    for noisy in ("DeepSpeed", "deepspeed", "ray", "httpx", "PIL", "matplotlib", "urllib3", "filelock", "faster_coco_eval"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--config", default=default, help=(
        f"YAML config file or packaged config name (default: {default or 'built-in defaults'})"))
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=100")


def resolve_config(args) -> Config:
    """Load the full tree; a YAML whose top level holds ``sources`` is a data config."""
    raw_path = config_file(args.config) if args.config else None
    overrides = list(args.overrides)
    if raw_path and is_data_config(raw_path):
        overrides = [f"data.{o}" if not o.startswith("data.") else o for o in overrides]
        cfg = load_config(None, overrides)
        data_cfg = load_config(raw_path, [o.removeprefix("data.") for o in overrides], cls=type(cfg.data))
        if not Path(data_cfg.root).is_absolute():
            data_cfg.root = str((Path(raw_path).parent / data_cfg.root).resolve())
        cfg.data = data_cfg
        return cfg
    return load_config(raw_path, overrides)


def maybe_print_config(args, cfg: Config) -> bool:
    if args.print_config:
        print(to_yaml(cfg), end="")
        return True
    return False


def cmd_synth(args) -> int:
    from ovdet.data.synthetic import generate_world

    cfg = resolve_config(args)
    if args.seed is not None:
        cfg.synth.seed = args.seed
    if maybe_print_config(args, cfg):
        return 0
    summary = generate_world(cfg.synth, Path(args.out), overwrite=args.overwrite)
    print(json.dumps(summary.get("counts", summary), indent=1))
    return 0


def cmd_shard(args) -> int:
    from ovdet.pipelines.shard import run_shard_stage
    from ovdet.pipelines.shard_report import format_summary, stage_problems

    cfg = resolve_config(args)
    if args.ray_address:
        cfg.data.ray_address = args.ray_address
    if maybe_print_config(args, cfg):
        return 0
    result = run_shard_stage(cfg.data, Path(args.out), dry_run=args.dry_run, overwrite=args.overwrite)
    print("\n".join(format_summary(result)))
    problems = stage_problems(result, cfg.data.max_rejected_fraction)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems and not args.dry_run:
        print(f"error: the shards were written; every rejection is in {Path(args.out) / 'rejected.jsonl'}",
              file=sys.stderr)
    return 1 if problems else 0


def cmd_pseudo_label(args) -> int:
    from ovdet.pipelines.pseudo_label import run_pseudo_label_stage
    from ovdet.pipelines.shard_report import format_summary

    cfg = resolve_config(args)
    if args.ray_address:
        cfg.pseudo_label.ray_address = args.ray_address
    if maybe_print_config(args, cfg):
        return 0
    manifest = run_pseudo_label_stage(checked_model_argument(args.model), Path(args.shards), Path(args.out),
                                      cfg.pseudo_label, args.source, overwrite=args.overwrite)  # fmt: skip
    print("\n".join(format_summary(manifest)))
    empty = [name for name, source in manifest["sources"].items() if source["written"] == 0]
    for name in empty:
        print(f"error: source {name}: no sample kept a box (read {manifest['sources'][name]['read']}); see "
              f"{Path(args.out) / 'rejected.jsonl'}, or lower pseudo_label.threshold", file=sys.stderr)
    return 1 if empty else 0


def cmd_train(args) -> int:
    from ovdet.train.trainer import run_training

    cfg = resolve_config(args)
    if maybe_print_config(args, cfg):
        return 0
    run = RunPaths(cfg.run_dir)
    out_dir = Path(args.out or run.train)
    setup_logging(TrainPaths(out_dir).log)
    shard_dirs = [Path(d) for d in cfg.loader.shard_dirs] or [run.shards]
    validate = None
    if cfg.eval.every and (cfg.eval.gt or cfg.eval.shards):
        from ovdet.eval.evaluator import make_validator

        validate = make_validator(cfg.eval)
    summary = run_training(cfg.train, cfg.model, cfg.loss, cfg.loader, shard_dirs, out_dir, config_as_dict(cfg),
                           validate=validate, validate_every=cfg.eval.every)
    log.info("training finished: %s", json.dumps(summary))
    return 0


def config_as_dict(cfg: Config) -> dict:
    from ovdet.config import to_dict

    return to_dict(cfg)


def cmd_eval(args) -> int:
    if args.detections:
        from ovdet.eval.metrics import evaluate_files
        from ovdet.eval.protocols import FIXED_DETS_PER_CATEGORY

        if not (args.gt and args.vocab and args.out):
            raise OvdetError("eval from detections needs --gt, --detections, --vocab and --out")
        novel = [n.strip() for n in args.novel.split(",")] if args.novel else None
        evaluate_files(args.gt, args.detections, args.vocab, args.out, novel=novel, image_root=args.image_root,
                       report=not args.no_report, engine=args.engine, protocol=args.protocol or "auto",
                       dets_per_category=FIXED_DETS_PER_CATEGORY if args.dets_per_category is None
                       else args.dets_per_category)  # fmt: skip
        return 0
    from ovdet.eval.evaluator import evaluate_model

    cfg = resolve_config(args)
    for key in ("gt", "vocab", "image_root", "protocol", "dets_per_category"):
        if getattr(args, key) is not None:
            setattr(cfg.eval, key, getattr(args, key))
    cfg.eval.synonym_prompts = cfg.eval.synonym_prompts or args.synonym_prompts
    if maybe_print_config(args, cfg):
        return 0
    run = RunPaths(cfg.run_dir)
    model = checked_model_argument(args.model) if args.model else str(run.final_model)
    evaluate_model(model, cfg.eval, Path(args.out or run.eval))
    return 0


def cmd_detect(args) -> int:
    from ovdet.detect import run_detect

    vocabulary = [v.strip() for v in args.vocab.split(",") if v.strip()]
    templates = args.templates.split("|") if args.templates else None
    run_detect(checked_model_argument(args.model), vocabulary, args.images, Path(args.out), templates, args.threshold,
               args.top_k, args.nms_iou, args.batch_size, args.nms)  # fmt: skip
    return 0


def checked_model_argument(model: str) -> str:
    """``--model`` as given, for ``Detector.from_pretrained``; a ``save_pretrained`` folder passed
    without ``hf:`` gets the hint (``ovdet.models.hf.common.read_hf_config`` checks ``hf:`` names)."""
    from ovdet.models.hf.common import HF_PREFIX, is_hf_name

    if not is_hf_name(model) and is_transformers_folder(Path(model)):
        raise OvdetError(f"--model {model}: a transformers folder, not an ovdet model folder; "
                         f"pass --model {HF_PREFIX}{model}")
    return model


def is_transformers_folder(folder: Path) -> bool:
    """A ``save_pretrained`` folder without ovdet's spec (an ovdet model folder of an ``hf:`` detector has one)."""
    return all((folder / name).is_file() for name in ("config.json", MODEL_WEIGHTS)) and not (folder / MODEL_SPEC).is_file()


def cmd_demo(args) -> int:
    from ovdet.demo import run_demo

    cfg = resolve_config(args)
    if maybe_print_config(args, cfg):
        return 0
    setup_logging(RunPaths(cfg.run_dir).demo_log)
    run_demo(cfg, overwrite=args.overwrite)
    return 0


def cmd_publish(args) -> int:
    from ovdet.publish import publish

    publish(args.checkpoint, args.repo_id, out_dir=args.out, private=args.private, revision=args.revision,
            dry_run=args.dry_run, metrics_path=args.metrics, no_metrics=args.no_metrics)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovdet", description="Open-vocabulary detection pretraining pipeline.")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write the synthetic open-vocabulary world", description=(
        "Write the synthetic OV benchmark (COCO detection with base classes only, ODVG grounding, "
        "image-text JSONL, COCO eval with all classes, vocab.yaml) deterministically."))
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=None, help="world seed (overrides synth.seed)")
    p.add_argument("--overwrite", action="store_true", help="replace a different world already in --out")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("shard", help="shard data sources into WebDataset tars with Ray", description=(
        "Read the sources of a data config, validate and normalise every record, and write tar shards, "
        "manifest.json and rejected.jsonl. Re-running resumes; --ray-address joins a running cluster."))
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="shard output folder")
    p.add_argument("--dry-run", action="store_true", help="validate the sources and print counts, write nothing")
    p.add_argument("--ray-address", default="", help="Ray cluster to join (default: RAY_ADDRESS or a local cluster)")
    p.add_argument("--overwrite", action="store_true", help="replace shards of a different data config")
    p.set_defaults(func=cmd_shard)

    p = sub.add_parser("pseudo-label", help="label image-text shards with a trained detector (OWL-ST), with Ray",
                       description=(
        "Run a trained detector over the image-text samples of a shard folder, query the names each caption "
        "mentions (plus negatives), keep boxes by the pseudo_label.* rule, and write them as a detection "
        "source (shards, manifest.json with provenance, rejected.jsonl) that `ovdet train` mixes via "
        "loader.shard_dirs. Re-running resumes; --ray-address joins a running cluster."))
    add_config_arguments(p)
    p.add_argument("--model", required=True, help="training folder, model folder, published folder or hf:FOLDER")
    p.add_argument("--shards", required=True, help="shard folder holding image_text sources (`ovdet shard`)")
    p.add_argument("--out", required=True, help="output folder for the pseudo-labelled detection shards")
    p.add_argument("--source", action="append", default=[], help="image_text source to label (repeat; default: all)")
    p.add_argument("--ray-address", default="", help="Ray cluster to join (default: RAY_ADDRESS or a local cluster)")
    p.add_argument("--overwrite", action="store_true", help="replace pseudo-labels of another model or rule")
    p.set_defaults(func=cmd_pseudo_label)

    p = sub.add_parser("train", help="train the detector with DeepSpeed", description=(
        "Train from shards (loader.shard_dirs, default RUN_DIR/shards). Resumes from the latest checkpoint "
        "unless train.resume=none. Launch with `deepspeed`, `torchrun` or `srun` for several ranks."))
    add_config_arguments(p, default="demo")
    p.add_argument("--out", default=None, help="training folder (default RUN_DIR/train)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a model or precomputed detections (AP base/novel/HM)", description=(
        "Either --gt GT.json --detections DETS.json --vocab VOCAB --out DIR (COCO results format), or a model "
        "(--model, default RUN_DIR/train/final; hf:FOLDER for any transformers OWL/Grounding DINO folder) evaluated on "
        "eval.gt with eval.vocab."))
    add_config_arguments(p, default=None)
    p.add_argument("--gt", default=None, help="COCO ground-truth JSON")
    p.add_argument("--detections", default=None, help="detections in the COCO results format")
    p.add_argument("--vocab", default=None, help="vocabulary YAML, text file, 'ov-coco', 'lvis' or 'a,b,c'")
    p.add_argument("--novel", default=None, help="comma-separated novel names for ad-hoc vocabularies")
    p.add_argument("--image-root", default=None, help="images of the GT (for inference and the report grid)")
    p.add_argument("--model", default=None, help=f"{MODEL_HELP} (default RUN_DIR/train/final)")
    p.add_argument("--out", default=None, help="output folder for metrics.json and report.md")
    p.add_argument("--engine", default="faster", choices=["faster", "pycocotools"],
                   help="COCOeval engine for precomputed detections (identical numbers; faster is faster)")
    p.add_argument("--no-report", action="store_true", help="precomputed detections: write metrics.json only")
    p.add_argument("--protocol", default=None, choices=["auto", "coco", "lvis", "lvis-fixed"], help=(
        "coco: pycocotools COCOeval; lvis: lvis-api's federated LVISEval (300 detections per image); lvis-fixed: "
        "Fixed AP (top K per category, no per-image cap). Default auto: lvis when the GT images carry "
        "neg_category_ids, else coco (eval.protocol)"))
    p.add_argument("--dets-per-category", type=int, default=None,
                   help="lvis-fixed: detections kept per category over the dataset (default 10000)")
    p.add_argument("--synonym-prompts", action="store_true", help=(
        "average each class embedding over its name and its vocabulary synonyms (eval.synonym_prompts)"))
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("detect", help="zero-shot detection with a custom vocabulary", description=(
        "Detect the given names in images or folders; writes one JSON per image and a drawn copy."))
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--vocab", required=True, help='comma-separated names, e.g. "cat,dog,red car"')
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=0.2, help="minimum score (default 0.2)")
    p.add_argument("--top-k", type=int, default=50, help="detections per image at most (default 50)")
    p.add_argument("--nms", default="auto", help=(
        "auto (none after Hungarian training, class-wise after one-to-many assigners), none, class, agnostic, "
        "soft-linear, soft-gaussian, diou, matrix, weighted (docs/losses.md)"))
    p.add_argument("--nms-iou", type=float, default=0.5, help="NMS IoU threshold (default 0.5)")
    p.add_argument("--templates", default=None, help='prompt templates separated by |, e.g. "a photo of a {}.|{}"')
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("publish", help="export a checkpoint as a Hub folder and upload it", description=(
        "Export model.safetensors, config, tokenizer, vocab, metrics and a model card; upload with huggingface_hub. "
        "A model trained from hf:FOLDER is exported as a transformers folder (AutoModelForZeroShotObjectDetection "
        "and AutoProcessor load it) with ovdet's card and metadata files."))
    p.add_argument("--checkpoint", required=True, help="model folder, training folder or run folder (of an ovdet run)")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    p.add_argument("--out", default=None, help="export folder")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default=None, help="branch to upload to")
    p.add_argument("--metrics", default=None, help="metrics.json of the evaluation (default: found next to the run)")
    p.add_argument("--no-metrics", action="store_true", help="publish without an evaluation")
    p.add_argument("--dry-run", action="store_true", help="write the folder, list the upload, send nothing")
    p.set_defaults(func=cmd_publish)

    from ovdet.submit import add_submit_parser

    add_submit_parser(sub)

    p = sub.add_parser("demo", help="run synth -> shard -> train -> eval end to end", description=(
        "The walking skeleton on the built-in synthetic world, in RUN_DIR (default runs/demo)."))
    add_config_arguments(p, default="demo")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in RUN_DIR")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        setup_logging()
    try:
        return args.func(args)
    except OvdetError as exc:
        print(f"ovdet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ovdet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
