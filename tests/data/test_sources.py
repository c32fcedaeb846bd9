"""Source readers: each format into Records, every bad input as a counted RecordError."""

from __future__ import annotations

import json
import math
import re

import pytest
from fixtures import (
    LVIS_CATEGORIES,
    coco_annotation,
    coco_image,
    jpeg_bytes,
    odvg_detection,
    odvg_grounding,
    source,
    write_coco,
    write_json,
    write_jsonl,
)

from ovdet.data.records import Phrase, Record
from ovdet.data.sources import iter_source
from ovdet.data.sources.coco import read_coco_categories
from ovdet.errors import AnnotationError, OvdetError, RecordError


def read_all(src, root):
    """Items, records, and the record-level rejections by record id."""
    items = list(iter_source(src, root))
    records = [i for i in items if isinstance(i, Record)]
    rejections = {
        i.record_id: i.reason
        for i in items
        if isinstance(i, RecordError) and not isinstance(i, AnnotationError)
    }
    return items, records, rejections


def dropped_of(items):
    """The annotation-level rejections as (record id, annotation id, reason)."""
    return [(i.record_id, i.annotation_id, i.reason) for i in items if isinstance(i, AnnotationError)]


def assert_counts_balance(items, images, boxes):
    """read = written + rejected, for records (images, lines) and for boxes."""
    records = [i for i in items if isinstance(i, Record)]
    record_rejections = [
        i for i in items if isinstance(i, RecordError) and not isinstance(i, AnnotationError)
    ]
    assert len(records) + len(record_rejections) == images
    rejected_boxes = sum(i.boxes for i in items if isinstance(i, RecordError))
    assert sum(len(r.boxes) for r in records) + rejected_boxes == boxes


def assert_keys_are_tar_safe(records):
    keys = [r.key for r in records]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", k) for k in keys)


# COCO / LVIS / Objects365


def test_coco_round_trips_boxes_names_and_crowd_flags(tmp_path):
    write_coco(
        tmp_path / "ann" / "train.json",
        [coco_image(1), coco_image(2)],
        [
            coco_annotation(10, 1, [4, 6, 10, 20], category_id=2, iscrowd=1),
            coco_annotation(11, 1, [0, 0, 5.5, 5], category_id=1),
        ],
    )
    src = source("coco", "coco", ["ann/train.json"], image_root="images")
    items, records, _ = read_all(src, tmp_path)
    assert [r.key for r in items] == ["coco-1", "coco-2"]
    first = records[0]
    assert first.kind == "detection" and first.source == "coco"
    assert first.image_path == str(tmp_path / "images" / "000000000001.jpg")
    assert (first.width, first.height) == (64, 48)
    assert first.boxes == [[4.0, 6.0, 14.0, 26.0], [0.0, 0.0, 5.5, 5.0]]
    assert first.category_ids == [2, 1]
    assert first.category_names == ["dog", "cat"]
    assert first.is_crowd == [1, 0]
    assert first.meta["clipped_boxes"] == 0
    assert records[1].boxes == [] and records[1].category_names == []


def test_absolute_paths_are_used_as_given(tmp_path):
    ann = write_coco(tmp_path / "a.json", [coco_image(1)], [])
    src = source("c", "coco", [ann], image_root=tmp_path / "imgs")
    (record,) = iter_source(src, tmp_path / "elsewhere")
    assert record.image_path == str(tmp_path / "imgs" / "000000000001.jpg")


def test_lvis_keeps_frequency_negatives_and_not_exhaustive_categories(tmp_path):
    image = {
        "id": 5,
        "coco_url": "http://images.cocodataset.org/val2017/000000000005.jpg",
        "width": 64,
        "height": 48,
        "neg_category_ids": [2],
        "not_exhaustive_category_ids": [3],
    }
    annotations = [
        coco_annotation(1, 5, [1, 1, 4, 4], category_id=1),
        coco_annotation(2, 5, [2, 2, 4, 4], category_id=3),
    ]
    path = write_coco(tmp_path / "lvis.json", [image], annotations, LVIS_CATEGORIES)
    (record,) = iter_source(source("lvis", "coco", [path], image_root="coco"), tmp_path)
    assert record.image_path == str(tmp_path / "coco" / "val2017" / "000000000005.jpg")
    assert record.category_names == ["cat", "dog"]
    assert record.meta["frequency"] == ["f", "c"]
    assert record.negatives == ["aardvark"]
    assert record.meta["not_exhaustive_category_ids"] == [3]
    assert record.meta["not_exhaustive_categories"] == ["dog"]
    assert record.meta["federated"] is True  # the loader takes this image's negatives from verified names


