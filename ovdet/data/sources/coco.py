"""COCO-style detection JSON: COCO, LVIS v1, Objects365.

One record per entry of ``images`` (file order), with its annotations as boxes (COCO ``xywh``
converted to absolute ``xyxy``). Annotations whose ``image_id`` names no image come out as
``RecordError("annotation {id}", ...)`` after the images, so every input is counted.

LVIS extras: ``neg_category_ids`` become ``Record.negatives`` (names);
``not_exhaustive_category_ids`` go to ``meta`` (ids and names); the category ``frequency``
(r/c/f) of each box goes to ``meta["frequency"]``. ``read_coco_categories`` returns the whole
category table (synonyms, definitions, counts) for the shard manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from ovdet.config import SourceConfig
from ovdet.data.records import Record
from ovdet.data.sources import (
    BadRecord,
    check_box,
    image_root,
    image_size,
    input_files,
    make_key,
    read_json,
    xywh_to_xyxy,
)
from ovdet.errors import OvdetError, RecordError

# (key, source name, image entry, its annotations, categories by id, image root) -> Record
RecordBuilder = Callable[
    [str, str, dict[str, Any], list[dict[str, Any]], dict[int, dict[str, Any]], Path], Record
]


def read_coco(source: SourceConfig, root: Path) -> Iterator[Record | RecordError]:
    """Records of every COCO JSON in ``source.paths``, images read from ``source.image_root``."""
    images_dir = image_root(source, root)
    for path in input_files(source, root):
        yield from read_coco_file(path, source.name, images_dir)


def read_coco_categories(path: str | Path) -> list[dict[str, Any]]:
    """The category table of a COCO/LVIS/Objects365 JSON, in file order, every field kept."""
    path = Path(path)
    return [dict(category) for category in category_table(path, load_coco_json(path)).values()]


def read_coco_file(
    path: Path, source_name: str, images_dir: Path, build_record: RecordBuilder | None = None
) -> Iterator[Record | RecordError]:
    """Records of one COCO-layout file; ``build_record`` turns one image and its annotations into a
    ``Record`` (default ``coco_record``; the MDETR reader passes its own)."""
    build_record = build_record or coco_record
    data = load_coco_json(path)
    categories = category_table(path, data)
    by_image, orphans = group_annotations(data.get("annotations") or [], data["images"])
    seen_ids: set[Any] = set()
    for index, image in enumerate(data["images"]):
        image_id = image.get("id") if isinstance(image, dict) else None
        key = make_key(source_name, image_id if is_id(image_id) else f"image{index}")
        if not is_id(image_id):
            yield RecordError(key, f"image entry {index} has no valid id")
        elif image_id in seen_ids:
            yield RecordError(key, f"duplicate image id {image_id}")
        else:
            seen_ids.add(image_id)
            annotations = by_image.get(image_id, [])
            try:
                item = build_record(key, source_name, image, annotations, categories, images_dir)
            except BadRecord as exc:
                item = RecordError(key, exc.reason)
            yield item
    yield from orphans


def load_coco_json(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise OvdetError(f"{path}: not a COCO file (expected an object with an 'images' list)")
    if not isinstance(data.get("annotations") or [], list):
        raise OvdetError(f"{path}: 'annotations' must be a list")
    return data


def category_table(path: Path, data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Categories by id; a malformed or repeated category is a file-level error."""
    table: dict[int, dict[str, Any]] = {}
    for index, category in enumerate(data.get("categories") or []):
        if not isinstance(category, dict) or not isinstance(category.get("id"), int):
            raise OvdetError(f"{path}: category entry {index} has no integer id")
        if not isinstance(category.get("name"), str):
            raise OvdetError(f"{path}: category {category['id']} has no name")
        if category["id"] in table:
            raise OvdetError(f"{path}: category id {category['id']} appears twice")
        table[category["id"]] = category
    return table


def is_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def group_annotations(
    annotations: list[Any], images: list[Any]
) -> tuple[dict[Any, list[dict[str, Any]]], list[RecordError]]:
    """Annotations by image id (file order) and one ``RecordError`` per annotation with no image."""
    image_ids = {image.get("id") for image in images if isinstance(image, dict) and is_id(image.get("id"))}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    orphans: list[RecordError] = []
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            orphans.append(RecordError(f"annotation #{index}", "annotation is not an object"))
            continue
        record_id = f"annotation {annotation.get('id', f'#{index}')}"
        image_id = annotation.get("image_id")
        if not is_id(image_id) or image_id not in image_ids:
            orphans.append(RecordError(record_id, f"image id {image_id} not found"))
            continue
        by_image.setdefault(image_id, []).append(annotation)
    return by_image, orphans


