"""ODVG JSONL (Open-GroundingDino / MM-Grounding-DINO): detection and grounding records.

``source.paths[0]`` is the JSONL; an optional ``paths[1]`` is the label map JSON
(``{"0": "person", ...}``) used for detection instances that carry a ``label`` but no
``category``. One record per non-blank line; the key is ``"{source}-{line number}"`` because
ODVG lines have no id (one image may appear on several lines).

Detection line: ``{"filename", "height", "width", "detection": {"instances": [{"bbox": [x1, y1,
x2, y2], "label": int, "category": str}]}}`` -> kind ``detection``.
Grounding line: ``{"filename", "height", "width", "grounding": {"caption": str, "regions":
[{"bbox": [x1, y1, x2, y2] or a list of boxes, "phrase": str, "tokens_positive": [[s, e], ...]}]}}``
-> kind ``grounding``, one ``Phrase`` per region, box names = phrase text, category ids -1.
A line with both parts is one grounding record holding both (``odvg_items``). A malformed line is
one rejected record (``path:line``); a bad box or region is dropped alone (``AnnotationError``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ovdet.config import SourceConfig
from ovdet.data.records import Phrase, Record
from ovdet.data.sources.common import (
    BadLine,
    BadRecord,
    CategoryTable,
    check_box,
    check_caption,
    check_spans,
    image_root,
    image_size,
    input_files,
    line_error,
    make_key,
    read_jsonl,
    span_text,
    with_dropped,
)
from ovdet.errors import AnnotationError, OvdetError, RecordError
from ovdet.fileio import read_json


def read_odvg(
    source: SourceConfig, root: Path, categories: CategoryTable | None = None
) -> Iterator[Record | RecordError]:
    """Records of the ODVG JSONL ``source.paths[0]`` (label map: optional ``paths[1]``).
    ``categories`` stays empty: ODVG has no category table (the label map names labels only)."""
    files = input_files(source, root)
    if len(files) > 2:
        raise OvdetError(
            f"source {source.name!r}: odvg takes one JSONL and an optional label map, got {len(files)} files"
        )
    label_map = read_label_map(files[1]) if len(files) == 2 else {}
    images_dir = image_root(source, root)
    for line_number, line in read_jsonl(files[0]):
        if isinstance(line, BadLine):
            yield line_error(files[0], line_number, line)
            continue
        key = make_key(source.name, line_number)
        try:
            yield from odvg_items(key, source.name, line, label_map, images_dir)
        except BadRecord as exc:
            yield RecordError(key, exc.reason, boxes=count_boxes(line))


def read_label_map(path: Path) -> dict[int, str]:
    """``{"0": "person", ...}`` as ``{0: "person"}``."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise OvdetError(f'{path}: a label map must be an object {{"label": "name"}}')
    try:
        return {int(label): str(name) for label, name in data.items()}
    except ValueError:
        raise OvdetError(f"{path}: label map keys must be integers") from None


def odvg_items(
    key: str, source_name: str, line: Any, label_map: dict[int, str], images_dir: Path
) -> list[Record | RecordError]:
    """The line's dropped boxes and regions, then its record; ``BadRecord`` for an invalid line.

    A line with both ``detection`` and ``grounding`` (Open-GroundingDino's ``data_format.md``)
    keeps both: a grounding record whose boxes are the instances (category ids and names) and
    then the regions' boxes (phrases), with the caption.
    """
    if not isinstance(line, dict):
        raise BadRecord("line is not a JSON object")
    if not isinstance(line.get("filename"), str) or not line["filename"]:
        raise BadRecord("missing filename")
    width, height = image_size(line.get("width"), line.get("height"))
    detection, grounding = line.get("detection"), line.get("grounding")
    if not isinstance(detection, dict) and not isinstance(grounding, dict):
        raise BadRecord("neither a detection nor a grounding record")
    record = Record(
        key=key,
        source=source_name,
        kind="grounding" if isinstance(grounding, dict) else "detection",
        image_path=str(images_dir / line["filename"]),
        width=width,
        height=height,
        meta={"file_name": line["filename"], "clipped_boxes": 0},
    )
    if isinstance(grounding, dict):
        record.caption = check_caption(grounding.get("caption"))
    dropped: list[AnnotationError] = []
    annotated = 0
    if isinstance(detection, dict):
        annotated += add_instances(record, detection.get("instances"), label_map, dropped)
    if isinstance(grounding, dict):
        annotated += add_regions(record, grounding.get("regions"), dropped)
    if isinstance(detection, dict) and isinstance(grounding, dict):
        record.meta["odvg_parts"] = ["detection", "grounding"]
    return with_dropped(record, dropped, annotated)


def count_boxes(line: Any) -> int:
    """How many boxes an invalid line held (the box-level counts of a rejected line)."""
    if not isinstance(line, dict):
        return 0
    detection, grounding = line.get("detection"), line.get("grounding")
    instances = detection.get("instances") if isinstance(detection, dict) else None
    regions = grounding.get("regions") if isinstance(grounding, dict) else None
    count = len(instances) if isinstance(instances, list) else 0
    if isinstance(regions, list):
        count += sum(len(region_boxes(r.get("bbox"))) if isinstance(r, dict) else 1 for r in regions)
    return count


