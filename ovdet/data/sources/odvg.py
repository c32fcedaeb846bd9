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
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ovdet.config import SourceConfig
from ovdet.data.records import Phrase, Record
from ovdet.data.sources import (
    BadRecord,
    check_box,
    check_caption,
    check_spans,
    image_root,
    image_size,
    input_files,
    make_key,
    read_json,
    read_jsonl,
)
from ovdet.errors import OvdetError, RecordError


def read_odvg(source: SourceConfig, root: Path) -> Iterator[Record | RecordError]:
    """Records of the ODVG JSONL ``source.paths[0]`` (label map: optional ``paths[1]``)."""
    files = input_files(source, root)
    if len(files) > 2:
        raise OvdetError(
            f"source {source.name!r}: odvg takes one JSONL and an optional label map, got {len(files)} files"
        )
    label_map = read_label_map(files[1]) if len(files) == 2 else {}
    images_dir = image_root(source, root)
    for line_number, line in read_jsonl(files[0]):
        key = make_key(source.name, line_number)
        try:
            item = odvg_record(key, source.name, line, label_map, images_dir)
        except BadRecord as exc:
            item = RecordError(key, exc.reason)
        yield item


def read_label_map(path: Path) -> dict[int, str]:
    """``{"0": "person", ...}`` as ``{0: "person"}``."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise OvdetError(f'{path}: a label map must be an object {{"label": "name"}}')
    try:
        return {int(label): str(name) for label, name in data.items()}
    except ValueError:
        raise OvdetError(f"{path}: label map keys must be integers") from None


def odvg_record(key: str, source_name: str, line: Any, label_map: dict[int, str], images_dir: Path) -> Record:
    if not isinstance(line, dict):
        raise BadRecord("line is not a JSON object")
    if not isinstance(line.get("filename"), str) or not line["filename"]:
        raise BadRecord("missing filename")
    width, height = image_size(line.get("width"), line.get("height"))
    record = Record(
        key=key,
        source=source_name,
        kind="detection",
        image_path=str(images_dir / line["filename"]),
        width=width,
        height=height,
        meta={"file_name": line["filename"], "clipped_boxes": 0},
    )
    if isinstance(line.get("detection"), dict):
        add_instances(record, line["detection"].get("instances"), label_map)
    elif isinstance(line.get("grounding"), dict):
        record.kind = "grounding"
        add_regions(record, line["grounding"])
    else:
        raise BadRecord("neither a detection nor a grounding record")
    return record


def add_instances(record: Record, instances: Any, label_map: dict[int, str]) -> None:
    if not isinstance(instances, list):
        raise BadRecord("detection.instances is not a list")
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise BadRecord(f"box {index} is not an object")
        name = instance_name(f"box {index}", instance, label_map)
        add_box(record, f"box {index}", instance.get("bbox"))
        record.category_ids.append(instance["label"])
        record.category_names.append(name)


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


def add_regions(record: Record, grounding: dict[str, Any]) -> None:
    record.caption = check_caption(grounding.get("caption"))
    regions = grounding.get("regions")
    if not isinstance(regions, list):
        raise BadRecord("grounding.regions is not a list")
    for index, region in enumerate(regions):
        if not isinstance(region, dict):
            raise BadRecord(f"phrase {index} is not an object")
        phrase_text = region.get("phrase")
        if not isinstance(phrase_text, str) or not phrase_text:
            raise BadRecord(f"phrase {index} has no text")
        spans = region_spans(f"phrase {index}", region, record.caption)
        first_box = len(record.boxes)
        for box in region_boxes(region.get("bbox")):
            add_box(record, f"box {len(record.boxes)}", box)
            record.category_ids.append(-1)
            record.category_names.append(phrase_text)
        record.phrases.append(Phrase(phrase_text, spans, list(range(first_box, len(record.boxes)))))


def region_spans(what: str, region: dict[str, Any], caption: str) -> list[tuple[int, int]]:
    """``tokens_positive`` checked, or when absent the first occurrence of the phrase in the caption."""
    if "tokens_positive" in region:
        return check_spans(what, region["tokens_positive"], caption)
    start = caption.find(region["phrase"])
    if start < 0:
        raise BadRecord(f"{what} is not in the caption and has no tokens_positive")
    return [(start, start + len(region["phrase"]))]


def region_boxes(bbox: Any) -> list[Any]:
    """A region's ``bbox`` is one box, or (MM-Grounding-DINO) a list of boxes for one phrase."""
    if isinstance(bbox, list) and bbox and all(isinstance(b, list) for b in bbox):
        return bbox
    return [bbox]


def add_box(record: Record, what: str, box: Any) -> None:
    checked, was_clipped = check_box(what, box, record.width, record.height)
    record.boxes.append(checked)
    record.is_crowd.append(0)
    record.meta["clipped_boxes"] += int(was_clipped)