def coco_record(
    key: str,
    source_name: str,
    image: dict[str, Any],
    annotations: list[dict[str, Any]],
    categories: dict[int, dict[str, Any]],
    images_dir: Path,
) -> Record:
    """Build the record of one image; ``BadRecord`` on the first invalid annotation."""
    width, height = image_size(image.get("width"), image.get("height"))
    record = Record(
        key=key,
        source=source_name,
        kind="detection",
        image_path=str(images_dir / image_file_name(image, images_dir)),
        width=width,
        height=height,
        meta={"image_id": image["id"], "clipped_boxes": 0},
    )
    for annotation in annotations:
        add_annotation(record, annotation, categories)
    frequencies = [categories[c].get("frequency") for c in record.category_ids]
    if any(f is not None for f in frequencies):
        record.meta["frequency"] = frequencies
    add_lvis_labels(record, image, categories)
    return record


def add_annotation(record: Record, annotation: dict[str, Any], categories: dict[int, dict[str, Any]]) -> None:
    what = f"annotation {annotation.get('id')}"
    category_id = annotation.get("category_id")
    if not isinstance(category_id, int) or category_id not in categories:
        raise BadRecord(f"{what} has unknown category id {category_id}")
    box, was_clipped = check_box(what, xywh_to_xyxy(annotation.get("bbox")), record.width, record.height)
    record.boxes.append(box)
    record.category_ids.append(category_id)
    record.category_names.append(categories[category_id]["name"])
    record.is_crowd.append(int(bool(annotation.get("iscrowd", 0))))
    record.meta["clipped_boxes"] += int(was_clipped)
    # COCO's area (segment pixels) decides the small/medium/large ranges: keep it for evaluation.
    area = annotation.get("area")
    has_area = isinstance(area, int | float) and not isinstance(area, bool) and area > 0
    record.meta.setdefault("areas", []).append(float(area) if has_area else (box[2] - box[0]) * (box[3] - box[1]))


def add_lvis_labels(record: Record, image: dict[str, Any], categories: dict[int, dict[str, Any]]) -> None:
    """LVIS federated labels: names known absent, and categories not exhaustively annotated."""
    negative_ids = category_ids(image, "neg_category_ids", categories)
    if negative_ids is not None:
        record.negatives = [categories[c]["name"] for c in negative_ids]
    not_exhaustive = category_ids(image, "not_exhaustive_category_ids", categories)
    if not_exhaustive is not None:
        record.meta["not_exhaustive_category_ids"] = not_exhaustive
        record.meta["not_exhaustive_categories"] = [categories[c]["name"] for c in not_exhaustive]


def category_ids(
    image: dict[str, Any], field: str, categories: dict[int, dict[str, Any]]
) -> list[int] | None:
    if field not in image:
        return None
    ids = image[field]
    if not isinstance(ids, list):
        raise BadRecord(f"{field} is not a list")
    for category_id in ids:
        if not isinstance(category_id, int) or category_id not in categories:
            raise BadRecord(f"{field} has unknown category id {category_id}")
    return ids


def image_file_name(image: dict[str, Any], images_dir: Path) -> str:
    """``file_name``, or for LVIS (which has only ``coco_url``) the URL's ``split/name.jpg``.

    LVIS keeps COCO's ``train2017/`` / ``val2017/`` layout, so the last two URL parts are tried
    first; the bare file name is used when only that exists under the image root.
    """
    if isinstance(image.get("file_name"), str) and image["file_name"]:
        return image["file_name"]
    url = image.get("coco_url") or image.get("url")
    if not isinstance(url, str) or not url:
        raise BadRecord("image has no file_name or coco_url")
    parts = PurePosixPath(urlparse(url).path).parts[-2:]
    split_and_name = "/".join(p for p in parts if p != "/")
    name = parts[-1]
    if not (images_dir / split_and_name).exists() and (images_dir / name).exists():
        return name
    return split_and_name