def test_coco_image_without_federated_fields_is_not_federated(tmp_path):
    path = write_coco(tmp_path / "coco.json", [coco_image(1)], [coco_annotation(1, 1, [1, 1, 4, 4])])
    (record,) = iter_source(source("c", "coco", [path]), tmp_path)
    assert "federated" not in record.meta and record.negatives == []


def test_lvis_file_name_falls_back_to_the_url_basename_when_only_that_exists(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "000000000005.jpg").write_bytes(jpeg_bytes())
    image = {"id": 5, "coco_url": "http://x/val2017/000000000005.jpg", "width": 64, "height": 48}
    path = write_coco(tmp_path / "lvis.json", [image], [], LVIS_CATEGORIES)
    (record,) = iter_source(source("lvis", "coco", [path], image_root="flat"), tmp_path)
    assert record.image_path == str(tmp_path / "flat" / "000000000005.jpg")


def test_read_coco_categories_keeps_lvis_synonyms_and_frequency(tmp_path):
    path = write_coco(tmp_path / "lvis.json", [], [], LVIS_CATEGORIES)
    categories = read_coco_categories(path)
    assert [c["name"] for c in categories] == ["cat", "aardvark", "dog"]
    assert categories[0]["synonyms"] == ["cat", "house_cat"]
    assert [c["frequency"] for c in categories] == ["f", "r", "c"]


def test_iter_source_hands_back_the_category_table_of_a_coco_source(tmp_path):
    first = write_coco(tmp_path / "a.json", [], [], LVIS_CATEGORIES)
    second = write_coco(tmp_path / "b.json", [], [], [{"id": 1, "name": "kitty"}, {"id": 9, "name": "zebra"}])
    table = {}
    list(iter_source(source("lvis", "coco", [first, second]), tmp_path, categories=table))
    assert [(c["id"], c["name"]) for c in table.values()] == [(1, "cat"), (2, "aardvark"), (3, "dog"), (9, "zebra")]
    assert table[1]["def"] == "a feline"


@pytest.mark.parametrize(
    "bbox, reason",
    [
        ([1, math.nan, 3, 3], "annotation 7 has NaN coordinates"),
        ([1, 1, math.inf, 3], "annotation 7 has infinite coordinates"),
        ([1, 1, 0, 3], "annotation 7 has zero or negative size"),
        ([1, 1, 3, -2], "annotation 7 has zero or negative size"),
        ([70, 10, 5, 5], "annotation 7 is outside the image"),
        ([-10, 10, 5, 5], "annotation 7 is outside the image"),
        ([1, 2, 3], "annotation 7 is not 4 numbers"),
        (None, "annotation 7 is not 4 numbers"),
    ],
)
def test_invalid_coco_box_is_dropped_alone_and_its_image_kept(tmp_path, bbox, reason):
    annotations = [coco_annotation(6, 1, [1, 1, 2, 2]), coco_annotation(7, 1, bbox)]
    path = write_coco(tmp_path / "a.json", [coco_image(1), coco_image(2)], annotations)
    items, records, rejections = read_all(source("c", "coco", [path]), tmp_path)
    assert rejections == {} and dropped_of(items) == [("c-1", "7", reason)]
    assert [(r.key, r.boxes) for r in records] == [("c-1", [[1.0, 1.0, 3.0, 3.0]]), ("c-2", [])]
    assert_counts_balance(items, images=2, boxes=2)


def test_objects365_image_keeps_its_valid_boxes_when_one_has_zero_width(tmp_path):
    annotations = [
        coco_annotation(11, 5, [10, 10, 20, 20]),
        coco_annotation(12, 5, [30, 10, 0, 20]),
        coco_annotation(13, 5, [40, 5, 10, 30], category_id=2),
        coco_annotation(14, 6, [1, 1, 0, 5]),
    ]
    path = write_coco(tmp_path / "o365.json", [coco_image(5), coco_image(6)], annotations)
    items, records, rejections = read_all(source("o365", "coco", [path]), tmp_path)
    assert [(r.key, r.category_names) for r in records] == [("o365-5", ["cat", "dog"])]
    assert dropped_of(items) == [
        ("o365-5", "12", "annotation 12 has zero or negative size"),
        ("o365-6", "14", "annotation 14 has zero or negative size"),
    ]
    # an image whose every box is invalid is not kept as an empty (all-background) image
    assert rejections == {"o365-6": "no valid annotation left (1 invalid)"}
    assert_counts_balance(items, images=2, boxes=4)


