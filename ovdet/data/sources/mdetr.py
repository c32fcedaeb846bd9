"""MDETR-style grounding JSON (GoldG, Flickr30k Entities, RefCOCO/+/g).

COCO layout where each image carries a ``caption`` and each annotation carries
``tokens_positive``: ``[[start, end], ...]`` character spans into that caption. One grounding
record per image; each box is named by the caption text of its spans (joined by a space),
boxes with the same span set share one ``Phrase``. Category ids are -1 (MDETR's single
"object" category carries no meaning). Invalid annotations, duplicate ids and orphan annotations
are handled as in ``coco``; sizes may be integer strings (the Flickr30k files store
``"height": "500"``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ovdet.config import SourceConfig
from ovdet.data.records import Record
from ovdet.data.sources.coco import Labelled, crowd_flag, drop_invalid, image_file_name, read_coco_files
from ovdet.data.sources.common import (
    CategoryTable,
    check_box,
    check_caption,
    check_spans,
    group_phrases,
    image_size,
    span_text,
    with_dropped,
)
from ovdet.errors import RecordError
from ovdet.ops.boxes import box_xywh_to_xyxy_list

KEPT_IMAGE_FIELDS = ("dataset_name", "original_img_id", "original_id", "sentence_id")


def read_mdetr(
    source: SourceConfig, root: Path, categories: CategoryTable | None = None
) -> Iterator[Record | RecordError]:
    """Grounding records of every MDETR JSON in ``source.paths``; several files (GoldG's mixed +
    Flickr files, each numbering images from 0) are told apart by the file's stem in the key.
    ``categories`` stays empty: MDETR's single "object" category carries no meaning."""
    yield from read_coco_files(source, root, mdetr_record)


def mdetr_record(
    key: str,
    source_name: str,
    image: dict[str, Any],
    annotations: list[Labelled],
    categories: dict[int, dict[str, Any]],
    images_dir: Path,
) -> list[Record | RecordError]:
    """The grounding record of one captioned image after its dropped annotations.

    ``categories`` is unused: MDETR names boxes by their caption spans.
    """
    width, height = image_size(image.get("width"), image.get("height"))
    caption = check_caption(image.get("caption"))
    record = Record(
        key=key,
        source=source_name,
        kind="grounding",
        image_path=str(images_dir / image_file_name(image, images_dir)),
        width=width,
        height=height,
        caption=caption,
        meta={"image_id": image["id"], "clipped_boxes": 0},
    )
    record.meta.update({k: image[k] for k in KEPT_IMAGE_FIELDS if k in image})
    box_spans: list[list[tuple[int, int]]] = []

    def add(label: str, annotation: dict[str, Any]) -> None:
        box_spans.append(add_grounded_box(record, label, annotation))

    dropped = drop_invalid(key, annotations, add)
    record.phrases = group_phrases(caption, box_spans)
    return with_dropped(record, dropped, len(annotations))


def add_grounded_box(record: Record, label: str, annotation: dict[str, Any]) -> list[tuple[int, int]]:
    """Append the annotation's box named by its caption spans and return the spans; ``BadRecord``
    (nothing appended) when the spans or the box are invalid."""
    what = f"annotation {label}"
    spans = sorted(check_spans(what, annotation.get("tokens_positive"), record.caption))
    box = box_xywh_to_xyxy_list(annotation.get("bbox"))
    box, was_clipped = check_box(what, box, record.width, record.height)
    record.boxes.append(box)
    record.category_ids.append(-1)
    record.category_names.append(span_text(record.caption, spans))
    record.is_crowd.append(crowd_flag(annotation))
    record.meta["clipped_boxes"] += int(was_clipped)
    return spans