def add_instances(record: Record, instances: Any, label_map: dict[int, str], dropped: list[AnnotationError]) -> int:
    """Append every valid detection instance; invalid ones go to ``dropped``. Returns how many there were."""
    if not isinstance(instances, list):
        raise BadRecord("detection.instances is not a list")
    for index, instance in enumerate(instances):
        what = f"box {index}"
        try:
            if not isinstance(instance, dict):
                raise BadRecord(f"{what} is not an object")
            name = instance_name(what, instance, label_map)
            box, was_clipped = check_box(what, instance.get("bbox"), record.width, record.height)
        except BadRecord as exc:
            dropped.append(AnnotationError(record.key, what, exc.reason))
            continue
        append_box(record, box, was_clipped, instance["label"], name)
    return len(instances)


def instance_name(what: str, instance: dict[str, Any], label_map: dict[int, str]) -> str:
    """The category name: the label map's when one is given (it is the source of truth), else ``category``."""
    label = instance.get("label")
    if not isinstance(label, int) or isinstance(label, bool):
        raise BadRecord(f"{what} has no integer label")
    if label_map:
        if label not in label_map:
            raise BadRecord(f"{what} has unknown category id {label}")
        return label_map[label]
    if not isinstance(instance.get("category"), str) or not instance["category"]:
        raise BadRecord(f"{what} has unknown category id {label}")
    return instance["category"]


def add_regions(record: Record, regions: Any, dropped: list[AnnotationError]) -> int:
    """Append every valid region as a phrase with its valid boxes; a region without valid text or
    spans is dropped with its boxes, a bad box of a region alone. Returns how many boxes there were."""
    if not isinstance(regions, list):
        raise BadRecord("grounding.regions is not a list")
    total = 0
    for index, region in enumerate(regions):
        what = f"phrase {index}"
        boxes = region_boxes(region.get("bbox")) if isinstance(region, dict) else [None]
        total += len(boxes)
        try:
            if not isinstance(region, dict):
                raise BadRecord(f"{what} is not an object")
            text, spans = region_text(what, region, record.caption)
        except BadRecord as exc:
            dropped.append(AnnotationError(record.key, what, exc.reason, boxes=len(boxes)))
            continue
        first_box = len(record.boxes)
        for box_index, box in enumerate(boxes):
            box_what = what if len(boxes) == 1 else f"{what} box {box_index}"
            try:
                checked, was_clipped = check_box(box_what, box, record.width, record.height)
            except BadRecord as exc:
                dropped.append(AnnotationError(record.key, box_what, exc.reason))
                continue
            append_box(record, checked, was_clipped, -1, text)
        if len(record.boxes) > first_box:
            record.phrases.append(Phrase(text, spans, list(range(first_box, len(record.boxes)))))
    return total


def region_text(what: str, region: dict[str, Any], caption: str) -> tuple[str, list[tuple[int, int]]]:
    """The phrase text and its caption spans.

    ``tokens_positive`` when present gives the spans; the text is ``phrase`` when it is a string,
    else (mmdetection's ``goldg2odvg.py`` writes a list for a non-contiguous span) the caption
    text of the spans. Without ``tokens_positive``, each part of ``phrase`` is found in the
    caption in order.
    """
    phrase = region.get("phrase")
    if "tokens_positive" in region:
        spans = check_spans(what, region["tokens_positive"], caption)
        text = phrase if isinstance(phrase, str) and phrase.strip() else span_text(caption, sorted(spans))
        return text, spans
    parts = [phrase] if isinstance(phrase, str) else phrase
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) and p.strip() for p in parts):
        raise BadRecord(f"{what} has no text")
    spans, start = [], 0
    for part in parts:
        found = find_words(caption, part, start)
        if found < 0:
            raise BadRecord(f"{what} is not in the caption and has no tokens_positive")
        spans.append((found, found + len(part)))
        start = found + len(part)
    return " ".join(parts), spans


def find_words(caption: str, text: str, start: int) -> int:
    """Where ``text`` first occurs in ``caption`` from ``start`` as whole words ("a" is not the
    "a" of "and"), else as any substring; -1 when absent."""
    match = re.compile(rf"(?<!\w){re.escape(text)}(?!\w)").search(caption, start)
    return match.start() if match else caption.find(text, start)


def region_boxes(bbox: Any) -> list[Any]:
    """A region's ``bbox`` is one box, or (MM-Grounding-DINO) a list of boxes for one phrase."""
    if isinstance(bbox, list) and bbox and all(isinstance(b, list) for b in bbox):
        return bbox
    return [bbox]


def append_box(record: Record, box: list[float], was_clipped: bool, category_id: int, name: str) -> None:
    record.boxes.append(box)
    record.category_ids.append(category_id)
    record.category_names.append(name)
    record.is_crowd.append(0)
    record.meta["clipped_boxes"] += int(was_clipped)