def test_ignore_flag_makes_a_crowd_box(tmp_path):
    annotations = [
        coco_annotation(1, 1, [1, 1, 5, 5], ignore=1),
        coco_annotation(2, 1, [9, 9, 5, 5], iscrowd=0, ignore=0),
        coco_annotation(3, 1, [20, 9, 5, 5], iscrowd=1),
    ]
    path = write_coco(tmp_path / "a.json", [coco_image(1)], annotations)
    (record,) = iter_source(source("c", "coco", [path]), tmp_path)
    assert record.is_crowd == [1, 0, 1]


def test_duplicate_annotation_id_is_dropped_not_duplicated(tmp_path):
    annotations = [
        coco_annotation(5, 1, [1, 1, 5, 5]),
        coco_annotation(5, 1, [1, 1, 5, 5]),
        coco_annotation(6, 2, [2, 2, 5, 5]),
        coco_annotation(5, 2, [9, 9, 5, 5]),
    ]
    path = write_coco(tmp_path / "a.json", [coco_image(1), coco_image(2)], annotations)
    items, records, rejections = read_all(source("c", "coco", [path]), tmp_path)
    assert [len(r.boxes) for r in records] == [1, 1] and rejections == {}
    assert dropped_of(items) == [
        ("c-1", "5", "duplicate annotation id 5"),
        ("c-2", "5", "duplicate annotation id 5"),
    ]
    assert_counts_balance(items, images=2, boxes=4)


def test_box_slightly_outside_the_image_is_clipped_and_counted(tmp_path):
    annotations = [coco_annotation(1, 1, [-2, 40, 10, 10]), coco_annotation(2, 1, [60, 0, 10, 10])]
    path = write_coco(tmp_path / "a.json", [coco_image(1, 64, 48)], annotations)
    (record,) = iter_source(source("c", "coco", [path]), tmp_path)
    assert record.boxes == [[0.0, 40.0, 8.0, 48.0], [60.0, 0.0, 64.0, 10.0]]
    assert record.meta["clipped_boxes"] == 2


def test_unknown_category_id_drops_its_annotation(tmp_path):
    annotations = [coco_annotation(3, 1, [1, 1, 2, 2], category_id=99), coco_annotation(4, 1, [1, 1, 2, 2])]
    path = write_coco(tmp_path / "a.json", [coco_image(1)], annotations)
    items, records, rejections = read_all(source("c", "coco", [path]), tmp_path)
    assert rejections == {} and [r.category_ids for r in records] == [[1]]
    assert dropped_of(items) == [("c-1", "3", "annotation 3 has unknown category id 99")]


def test_unknown_lvis_negative_category_rejects_the_image(tmp_path):
    image = coco_image(1, neg_category_ids=[42])
    path = write_coco(tmp_path / "a.json", [image], [], LVIS_CATEGORIES)
    _, _, rejections = read_all(source("c", "coco", [path]), tmp_path)
    assert rejections == {"c-1": "neg_category_ids has unknown category id 42"}


def test_duplicate_image_id_rejects_the_second_and_counts_both(tmp_path):
    images = [coco_image(1), coco_image(1, 32, 32), coco_image(2)]
    path = write_coco(tmp_path / "a.json", images, [coco_annotation(1, 1, [1, 1, 2, 2])])
    items, records, rejections = read_all(source("c", "coco", [path]), tmp_path)
    assert len(items) == 3
    assert [r.key for r in records] == ["c-1", "c-2"]
    assert records[0].width == 64 and len(records[0].boxes) == 1
    assert [(i.record_id, i.reason) for i in items if isinstance(i, RecordError)] == [
        ("c-1", "duplicate image id 1")
    ]


