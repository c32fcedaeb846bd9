"""The synthetic open-vocabulary world on disk: coloured shapes on textured backgrounds.

``generate_world(cfg, out_dir)`` writes four splits of different images, each in the published
format of its kind (COCO detection with base annotations only, ODVG grounding, image-text JSONL,
COCO eval with every category), plus ``vocab.yaml`` and ``world.json``. The categories and the
drawing of each image are in ``ovdet.data.synthetic_scenes``.
``docs/synthetic.md`` documents the layout with examples.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from PIL import Image
from tqdm import tqdm

from ovdet.config import SynthConfig
from ovdet.data.synthetic_scenes import (
    SPLITS,
    SynthImage,
    category_synonyms,
    novel_names,
    sample_image,
    world_categories,
)
from ovdet.errors import OvdetError
from ovdet.fileio import read_json, write_json_atomic, write_jsonl_atomic, write_text_atomic

FORMAT_VERSION = 1
TEXT_FILES = (
    "detection_train.json",
    "grounding_train.jsonl",
    "image_text_train.jsonl",
    "eval.json",
    "vocab.yaml",
)


def list_names(names: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """``"a red circle, a blue star and an orange heart"`` and each name's character span."""
    text, spans = "", []
    for i, name in enumerate(names):
        if i:
            text += " and " if i == len(names) - 1 else ", "
        text += "an " if name[0] in "aeiou" else "a "
        spans.append((len(text), len(text) + len(name)))
        text += name
    return text, spans


