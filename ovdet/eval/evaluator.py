"""Evaluate a trained model on a COCO-format set or on shards: inference with the whole vocabulary -> metrics.

Every detection is scored against the whole vocabulary (generalized OV setting); the metrics
come from ``ovdet.eval.metrics`` exactly as for precomputed detections. An evaluation set is
either COCO JSON + images (``eval.gt``, ``eval.image_root``) or a shard folder written by
``ovdet shard`` (``eval.shards``), whose boxes are mapped to vocabulary ids by category name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ovdet.config import EvalConfig
from ovdet.data.vocab import load_vocabulary
from ovdet.errors import OvdetError
from ovdet.eval.metrics import evaluate, write_metrics
from ovdet.eval.protocols import MODEL_DETECTIONS_PER_IMAGE, resolve_protocol
from ovdet.fileio import read_json, write_json_atomic
from ovdet.ops.boxes import box_xyxy_to_xywh


def predict_coco(detector, gt: dict, images, vocab, cfg: EvalConfig, progress: bool) -> list[dict]:
    """Run ``detector`` on every GT image (``images``: paths or PIL images in GT order); COCO results,
    at most ``cfg.max_detections`` per image (0: as many as the evaluation protocol keeps). The raw
    vocabulary names are the classes (the detector makes them prompt text); ``cfg.synonym_prompts``
    averages each class embedding over its name and its vocabulary synonyms (off, as Detic's ``--avg_synonyms``)."""
    protocol = resolve_protocol(cfg.protocol, gt, cfg.dets_per_category)
    results = detector.detect(
        images, vocab.names, templates=cfg.prompt_templates or vocab.prompts, score_threshold=cfg.score_threshold,
        top_k=cfg.max_detections or MODEL_DETECTIONS_PER_IMAGE[protocol.name], nms_iou=cfg.nms_iou,
        batch_size=cfg.batch_size, progress=progress, nms=cfg.nms, nms_sigma=cfg.nms_sigma,
        synonyms=[c.synonyms for c in vocab.categories] if cfg.synonym_prompts else None,
    )
    detections = []
    for image, found in zip(gt["images"], results, strict=True):
        for det, box in zip(found, xywh_boxes([d.box_xyxy for d in found]), strict=True):
            detections.append({
                "image_id": image["id"], "category_id": vocab.ids[det.label_index],
                "bbox": [round(v, 2) for v in box], "score": round(det.score, 5),
            })
    return detections


def xywh_boxes(boxes_xyxy: list[list[float]]) -> list[list[float]]:
    """xyxy -> COCO xywh, in float64 (the precision of the Python floats given and returned)."""
    import torch  # loaded already: a detector or the trainer runs in this process

    return box_xyxy_to_xywh(torch.tensor(boxes_xyxy, dtype=torch.float64).reshape(-1, 4)).tolist()


def image_paths(gt: dict, image_root: Path) -> AnnotatedImages:
    paths = [image_root / image["file_name"] for image in gt["images"]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise OvdetError(f"{missing[0]}: evaluation image not found ({len(missing)} missing under {image_root})")
    return AnnotatedImages(paths, gt["images"])


class AnnotatedImages(Sequence):
    """The ground truth's images, each opened when the detector reaches it (``ovdet.infer.open_image``:
    EXIF orientation applied, as in training) and checked against the GT's ``width``/``height``:
    boxes annotated on other pixels (another orientation or size) would be scored wrongly."""

    def __init__(self, paths: list[Path], entries: list[dict]):
        self.paths, self.entries = paths, entries

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return AnnotatedImages(self.paths[index], self.entries[index])
        from ovdet.infer import open_image

        image, entry = open_image(self.paths[index]), self.entries[index]
        annotated = (entry.get("width"), entry.get("height"))
        if all(annotated) and image.size != annotated:
            raise OvdetError(f"{self.paths[index]}: image is {image.width}x{image.height} (after EXIF orientation), "
                             f"the ground truth says {annotated[0]}x{annotated[1]} (image id {entry.get('id')})")
        return image


class ShardImages:
    """The images of a shard folder, decoded on demand (a sequence Detector.detect can slice)."""

    def __init__(self, locations: list[tuple[Path, Any]]):
        self.locations = locations

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, index):
        import io

        from PIL import Image

        from ovdet.data.shards import read_member

        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        shard, loc = self.locations[index]
        with open(shard, "rb") as stream:
            data = read_member(stream, shard, loc, "jpg")
        return Image.open(io.BytesIO(data)).convert("RGB")


def eval_set_from_shards(shard_dir: Path, vocab) -> tuple[dict, ShardImages]:
    """COCO GT (ids from the vocabulary, by category name) and lazy images from a shard folder."""
    from ovdet.data.records import Record
    from ovdet.data.shards import index_tar, read_manifest, read_member

    gt: dict[str, list] = {"images": [], "annotations": [], "categories": [{"id": c.id, "name": c.name} for c in vocab.categories]}
    locations = []
    for source in read_manifest(shard_dir)["sources"].values():
        for shard in source["shards"]:
            path = Path(shard_dir) / shard["path"]
            with open(path, "rb") as stream:
                for loc in index_tar(path):
                    text = read_member(stream, path, loc, "json")
                    record = Record.from_json(json.loads(text))
                    add_record_to_gt(gt, record, vocab)
                    locations.append((path, loc))
    return gt, ShardImages(locations)


def add_record_to_gt(gt: dict, record, vocab) -> None:
    image_id = len(gt["images"]) + 1
    image = {"id": image_id, "file_name": record.key, "width": record.width, "height": record.height}
    if "not_exhaustive_categories" in record.meta:  # an LVIS record: keep its federated labels
        image["neg_category_ids"] = vocabulary_ids(record.negatives, vocab)
        image["not_exhaustive_category_ids"] = vocabulary_ids(record.meta["not_exhaustive_categories"], vocab)
    gt["images"].append(image)
    crowd = record.is_crowd or [0] * len(record.boxes)
    boxes = xywh_boxes(record.boxes)
    areas = record.meta.get("areas") or [w * h for _, _, w, h in boxes]
    for box, name, is_crowd, area in zip(boxes, record.category_names, crowd, areas, strict=True):
        try:
            category_id = vocab.by_name(name).id
        except OvdetError:
            raise OvdetError(f"shard record {record.key}: category {name!r} is not in the vocabulary") from None
        gt["annotations"].append({
            "id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": category_id,
            "bbox": box, "area": area, "iscrowd": int(is_crowd),
        })


def vocabulary_ids(names: list[str], vocab) -> list[int]:
    """Vocabulary ids of ``names``; names outside the vocabulary are not evaluated, so they are left out."""
    ids = []
    for name in names:
        try:
            ids.append(vocab.by_name(name).id)
        except OvdetError:
            continue
    return ids


def default_image_root(gt_path: Path, gt: dict) -> Path:
    """The GT's folder, or its ``images/`` subfolder when that is where the files are (synthetic world)."""
    first = gt["images"][0]["file_name"] if gt.get("images") else ""
    for candidate in (gt_path.parent, gt_path.parent / "images"):
        if (candidate / first).is_file():
            return candidate
    return gt_path.parent


def evaluate_model(model_path: str | Path, cfg: EvalConfig, out_dir: Path, progress: bool = True, detector=None) -> dict[str, Any]:
    """Load the model (unless given), predict on the evaluation set, write detections, metrics and report."""
    from ovdet.eval.report import format_table, write_report
    from ovdet.infer import Detector

    if not (cfg.gt or cfg.shards) or not cfg.vocab:
        raise OvdetError("eval needs eval.gt (COCO JSON) or eval.shards (a shard folder), and eval.vocab")
    if cfg.shards:
        vocab = load_vocabulary(cfg.vocab)
        gt, images = eval_set_from_shards(Path(cfg.shards), vocab)
        image_root = None
    else:
        gt = read_json(cfg.gt, dict)
        vocab = load_vocabulary(cfg.vocab, gt=gt)
        image_root = Path(cfg.image_root) if cfg.image_root else default_image_root(Path(cfg.gt), gt)
        images = image_paths(gt, image_root)
    detector = detector or Detector.from_pretrained(model_path)
    detections = predict_coco(detector, gt, images, vocab, cfg, progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "detections.json", detections, indent=None, sort_keys=False)
    metrics = evaluate(gt, detections, vocab, protocol=cfg.protocol, dets_per_category=cfg.dets_per_category)
    metrics["model"] = str(model_path)
    settings = detector.nms_settings(cfg.nms, cfg.nms_iou, cfg.nms_sigma)
    metrics["nms"] = {"method": settings.method, "iou": settings.iou, "sigma": settings.sigma, "configured": cfg.nms}
    print(f"nms: {settings.method}" + (f" (auto: {detector.spec.get('assigner', 'hungarian')} assignment)"
                                        if cfg.nms == "auto" else ""))
    write_metrics(out_dir, metrics)
    print(format_table(metrics))
    write_report(out_dir, metrics, gt, detections, vocab, image_root=image_root)
    return metrics


def make_validator(cfg: EvalConfig):
    """A ``validate(detector_module, step) -> {name: value}`` callable for periodic evaluation during
    training (rank 0 evaluates, other ranks return nothing); the set is loaded once, capped at
    ``cfg.max_images``."""
    from ovdet import dist
    from ovdet.infer import Detector

    cache: dict[str, Any] = {}

    def validate(model, step: int) -> dict[str, float]:
        if not dist.is_main():
            return {}
        if not cache:
            cache["gt"], cache["images"], cache["vocab"] = load_capped_eval_set(cfg)
        was_training = model.training
        try:
            detector = Detector(model, model.spec)  # puts the model in eval mode
            detections = predict_coco(detector, cache["gt"], cache["images"], cache["vocab"], cfg, progress=False)
        finally:
            model.train(was_training)
        metrics = evaluate(cache["gt"], detections, cache["vocab"], protocol=cfg.protocol,
                           dets_per_category=cfg.dets_per_category)  # fmt: skip
        values = {f"{key}_{part}": metrics[key][part] for key in ("AP", "AP50") for part in ("base", "novel", "all", "hm")}
        return values | {key: metrics[key] for key in ("APr", "APc", "APf") if key in metrics}

    return validate


def load_capped_eval_set(cfg: EvalConfig):
    if cfg.shards:
        vocab = load_vocabulary(cfg.vocab)
        gt, images = eval_set_from_shards(Path(cfg.shards), vocab)
    else:
        gt = read_json(cfg.gt, dict)
        vocab = load_vocabulary(cfg.vocab, gt=gt)
        images = image_paths(gt, Path(cfg.image_root) if cfg.image_root else default_image_root(Path(cfg.gt), gt))
    if cfg.max_images and len(gt["images"]) > cfg.max_images:
        keep = {image["id"] for image in gt["images"][: cfg.max_images]}
        gt = {**gt, "images": gt["images"][: cfg.max_images],
              "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
        images = images[: cfg.max_images]
    return gt, images, vocab