def test_annotation_of_a_missing_image_is_counted_as_a_dropped_box(tmp_path):
    annotations = [coco_annotation(1, 1, [1, 1, 2, 2]), coco_annotation(2, 77, [1, 1, 2, 2])]
    path = write_coco(tmp_path / "a.json", [coco_image(1), coco_image(2)], annotations)
    items, records, rejections = read_all(source("c", "coco", [path]), tmp_path)
    assert rejections == {} and dropped_of(items) == [(str(path), "2", "image id 77 not found")]
    assert isinstance(items[-1], AnnotationError)  # after the images, deterministic
    assert_counts_balance(items, images=2, boxes=2)


def test_image_without_size_is_rejected(tmp_path):
    image = {"id": 1, "file_name": "a.jpg"}
    path = write_coco(tmp_path / "a.json", [image], [])
    _, _, rejections = read_all(source("c", "coco", [path]), tmp_path)
    assert rejections == {"c-1": "image size missing"}


def test_counts_invariant_holds_on_a_messy_coco_file(tmp_path):
    images = [coco_image(i) for i in range(1, 6)] + [coco_image(3), {"file_name": "no_id.jpg"}]
    annotations = [
        coco_annotation(1, 1, [1, 1, 5, 5]),
        coco_annotation(2, 2, [1, math.nan, 5, 5]),
        coco_annotation(3, 3, [1, 1, 5, 5], category_id=9),
        coco_annotation(4, 4, [-5, -5, 10, 10]),
        coco_annotation(5, 404, [1, 1, 5, 5]),
        coco_annotation(6, 405, [1, 1, 5, 5]),
    ]
    path = write_coco(tmp_path / "a.json", images, annotations)
    items, records, rejections = read_all(source("c", "coco", [path]), tmp_path)
    assert_counts_balance(items, images=len(images), boxes=len(annotations))
    assert [r.key for r in records] == ["c-1", "c-4", "c-5"]
    assert rejections == {
        "c-2": "no valid annotation left (1 invalid)",
        "c-3": "duplicate image id 3",
        "c-image6": "image entry 6 has no valid id",
    }
    assert_keys_are_tar_safe(records)


def test_string_ids_are_sanitized_into_tar_safe_keys(tmp_path):
    images = [coco_image(1), dict(coco_image(2), id="a/b.c d")]
    path = write_coco(tmp_path / "a.json", images, [])
    _, records, _ = read_all(source("my.set", "coco", [path]), tmp_path)
    assert [r.key for r in records] == ["my_set-1", "my_set-a_b_c_d"]


def test_keys_colliding_after_sanitizing_are_rejected(tmp_path):
    images = [dict(coco_image(1), id="a.b"), dict(coco_image(2), id="a/b")]
    path = write_coco(tmp_path / "a.json", images, [])
    items, records, rejections = read_all(source("c", "coco", [path]), tmp_path)
    assert len(items) == 2 and rejections == {"c-a_b": "duplicate key"}


def test_malformed_coco_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n "images": [\n  {"id": 1,}\n ]\n}\n')
    with pytest.raises(OvdetError, match=r"broken\.json:3: invalid JSON"):
        list(iter_source(source("c", "coco", [path]), tmp_path))


def test_json_that_is_not_coco_is_a_file_error(tmp_path):
    path = write_json(tmp_path / "a.json", [1, 2])
    with pytest.raises(OvdetError, match="not a COCO file"):
        list(iter_source(source("c", "coco", [path]), tmp_path))


def test_missing_annotation_file_is_a_file_error(tmp_path):
    with pytest.raises(OvdetError, match="nope.json: no such file"):
        list(iter_source(source("c", "coco", ["nope.json"]), tmp_path))


# ODVG


def test_odvg_detection_line_round_trips(tmp_path):
    instances = [
        {"bbox": [1, 2, 30, 40], "label": 0, "category": "person"},
        {"bbox": [5, 5, 9, 9], "label": 3, "category": "car"},
    ]
    path = write_jsonl(tmp_path / "od.jsonl", [odvg_detection("a/b.jpg", instances)])
    (record,) = iter_source(source("o365", "odvg", [path], image_root="img"), tmp_path)
    assert record.key == "o365-1" and record.kind == "detection"
    assert record.image_path == str(tmp_path / "img" / "a" / "b.jpg")
    assert record.boxes == [[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.0, 9.0]]
    assert record.category_ids == [0, 3]
    assert record.category_names == ["person", "car"]
    assert record.is_crowd == [0, 0]