def caption_for(image: SynthImage, names: list[str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """The caption naming each distinct category once (first-drawn first) and each name's span."""
    distinct = list(dict.fromkeys(names))
    listing, spans = list_names(distinct)
    start = image.template.index("{}")
    caption = image.template.format(listing)
    return caption, {name: (start + a, start + b) for name, (a, b) in zip(distinct, spans, strict=True)}


def odvg_line(image: SynthImage) -> dict[str, Any]:
    """ODVG grounding record (Open-GroundingDino): base objects only, spans into the caption."""
    base = [o for o in image.objects if not o.is_novel]
    caption, spans = caption_for(image, [o.name for o in base])
    regions = [{"bbox": o.box, "phrase": o.name, "tokens_positive": [list(spans[o.name])]} for o in base]
    return {
        "filename": image.file_name,
        "height": image.height,
        "width": image.width,
        "grounding": {"caption": caption, "regions": regions},
    }


def image_text_line(image: SynthImage) -> dict[str, Any]:
    caption, _ = caption_for(image, [o.name for o in image.objects])
    return {"image": image.file_name, "caption": caption}


def coco_dataset(images: list[SynthImage], with_novel: bool, world: str) -> dict[str, Any]:
    """COCO detection JSON listing all the world's categories; novel objects are annotated only ``with_novel``."""
    coco_images, annotations = [], []
    for image_id, image in enumerate(images, start=1):
        coco_images.append(
            {"id": image_id, "file_name": image.file_name, "width": image.width, "height": image.height}
        )
        for obj in image.objects:
            if obj.is_novel and not with_novel:
                continue
            x1, y1, x2, y2 = obj.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.category_id,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": obj.area,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c["id"], "name": c["name"], "supercategory": c["shape"]} for c in world_categories(world)]
    return {"images": coco_images, "annotations": annotations, "categories": categories}


def vocab_document(world: str) -> dict[str, Any]:
    categories = [
        {
            "id": c["id"],
            "name": c["name"],
            "split": c["split"],
            "synonyms": category_synonyms(c["colour"], c["shape"]),
        }
        for c in world_categories(world)
    ]
    return {"categories": categories, "prompts": ["a photo of a {}."]}


def check_config(cfg: SynthConfig) -> None:
    """Reject settings the generator cannot honour, naming the key."""
    problems = []
    if cfg.image_size < 16:
        problems.append(f"synth.image_size must be >= 16, got {cfg.image_size}")
    if not 1 <= cfg.min_objects <= cfg.max_objects:
        problems.append(
            f"synth needs 1 <= min_objects <= max_objects, got {cfg.min_objects}, {cfg.max_objects}"
        )
    if not 0 < cfg.min_scale <= cfg.max_scale <= 0.7:
        # above 0.7 a rotated shape (bbox up to sqrt(2) x side) no longer fits in the image
        problems.append(
            f"synth needs 0 < min_scale <= max_scale <= 0.7, got {cfg.min_scale}, {cfg.max_scale}"
        )
    if not 1 <= cfg.jpeg_quality <= 95:
        problems.append(f"synth.jpeg_quality must be in 1..95, got {cfg.jpeg_quality}")
    for split in SPLITS:
        if split_size(cfg, split) < 0:
            problems.append(f"synth.num_{split} must be >= 0, got {split_size(cfg, split)}")
    if problems:
        raise OvdetError("; ".join(problems))


def split_size(cfg: SynthConfig, split: str) -> int:
    return getattr(cfg, f"num_{split}")


def generate_split(cfg: SynthConfig, out_dir: Path, split: str, bar: tqdm) -> list[SynthImage]:
    """Draw and save every image of ``split``; the returned images hold objects, not pixels."""
    (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(split_size(cfg, split)):
        image = sample_image(cfg, split, index)
        Image.fromarray(image.pixels).save(
            out_dir / "images" / image.file_name, format="JPEG", quality=cfg.jpeg_quality, optimize=False
        )
        images.append(dataclasses.replace(image, pixels=None))
        bar.update(1)
    return images


def world_summary(cfg: SynthConfig, counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(cfg),
        "counts": counts,
        "files": {
            "images": "images",
            "detection": "detection_train.json",
            "grounding": "grounding_train.jsonl",
            "image_text": "image_text_train.jsonl",
            "eval": "eval.json",
            "vocab": "vocab.yaml",
        },
        "num_categories": len(world_categories(cfg.world)),
        "novel_names": novel_names(cfg.world),
    }


def existing_world(cfg: SynthConfig, out_dir: Path, overwrite: bool) -> dict[str, Any] | None:
    """The summary of the identical world already in ``out_dir``; raises if a different one is there."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return None
    marker = out_dir / "world.json"
    found = read_json(marker, dict) if marker.is_file() else None
    wanted = world_summary(cfg, {})
    if found and found.get("format_version") == FORMAT_VERSION and stored_config(found) == wanted["config"]:
        return found
    if overwrite:
        clear_world(out_dir)
        return None
    what = (
        "a different world (see its world.json)" if found else "files but no world.json (an interrupted run?)"
    )
    raise OvdetError(f"{out_dir}: holds {what}; pick another folder or overwrite it (overwrite=True)")


def stored_config(summary: dict[str, Any]) -> dict[str, Any]:
    """A world.json's config, keys it predates at their defaults (a world drawn before ``synth.world``
    existed is the compositional world, and still the same world)."""
    return {**dataclasses.asdict(SynthConfig()), **summary.get("config", {})}


def clear_world(out_dir: Path) -> None:
    """Remove what a world consists of, and nothing else the folder may hold."""
    (out_dir / "world.json").unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(out_dir / "images" / split, ignore_errors=True)
    for name in TEXT_FILES:
        (out_dir / name).unlink(missing_ok=True)


def generate_world(
    cfg: SynthConfig, out_dir: str | Path, overwrite: bool = False, progress: bool = True
) -> dict:
    """Write the synthetic world into ``out_dir`` and return its summary (``world.json`` plus ``out_dir``).

    Re-running with the same config is a no-op; a folder holding anything else raises
    ``OvdetError`` unless ``overwrite``. ``world.json`` is written last, so it marks a complete world.
    """
    check_config(cfg)
    out_dir = Path(out_dir)
    found = existing_world(cfg, out_dir, overwrite)
    if found is not None:
        return {**found, "out_dir": str(out_dir)}
    out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(split_size(cfg, split) for split in SPLITS)
    with tqdm(total=total, desc="synth", unit="img", file=sys.stderr, disable=not progress) as bar:
        images = {split: generate_split(cfg, out_dir, split, bar) for split in SPLITS}
    counts = write_annotations(out_dir, images, cfg.world)
    summary = world_summary(cfg, counts)
    write_json_atomic(out_dir / "world.json", summary, indent=2, sort_keys=False)
    return {**summary, "out_dir": str(out_dir)}


def write_annotations(out_dir: Path, images: dict[str, list[SynthImage]], world: str) -> dict[str, dict[str, int]]:
    """Write every split's annotation file and the vocabulary; return per-split counts."""
    detection = coco_dataset(images["detection"], with_novel=False, world=world)
    evaluation = coco_dataset(images["eval"], with_novel=True, world=world)
    grounding = [odvg_line(image) for image in images["grounding"]]
    write_json_atomic(out_dir / "detection_train.json", detection, indent=None, sort_keys=False)
    write_json_atomic(out_dir / "eval.json", evaluation, indent=None, sort_keys=False)
    write_jsonl_atomic(out_dir / "grounding_train.jsonl", grounding)
    write_jsonl_atomic(
        out_dir / "image_text_train.jsonl", [image_text_line(image) for image in images["image_text"]]
    )
    write_text_atomic(out_dir / "vocab.yaml", yaml.safe_dump(vocab_document(world), sort_keys=False))
    return {
        "detection": {"images": len(detection["images"]), "annotations": len(detection["annotations"])},
        "grounding": {
            "images": len(grounding),
            "regions": sum(len(g["grounding"]["regions"]) for g in grounding),
        },
        "image_text": {"images": len(images["image_text"])},
        "eval": {"images": len(evaluation["images"]), "annotations": len(evaluation["annotations"])},
    }
