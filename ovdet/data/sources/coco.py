"""COCO-style detection JSON: COCO, LVIS v1, Objects365.

One record per entry of ``images`` (file order), with its annotations as boxes (COCO ``xywh``
converted to absolute ``xyxy``). An invalid annotation is dropped on its own and reported as an
``AnnotationError`` (image key, annotation id, reason); the image is kept while a valid box
remains. Annotations that name no image or repeat an id come out after the images, so every
box is counted. ``iscrowd`` or ``ignore: 1`` make a crowd box.

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
from ovdet.data.sources.common import (
    BadRecord,
    check_box,
    file_tags,
    image_root,
    image_size,
    input_files,
    make_key,
    with_dropped,
)
from ovdet.errors import AnnotationError, OvdetError, RecordError
from ovdet.fileio import is_number, read_json
from ovdet.ops.boxes import box_xywh_to_xyxy_list

# An annotation with the label naming it in reasons (its id, or "#index" when it has none).
Labelled = tuple[str, dict[str, Any]]
# (key, source name, image entry, its annotations, categories by id, image root)
#   -> the dropped annotations and then the record (or its rejection)
RecordBuilder = Callable[
    [str, str, dict[str, Any], list[Labelled], dict[int, dict[str, Any]], Path], list[Record | RecordError]
]


def read_coco(
    source: SourceConfig, root: Path, categories: dict[int, dict[str, Any]] | None = None
) -> Iterator[Record | RecordError]:
    """Records of every COCO JSON in ``source.paths``, images read from ``source.image_root``.

    ``categories``, when given, is filled with the files' category tables (by id, first file
    wins), so the shard manifest gets them without parsing a 1 GB LVIS file twice.
    """
    yield from read_coco_files(source, root, coco_record, categories)


def read_coco_files(
    source: SourceConfig,
    root: Path,
    build_record: RecordBuilder,
    categories: dict[int, dict[str, Any]] | None = None,
) -> Iterator[Record | RecordError]:
    """Every COCO-layout file of ``source`` through ``read_coco_data`` (``coco``, and ``mdetr`` with
    its own ``build_record``); several files are told apart by ``file_tags`` in the keys."""
    images_dir = image_root(source, root)
    files = input_files(source, root)
    tags = file_tags(files)
    for path in files:
        data = load_coco_json(path)
        table = category_table(path, data)
        if categories is not None:
            categories.update({k: v for k, v in table.items() if k not in categories})
        yield from read_coco_data(path, data, table, source.name, images_dir, build_record, tags[path])


def read_coco_categories(path: str | Path) -> list[dict[str, Any]]:
    """The category table of a COCO/LVIS/Objects365 JSON, in file order, every field kept."""
    path = Path(path)
    return [dict(category) for category in category_table(path, load_coco_json(path)).values()]


def read_coco_data(
    path: Path,
    data: dict[str, Any],
    categories: dict[int, dict[str, Any]],
    source_name: str,
    images_dir: Path,
    build_record: RecordBuilder,
    file_tag: str,
) -> Iterator[Record | RecordError]:
    """Records of one parsed COCO-layout file; ``build_record`` turns one image and its annotations
    into the record and its dropped annotations (``coco_record``, or MDETR's ``mdetr_record``).

    Per image: a rejection, or its dropped annotations then its record. After the images: the
    annotations that name no image, and repeated annotation ids (each an ``AnnotationError``).
    """

    def key_of(image_id: Any) -> str:
        return make_key(source_name, image_id, file_tag)

    by_image, dropped = group_annotations(path, data.get("annotations") or [], data["images"], key_of)
    seen_ids: set[Any] = set()
    for index, image in enumerate(data["images"]):
        image_id = image.get("id") if isinstance(image, dict) else None
        key = key_of(image_id if is_id(image_id) else f"image{index}")
        if not is_id(image_id):
            yield RecordError(key, f"image entry {index} has no valid id")
        elif image_id in seen_ids:
            yield RecordError(key, f"duplicate image id {image_id}")
        else:
            seen_ids.add(image_id)
            annotations = by_image.get(image_id, [])
            try:
                yield from build_record(key, source_name, image, annotations, categories, images_dir)
            except BadRecord as exc:
                yield RecordError(key, exc.reason, boxes=len(annotations))
    yield from dropped


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
    path: Path, annotations: list[Any], images: list[Any], key_of: Callable[[Any], str]
) -> tuple[dict[Any, list[Labelled]], list[AnnotationError]]:
    """Annotations by image id (file order), and the dropped ones: not an object, naming no image,
    or repeating an annotation id already seen in the file (the first one is kept)."""
    image_ids = {image.get("id") for image in images if isinstance(image, dict) and is_id(image.get("id"))}
    by_image: dict[Any, list[Labelled]] = {}
    dropped: list[AnnotationError] = []
    seen_ids: set[Any] = set()
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            dropped.append(AnnotationError(str(path), f"#{index}", "annotation is not an object"))
            continue
        annotation_id = annotation.get("id")
        label = str(annotation_id) if is_id(annotation_id) else f"#{index}"
        image_id = annotation.get("image_id")
        if not is_id(image_id) or image_id not in image_ids:
            dropped.append(AnnotationError(str(path), label, f"image id {image_id} not found"))
        elif is_id(annotation_id) and annotation_id in seen_ids:
            dropped.append(
                AnnotationError(key_of(image_id), label, f"duplicate annotation id {annotation_id}")
            )
        else:
            seen_ids.add(annotation_id)
            by_image.setdefault(image_id, []).append((label, annotation))
    return by_image, dropped


def coco_record(
    key: str,
    source_name: str,
    image: dict[str, Any],
    annotations: list[Labelled],
    categories: dict[int, dict[str, Any]],
    images_dir: Path,
) -> list[Record | RecordError]:
    """The record of one image after its dropped annotations; ``BadRecord`` when the image itself
    is invalid (size, file name, LVIS label lists)."""
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
    add_lvis_labels(record, image, categories)
    dropped = drop_invalid(
        key, annotations, lambda label, annotation: add_annotation(record, label, annotation, categories)
    )
    frequencies = [categories[c].get("frequency") for c in record.category_ids]
    if any(f is not None for f in frequencies):
        record.meta["frequency"] = frequencies
    return with_dropped(record, dropped, len(annotations))


def drop_invalid(
    key: str, annotations: list[Labelled], add: Callable[[str, dict[str, Any]], None]
) -> list[AnnotationError]:
    """``add`` each annotation to the record ``key``; the ones it refuses (``BadRecord``) come back
    as ``AnnotationError``s, the rest of the record is kept."""
    dropped = []
    for label, annotation in annotations:
        try:
            add(label, annotation)
        except BadRecord as exc:
            dropped.append(AnnotationError(key, label, exc.reason))
    return dropped


def add_annotation(
    record: Record, label: str, annotation: dict[str, Any], categories: dict[int, dict[str, Any]]
) -> None:
    """Append one valid annotation's box; ``BadRecord`` (nothing appended) when it is invalid."""
    what = f"annotation {label}"
    category_id = annotation.get("category_id")
    if not isinstance(category_id, int) or category_id not in categories:
        raise BadRecord(f"{what} has unknown category id {category_id}")
    box = box_xywh_to_xyxy_list(annotation.get("bbox"))
    box, was_clipped = check_box(what, box, record.width, record.height)
    record.boxes.append(box)
    record.category_ids.append(category_id)
    record.category_names.append(categories[category_id]["name"])
    record.is_crowd.append(crowd_flag(annotation))
    record.meta["clipped_boxes"] += int(was_clipped)
    # COCO's area (segment pixels) decides the small/medium/large ranges: keep it for evaluation.
    area = annotation.get("area")
    has_area = is_number(area) and area > 0
    record.meta.setdefault("areas", []).append(
        float(area) if has_area else (box[2] - box[0]) * (box[3] - box[1])
    )


def crowd_flag(annotation: dict[str, Any]) -> int:
    """1 for a crowd region (``iscrowd``) or an ignored one (``ignore: 1``, Objects365 / CrowdHuman
    / mmdetection's ``ignore_flag``): neither is a positive to match nor a negative to suppress."""
    return int(any(bool(annotation.get(flag, 0)) for flag in ("iscrowd", "ignore", "ignore_flag")))


def add_lvis_labels(record: Record, image: dict[str, Any], categories: dict[int, dict[str, Any]]) -> None:
    """LVIS federated labels: names known absent, and categories not exhaustively annotated."""
    if "neg_category_ids" in image or "not_exhaustive_category_ids" in image:
        record.meta["federated"] = True  # the loader samples negatives from verified names only
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