def test_odvg_label_map_names_instances(tmp_path):
    rows = [odvg_detection("a.jpg", [{"bbox": [1, 2, 3, 4], "label": 1}])]
    data = write_jsonl(tmp_path / "od.jsonl", rows)
    label_map = write_json(tmp_path / "labels.json", {"0": "person", "1": "bicycle"})
    (record,) = iter_source(source("o", "odvg", [data, label_map]), tmp_path)
    assert record.category_names == ["bicycle"]


def test_odvg_label_missing_from_the_label_map_is_dropped(tmp_path):
    instances = [{"bbox": [1, 2, 3, 4], "label": 7, "category": "x"}, {"bbox": [1, 2, 3, 4], "label": 0}]
    data = write_jsonl(tmp_path / "od.jsonl", [odvg_detection("a.jpg", instances)])
    label_map = write_json(tmp_path / "labels.json", {"0": "person"})
    items, records, rejections = read_all(source("o", "odvg", [data, label_map]), tmp_path)
    assert rejections == {} and [r.category_names for r in records] == [["person"]]
    assert dropped_of(items) == [("o-1", "box 0", "box 0 has unknown category id 7")]


def test_odvg_grounding_line_round_trips_phrases_and_spans(tmp_path):
    caption = "a man riding a red bike"
    regions = [
        {"bbox": [1, 1, 20, 40], "phrase": "a man", "tokens_positive": [[0, 5]]},
        {"bbox": [[10, 20, 60, 45], [2, 30, 8, 44]], "phrase": "a red bike", "tokens_positive": [[13, 23]]},
    ]
    path = write_jsonl(tmp_path / "vg.jsonl", [odvg_grounding("x.jpg", caption, regions)])
    (record,) = iter_source(source("vg", "odvg", [path]), tmp_path)
    assert record.kind == "grounding" and record.caption == caption
    assert record.boxes == [[1.0, 1.0, 20.0, 40.0], [10.0, 20.0, 60.0, 45.0], [2.0, 30.0, 8.0, 44.0]]
    assert record.category_ids == [-1, -1, -1]
    assert record.category_names == ["a man", "a red bike", "a red bike"]
    assert record.phrases == [Phrase("a man", [(0, 5)], [0]), Phrase("a red bike", [(13, 23)], [1, 2])]


def test_odvg_region_without_tokens_positive_is_found_in_the_caption(tmp_path):
    regions = [{"bbox": [1, 1, 5, 5], "phrase": "dog"}]
    path = write_jsonl(tmp_path / "vg.jsonl", [odvg_grounding("x.jpg", "cat. dog.", regions)])
    (record,) = iter_source(source("vg", "odvg", [path]), tmp_path)
    assert record.phrases == [Phrase("dog", [(5, 8)], [0])]


@pytest.mark.parametrize(
    "row, reason",
    [
        (
            odvg_grounding(
                "x.jpg", "  ", [{"bbox": [1, 1, 5, 5], "phrase": "a", "tokens_positive": [[0, 1]]}]
            ),
            "empty caption",
        ),
        ({"filename": "x.jpg", "height": 4, "width": 4}, "neither a detection nor a grounding record"),
        ({"height": 4, "width": 4, "detection": {"instances": []}}, "missing filename"),
        (["not", "an", "object"], "line is not a JSON object"),
        (odvg_detection("x.jpg", [], width="wide"), "invalid image size widex48"),
    ],
)
def test_bad_odvg_line_is_rejected_with_its_reason(tmp_path, row, reason):
    good = odvg_detection("ok.jpg", [{"bbox": [1, 1, 5, 5], "label": 0, "category": "a"}])
    path = write_jsonl(tmp_path / "a.jsonl", [good, row, good])
    items, records, rejections = read_all(source("o", "odvg", [path]), tmp_path)
    assert rejections == {"o-2": reason}
    assert [r.key for r in records] == ["o-1", "o-3"]


GOOD_REGION = {"bbox": [1, 1, 5, 5], "phrase": "a", "tokens_positive": [[0, 1]]}
GOOD_INSTANCE = {"bbox": [1, 1, 5, 5], "label": 0, "category": "a"}


