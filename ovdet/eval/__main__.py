"""``python -m ovdet.eval --gt GT.json --detections DETS.json --vocab VOCAB --out DIR [--novel a,b]``.

The same call as ``ovdet eval``, without the CLI's other imports.
"""

from __future__ import annotations

import argparse
import sys

from ovdet.errors import OvdetError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ovdet.eval", description=__doc__)
    parser.add_argument("--gt", required=True, help="COCO ground-truth JSON")
    parser.add_argument("--detections", required=True, help="COCO results JSON (list of detections)")
    parser.add_argument("--vocab", required=True, help="vocab YAML/text file, preset (ov-coco, lvis) or 'a,b,c'")
    parser.add_argument("--out", required=True, help="output folder for metrics.json and report.md")
    parser.add_argument("--novel", default=None, help="comma-separated novel names (override the vocab split)")
    parser.add_argument("--image-root", default=None, help="images for the report's example grid")
    parser.add_argument("--engine", default="faster", choices=["faster", "pycocotools"])
    parser.add_argument("--no-report", action="store_true", help="write metrics.json only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from ovdet.eval.metrics import evaluate_files

    args = parse_args(argv)
    novel = [name.strip() for name in args.novel.split(",") if name.strip()] if args.novel else None
    try:
        evaluate_files(args.gt, args.detections, args.vocab, args.out, novel=novel,
                       report=not args.no_report, image_root=args.image_root, engine=args.engine)  # fmt: skip
    except OvdetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
