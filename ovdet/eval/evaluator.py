"""Evaluate a trained model on a COCO-format set: inference with the whole vocabulary -> metrics.

Every detection is scored against the whole vocabulary (generalized OV setting); the metrics
come from ``ovdet.eval.metrics`` exactly as for precomputed detections.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ovdet.config import EvalConfig
from ovdet.data.vocab import load_vocabulary
from ovdet.errors import OvdetError
from ovdet.eval.metrics import evaluate, read_json


def predict_coco(detector, gt: dict, image_root: Path, vocab, cfg: EvalConfig, progress: bool) -> list[dict]:
    """Run ``detector`` on every GT image; detections in the COCO results format."""
    images = gt["images"]
    paths = [image_root / image["file_name"] for image in images]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise OvdetError(f"{missing[0]}: evaluation image not found ({len(missing)} missing under {image_root})")
    results = detector.detect(
        paths, vocab.names, templates=cfg.prompt_templates or vocab.prompts, score_threshold=cfg.score_threshold,
        top_k=cfg.max_detections, nms_iou=cfg.nms_iou, batch_size=cfg.batch_size, progress=progress,
    )
    detections = []
    for image, found in zip(images, results, strict=True):
        for det in found:
            x1, y1, x2, y2 = det.box_xyxy
            detections.append({
                "image_id": image["id"], "category_id": vocab.ids[det.label_index],
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)], "score": round(det.score, 5),
            })
    return detections


def default_image_root(gt_path: Path, gt: dict) -> Path:
    """The GT's folder, or its ``images/`` subfolder when that is where the files are (synthetic world)."""
    first = gt["images"][0]["file_name"] if gt.get("images") else ""
    for candidate in (gt_path.parent, gt_path.parent / "images"):
        if (candidate / first).is_file():
            return candidate
    return gt_path.parent


def evaluate_model(model_path: str | Path, cfg: EvalConfig, out_dir: Path, progress: bool = True, detector=None) -> dict[str, Any]:
    """Load the model (unless given), predict on ``cfg.gt``, write detections, metrics and report."""
    from ovdet.eval.report import format_table, write_report
    from ovdet.infer import Detector

    if not cfg.gt or not cfg.vocab:
        raise OvdetError("eval needs eval.gt (COCO JSON) and eval.vocab (vocabulary YAML, preset or names)")
    gt = read_json(cfg.gt, dict)
    vocab = load_vocabulary(cfg.vocab, gt=gt)
    detector = detector or Detector.from_pretrained(model_path)
    image_root = Path(cfg.image_root) if cfg.image_root else default_image_root(Path(cfg.gt), gt)
    detections = predict_coco(detector, gt, image_root, vocab, cfg, progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "detections.json").write_text(json.dumps(detections))
    metrics = evaluate(gt, detections, vocab)
    metrics["model"] = str(model_path)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(format_table(metrics))
    write_report(out_dir, metrics, gt, detections, vocab, image_root=image_root)
    return metrics