@pytest.mark.parametrize(
    "row, what, reason",
    [
        (
            odvg_grounding(
                "x.jpg", "a cat", [GOOD_REGION, {"bbox": [1, 1, 5, 5], "tokens_positive": [[2, 9]]}]
            ),
            "phrase 1",
            "phrase 1 span [2, 9] is outside the caption (length 5)",
        ),
        (
            odvg_grounding("x.jpg", "a cat", [GOOD_REGION, {"bbox": [1, 1, 5, 5], "phrase": "dog"}]),
            "phrase 1",
            "phrase 1 is not in the caption and has no tokens_positive",
        ),
        (
            odvg_grounding("x.jpg", "a cat", [GOOD_REGION, {"bbox": [1, 1, 5, 5], "phrase": ""}]),
            "phrase 1",
            "phrase 1 has no text",
        ),
        (
            odvg_detection(
                "x.jpg", [{"bbox": [1, 1, 5, math.nan], "label": 0, "category": "a"}, GOOD_INSTANCE]
            ),
            "box 0",
            "box 0 has NaN coordinates",
        ),
        (
            odvg_detection("x.jpg", [{"bbox": [5, 1, 5, 9], "label": 0, "category": "a"}, GOOD_INSTANCE]),
            "box 0",
            "box 0 has zero or negative size",
        ),
        (
            odvg_detection("x.jpg", [{"bbox": [0, 50, 5, 60], "label": 0, "category": "a"}, GOOD_INSTANCE]),
            "box 0",
            "box 0 is outside the image",
        ),
        (
            odvg_detection("x.jpg", [{"bbox": [1, 1, 5, 5], "label": 0}, GOOD_INSTANCE]),
            "box 0",
            "box 0 has unknown category id 0",
        ),
    ],
)
def test_bad_odvg_box_or_region_is_dropped_and_its_line_kept(tmp_path, row, what, reason):
    path = write_jsonl(tmp_path / "a.jsonl", [row])
    items, records, rejections = read_all(source("o", "odvg", [path]), tmp_path)
    assert rejections == {} and dropped_of(items) == [("o-1", what, reason)]
    assert [r.boxes for r in records] == [[[1.0, 1.0, 5.0, 5.0]]]
    assert_counts_balance(items, images=1, boxes=2)


def test_bad_box_inside_a_multi_box_region_drops_that_box_only(tmp_path):
    regions = [
        {
            "bbox": [[1, 1, 5, 5], [3, 3, 3, 9], [6, 6, 9, 9]],
            "phrase": "two cats",
            "tokens_positive": [[0, 8]],
        }
    ]
    path = write_jsonl(tmp_path / "a.jsonl", [odvg_grounding("x.jpg", "two cats", regions)])
    items, records, _ = read_all(source("o", "odvg", [path]), tmp_path)
    assert dropped_of(items) == [("o-1", "phrase 0 box 1", "phrase 0 box 1 has zero or negative size")]
    assert records[0].phrases == [Phrase("two cats", [(0, 8)], [0, 1])]
    assert_counts_balance(items, images=1, boxes=3)


def test_odvg_line_with_detection_and_grounding_keeps_both(tmp_path):
    """Open-GroundingDino's data_format.md: one line may carry both parts."""
    line = odvg_grounding(
        "x.jpg",
        "a man riding a bike",
        [
            {"bbox": [1, 1, 20, 40], "phrase": "a man", "tokens_positive": [[0, 5]]},
            {"bbox": [10, 20, 60, 45], "phrase": "a bike", "tokens_positive": [[13, 19]]},
        ],
    )
    line["detection"] = {
        "instances": [
            {"bbox": [1, 1, 20, 40], "label": 0, "category": "person"},
            {"bbox": [10, 20, 60, 45], "label": 1, "category": "bicycle"},
        ]
    }
    path = write_jsonl(tmp_path / "a.jsonl", [line])
    (record,) = iter_source(source("o", "odvg", [path]), tmp_path)
    assert record.kind == "grounding" and record.caption == "a man riding a bike"
    assert record.category_ids == [0, 1, -1, -1]
    assert record.category_names == ["person", "bicycle", "a man", "a bike"]
    assert record.phrases == [Phrase("a man", [(0, 5)], [2]), Phrase("a bike", [(13, 19)], [3])]
    assert record.meta["odvg_parts"] == ["detection", "grounding"]


def test_list_valued_phrase_takes_its_text_from_the_spans(tmp_path):
    """mmdetection's goldg2odvg.py writes a list for a non-contiguous phrase, with tokens_positive."""
    caption = "the red and blue ball on a mat"
    regions = [
        {"bbox": [1, 1, 9, 9], "phrase": ["red", "ball"], "tokens_positive": [[4, 7], [17, 21]]},
        {"bbox": [2, 2, 9, 9], "phrase": ["a", "mat"]},
    ]
    path = write_jsonl(tmp_path / "a.jsonl", [odvg_grounding("x.jpg", caption, regions)])
    (record,) = iter_source(source("o", "odvg", [path]), tmp_path)
    assert record.phrases == [
        Phrase("red ball", [(4, 7), (17, 21)], [0]),
        Phrase("a mat", [(25, 26), (27, 30)], [1]),
    ]
    assert record.category_names == ["red ball", "a mat"]


def test_malformed_odvg_line_is_one_rejected_record_named_by_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(odvg_detection("a.jpg", [GOOD_INSTANCE]))
    path.write_text(f'{good}\n\n{{"filename": \n{good}\n')
    items, records, rejections = read_all(source("o", "odvg", [path]), tmp_path)
    assert [r.key for r in records] == ["o-1", "o-4"]
    assert list(rejections) == [f"{path}:3"] and rejections[f"{path}:3"].startswith("invalid JSON: ")


# MDETR


def mdetr_file(tmp_path, caption="two dogs chase a red ball", annotations=None, images=None):
    images = images or [coco_image(1, caption=caption, dataset_name="flickr", original_img_id=42)]
    if annotations is None:
        annotations = [
            coco_annotation(1, 1, [1, 1, 10, 10], tokens_positive=[[0, 8]]),
            coco_annotation(2, 1, [20, 1, 10, 10], tokens_positive=[[0, 8]]),
            coco_annotation(3, 1, [40, 30, 5, 5], tokens_positive=[[21, 25], [15, 20]]),
        ]
    return write_coco(tmp_path / "mdetr.json", images, annotations, [{"id": 1, "name": "object"}])


def test_mdetr_round_trips_phrases_spans_and_box_names(tmp_path):
    (record,) = iter_source(source("goldg", "mdetr", [mdetr_file(tmp_path)], image_root="flickr"), tmp_path)
    assert record.kind == "grounding" and record.caption == "two dogs chase a red ball"
    assert record.image_path == str(tmp_path / "flickr" / "000000000001.jpg")
    assert record.boxes == [[1.0, 1.0, 11.0, 11.0], [20.0, 1.0, 30.0, 11.0], [40.0, 30.0, 45.0, 35.0]]
    assert record.category_ids == [-1, -1, -1]
    assert record.category_names == ["two dogs", "two dogs", "a red ball"]
    assert record.phrases == [
        Phrase("two dogs", [(0, 8)], [0, 1]),
        Phrase("a red ball", [(15, 20), (21, 25)], [2]),
    ]
    assert record.meta["dataset_name"] == "flickr" and record.meta["original_img_id"] == 42


@pytest.mark.parametrize(
    "annotation, reason",
    [
        (
            coco_annotation(4, 1, [1, 1, 5, 5], tokens_positive=[[20, 40]]),
            "annotation 4 span [20, 40] is outside the caption (length 25)",
        ),
        (
            coco_annotation(4, 1, [1, 1, 5, 5], tokens_positive=[[5, 5]]),
            "annotation 4 span [5, 5] is outside the caption (length 25)",
        ),
        (coco_annotation(4, 1, [1, 1, 5, 5], tokens_positive=[]), "annotation 4 has no spans"),
        (
            coco_annotation(4, 1, [1, 1, math.nan, 5], tokens_positive=[[0, 3]]),
            "annotation 4 has NaN coordinates",
        ),
    ],
)
def test_bad_mdetr_annotation_is_dropped_and_its_image_kept(tmp_path, annotation, reason):
    path = mdetr_file(
        tmp_path, annotations=[coco_annotation(1, 1, [1, 1, 10, 10], tokens_positive=[[0, 8]]), annotation]
    )
    items, records, rejections = read_all(source("m", "mdetr", [path]), tmp_path)
    assert rejections == {} and dropped_of(items) == [("m-1", "4", reason)]
    assert records[0].phrases == [Phrase("two dogs", [(0, 8)], [0])]


def test_mdetr_flickr_sizes_stored_as_strings_are_read(tmp_path):
    """MDETR's final_flickr_separateGT_*.json store "height": "500"."""
    images = [
        coco_image(0, caption="a dog", width="371", height="500"),
        coco_image(1, caption="a dog", width="371.5", height="500"),
        coco_image(2, caption="a dog", width="many", height="500"),
    ]
    annotations = [coco_annotation(i, i, [1, 1, 5, 5], tokens_positive=[[2, 5]]) for i in range(3)]
    path = mdetr_file(tmp_path, images=images, annotations=annotations)
    items, records, rejections = read_all(source("m", "mdetr", [path]), tmp_path)
    assert [(r.key, r.width, r.height) for r in records] == [("m-0", 371, 500)]
    assert rejections == {"m-1": "invalid image size 371.5x500", "m-2": "invalid image size manyx500"}
    assert_counts_balance(items, images=3, boxes=3)


def test_goldg_files_numbering_images_from_zero_all_keep_their_records(tmp_path):
    """GoldG = final_mixed_train_no_coco.json + the Flickr files, each numbering images from 0."""
    paths = []
    for name in ("final_mixed_train_no_coco", "final_flickr_separateGT_train"):
        images = [coco_image(i, caption="a dog", file_name=f"{name}-{i}.jpg") for i in range(3)]
        annotations = [coco_annotation(i, i, [1, 1, 5, 5], tokens_positive=[[2, 5]]) for i in range(3)]
        paths.append(
            write_coco(tmp_path / f"{name}.json", images, annotations, [{"id": 1, "name": "object"}])
        )
    paths.append(
        write_coco(tmp_path / "dup.json", [coco_image(0, caption="a"), coco_image(0, caption="a")], [])
    )
    items, records, rejections = read_all(source("goldg", "mdetr", paths), tmp_path)
    assert [r.key for r in records] == [
        "goldg-final_mixed_train_no_coco-0", "goldg-final_mixed_train_no_coco-1", "goldg-final_mixed_train_no_coco-2",
        "goldg-final_flickr_separateGT_train-0", "goldg-final_flickr_separateGT_train-1",
        "goldg-final_flickr_separateGT_train-2", "goldg-dup-0",
    ]  # fmt: skip
    assert rejections == {"goldg-dup-0": "duplicate image id 0"}  # still rejected inside one file
    assert_keys_are_tar_safe(records)


def test_one_file_sources_keep_the_short_key_and_equal_stems_use_the_folder(tmp_path):
    images = [coco_image(1)]
    train = write_coco(tmp_path / "train" / "labels.json", images, [])
    val = write_coco(tmp_path / "val" / "labels.json", images, [])
    assert [r.key for r in iter_source(source("c", "coco", [train]), tmp_path)] == ["c-1"]
    assert [r.key for r in iter_source(source("c", "coco", [train, val]), tmp_path)] == [
        "c-train_labels-1",
        "c-val_labels-1",
    ]


def test_mdetr_empty_caption_duplicates_and_orphans_are_counted(tmp_path):
    images = [coco_image(1, caption="a cat"), coco_image(2, caption=""), coco_image(1, caption="again")]
    annotations = [
        coco_annotation(1, 1, [1, 1, 5, 5], tokens_positive=[[2, 5]]),
        coco_annotation(2, 9, [1, 1, 5, 5], tokens_positive=[[0, 1]]),
    ]
    path = mdetr_file(tmp_path, images=images, annotations=annotations)
    items, records, _ = read_all(source("m", "mdetr", [path]), tmp_path)
    rejections = [(i.record_id, i.reason) for i in items if isinstance(i, RecordError)]
    assert [r.key for r in records] == ["m-1"]
    assert rejections == [
        ("m-2", "empty caption"),
        ("m-1", "duplicate image id 1"),
        (str(path), "image id 9 not found"),
    ]
    assert_counts_balance(items, images=len(images), boxes=len(annotations))


def test_unknown_format_is_a_config_error(tmp_path):
    with pytest.raises(OvdetError, match="unknown format"):
        list(iter_source(source("x", "tfrecord", ["a"]), tmp_path))
