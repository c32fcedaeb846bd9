"""Source readers: each format into Records, every bad input as a counted RecordError."""

from __future__ import annotations

import gzip
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
    write_parquet,
    write_wds_tar,
)

from ovdet.data.images import load_image
from ovdet.data.records import Phrase, Record
from ovdet.data.sources import iter_source
from ovdet.data.sources.coco import read_coco_categories
from ovdet.errors import OvdetError, RecordError


def read_all(src, root):
    items = list(iter_source(src, root))
    records = [i for i in items if isinstance(i, Record)]
    rejections = {i.record_id: i.reason for i in items if isinstance(i, RecordError)}
    return items, records, rejections


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
def test_invalid_coco_box_rejects_its_image(tmp_path, bbox, reason):
    annotations = [coco_annotation(6, 1, [1, 1, 2, 2]), coco_annotation(7, 1, bbox)]
    path = write_coco(tmp_path / "a.json", [coco_image(1), coco_image(2)], annotations)
    items, records, rejections = read_all(source("c", "coco", [path]), tmp_path)
    assert rejections == {"c-1": reason}
    assert [r.key for r in records] == ["c-2"]


def test_box_slightly_outside_the_image_is_clipped_and_counted(tmp_path):
    annotations = [coco_annotation(1, 1, [-2, 40, 10, 10]), coco_annotation(2, 1, [60, 0, 10, 10])]
    path = write_coco(tmp_path / "a.json", [coco_image(1, 64, 48)], annotations)
    (record,) = iter_source(source("c", "coco", [path]), tmp_path)
    assert record.boxes == [[0.0, 40.0, 8.0, 48.0], [60.0, 0.0, 64.0, 10.0]]
    assert record.meta["clipped_boxes"] == 2


def test_unknown_category_id_rejects_the_image(tmp_path):
    path = write_coco(
        tmp_path / "a.json", [coco_image(1)], [coco_annotation(3, 1, [1, 1, 2, 2], category_id=99)]
    )
    _, _, rejections = read_all(source("c", "coco", [path]), tmp_path)
    assert rejections == {"c-1": "annotation 3 has unknown category id 99"}


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


def test_annotation_of_a_missing_image_is_counted_as_a_rejection(tmp_path):
    annotations = [coco_annotation(1, 1, [1, 1, 2, 2]), coco_annotation(2, 77, [1, 1, 2, 2])]
    path = write_coco(tmp_path / "a.json", [coco_image(1), coco_image(2)], annotations)
    items, records, rejections = read_all(source("c", "coco", [path]), tmp_path)
    assert rejections == {"annotation 2": "image id 77 not found"}
    assert len(records) + len(rejections) == 2 + 1  # images + orphan annotations
    assert isinstance(items[-1], RecordError)  # after the images, deterministic


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
    items, records, _ = read_all(source("c", "coco", [path]), tmp_path)
    rejections = [i for i in items if isinstance(i, RecordError)]
    assert len(records) + len(rejections) == len(images) + 2
    assert [r.key for r in records] == ["c-1", "c-4", "c-5"]
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


def test_odvg_label_missing_from_the_label_map_is_rejected(tmp_path):
    rows = [odvg_detection("a.jpg", [{"bbox": [1, 2, 3, 4], "label": 7, "category": "x"}])]
    data = write_jsonl(tmp_path / "od.jsonl", rows)
    label_map = write_json(tmp_path / "labels.json", {"0": "person"})
    _, _, rejections = read_all(source("o", "odvg", [data, label_map]), tmp_path)
    assert rejections == {"o-1": "box 0 has unknown category id 7"}


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
        (
            odvg_grounding(
                "x.jpg", "a cat", [{"bbox": [1, 1, 5, 5], "phrase": "cat", "tokens_positive": [[2, 9]]}]
            ),
            "phrase 0 span [2, 9] is outside the caption (length 5)",
        ),
        (
            odvg_grounding("x.jpg", "a cat", [{"bbox": [1, 1, 5, 5], "phrase": "dog"}]),
            "phrase 0 is not in the caption and has no tokens_positive",
        ),
        (
            odvg_detection("x.jpg", [{"bbox": [1, 1, 5, math.nan], "label": 0, "category": "a"}]),
            "box 0 has NaN coordinates",
        ),
        (
            odvg_detection("x.jpg", [{"bbox": [5, 1, 5, 9], "label": 0, "category": "a"}]),
            "box 0 has zero or negative size",
        ),
        (
            odvg_detection("x.jpg", [{"bbox": [0, 50, 5, 60], "label": 0, "category": "a"}]),
            "box 0 is outside the image",
        ),
        (odvg_detection("x.jpg", [{"bbox": [1, 1, 5, 5], "label": 0}]), "box 0 has unknown category id 0"),
        ({"filename": "x.jpg", "height": 4, "width": 4}, "neither a detection nor a grounding record"),
        ({"height": 4, "width": 4, "detection": {"instances": []}}, "missing filename"),
        (["not", "an", "object"], "line is not a JSON object"),
    ],
)
def test_bad_odvg_line_is_rejected_with_its_reason(tmp_path, row, reason):
    good = odvg_detection("ok.jpg", [{"bbox": [1, 1, 5, 5], "label": 0, "category": "a"}])
    path = write_jsonl(tmp_path / "a.jsonl", [good, row, good])
    items, records, rejections = read_all(source("o", "odvg", [path]), tmp_path)
    assert rejections == {"o-2": reason}
    assert [r.key for r in records] == ["o-1", "o-3"]


def test_malformed_odvg_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"filename": "a.jpg"}\n\n{"filename": \n')
    with pytest.raises(OvdetError, match=r"bad\.jsonl:3: invalid JSON"):
        list(iter_source(source("o", "odvg", [path]), tmp_path))


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
def test_bad_mdetr_annotation_rejects_its_image(tmp_path, annotation, reason):
    path = mdetr_file(
        tmp_path, annotations=[coco_annotation(1, 1, [1, 1, 10, 10], tokens_positive=[[0, 8]]), annotation]
    )
    _, records, rejections = read_all(source("m", "mdetr", [path]), tmp_path)
    assert records == [] and rejections == {"m-1": reason}


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
        ("annotation 2", "image id 9 not found"),
    ]
    assert len(records) + len(rejections) == len(images) + 1


# Image-text


def test_image_text_jsonl_accepts_each_image_and_caption_key(tmp_path):
    rows = [
        {"image": "a.jpg", "caption": "a cat"},
        {"image_path": "/abs/b.jpg", "text": "a dog"},
        {"filepath": "c.jpg", "caption": "a car", "key": "k/3"},
        {"url": "d.jpg", "text": "a cup"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    _, records, _ = read_all(source("cc", "jsonl", [path], image_root="imgs", kind="image_text"), tmp_path)
    assert [r.key for r in records] == ["cc-1", "cc-2", "cc-k_3", "cc-4"]
    assert [r.caption for r in records] == ["a cat", "a dog", "a car", "a cup"]
    assert records[0].image_path == str(tmp_path / "imgs" / "a.jpg")
    assert records[1].image_path == "/abs/b.jpg"
    assert all(r.kind == "image_text" and not r.has_boxes for r in records)


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"image": "a.jpg", "caption": ""}, "empty caption"),
        ({"image": "a.jpg"}, "missing caption"),
        ({"caption": "a cat"}, "missing image path"),
        (
            {"url": "https://x.org/a.jpg", "caption": "a cat"},
            "remote image URL (download it first, e.g. with img2dataset)",
        ),
    ],
)
def test_bad_image_text_row_is_rejected(tmp_path, row, reason):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"image": "ok.jpg", "caption": "ok"}, row])
    items, records, rejections = read_all(source("cc", "jsonl", [path]), tmp_path)
    assert len(items) == 2 and rejections == {"cc-2": reason}


def test_image_text_vocabulary_labels_each_caption_with_the_names_it_mentions(tmp_path):
    rows = [
        {"image": "a.jpg", "caption": "an image showing a red circle and two blue stars on a textured background."},
        {"image": "b.jpg", "caption": "a picture of a circle"},
        {"image": "c.jpg", "caption": "a green heart and nothing else"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    (tmp_path / "names.txt").write_text("red circle\nblue star\ncircle\n")
    config = source("cc", "jsonl", [path], kind="image_text")
    config.vocabulary = "names.txt"
    items, records, rejections = read_all(config, tmp_path)
    assert [r.caption_labels() for r in records] == [["red circle", "blue star"], ["circle"]]
    first = records[0]
    assert [(p.text, [first.caption[a:b] for a, b in p.spans], p.box_indices) for p in first.phrases] == [
        ("red circle", ["red circle"], []),
        ("blue star", ["blue stars"], []),
    ]
    assert len(items) == 3 and rejections == {"cc-3": "caption names no vocabulary name"}


def test_image_text_without_vocabulary_falls_back_to_caption_phrases(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"image": "a.jpg", "caption": "a photo of a red circle and a dog"}])
    (record,) = iter_source(source("cc", "jsonl", [path], kind="image_text"), tmp_path)
    assert record.phrases == [] and record.caption_labels() == ["red circle", "dog"]


def test_vocabulary_on_a_detection_source_or_a_missing_file_is_a_config_error(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"image": "a.jpg", "caption": "a cat"}])
    config = source("cc", "jsonl", [path], kind="image_text")
    config.vocabulary = "missing.txt"
    with pytest.raises(OvdetError, match="missing.txt: vocabulary file not found"):
        list(iter_source(config, tmp_path))
    coco = source("c", "coco", [write_coco(tmp_path / "c.json", [], [])])
    coco.vocabulary = "names.txt"
    with pytest.raises(OvdetError, match="source 'c': 'vocabulary' applies to image_text sources only"):
        list(iter_source(coco, tmp_path))


def test_malformed_image_text_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "x"}\n{oops}\n')
    with pytest.raises(OvdetError, match=r"pairs\.jsonl:2: invalid JSON"):
        list(iter_source(source("cc", "jsonl", [path]), tmp_path))


def test_image_text_parquet_rows_become_records(tmp_path):
    rows = [{"image": f"{i}.jpg", "caption": f"caption {i}"} for i in range(3)] + [
        {"image": "x.jpg", "caption": ""}
    ]
    path = write_parquet(tmp_path / "pairs.parquet", rows)
    items, records, rejections = read_all(source("pq", "parquet", [path]), tmp_path)
    assert [r.key for r in records] == ["pq-0", "pq-1", "pq-2"]
    assert records[2].caption == "caption 2" and records[2].image_path == str(tmp_path / "2.jpg")
    assert rejections == {"pq-3": "empty caption"}


def test_webdataset_tars_become_records_that_point_into_the_tar(tmp_path):
    samples = [
        {"__key__": "000000000", "jpg": jpeg_bytes(), "txt": "a cat", "json": '{"url": "http://x/a.jpg"}'},
        {"__key__": "000000001", "jpg": jpeg_bytes(), "json": '{"caption": "a dog"}'},
        {"__key__": "000000002", "txt": "no image"},
        {"__key__": "000000003", "jpg": jpeg_bytes()},
    ]
    write_wds_tar(tmp_path / "shards" / "00000.tar", samples)
    src = source("laion", "wds", ["shards/*.tar"], kind="image_text")
    items, records, rejections = read_all(src, tmp_path)
    assert len(items) == 4
    assert [(r.key, r.caption) for r in records] == [
        ("laion-000000000", "a cat"),
        ("laion-000000001", "a dog"),
    ]
    where = records[0].meta["image_bytes_from"]
    assert where["tar"] == str(tmp_path / "shards" / "00000.tar") and where["member"] == "000000000.jpg"
    assert records[0].meta["url"] == "http://x/a.jpg"
    assert rejections == {"laion-000000002": "no image in sample", "laion-000000003": "missing caption"}


def test_unknown_format_is_a_config_error(tmp_path):
    with pytest.raises(OvdetError, match="unknown format"):
        list(iter_source(source("x", "tfrecord", ["a"]), tmp_path))


def test_webdataset_record_loads_its_image_from_the_tar(tmp_path):
    image = jpeg_bytes(20, 10)
    write_wds_tar(
        tmp_path / "a.tar", [{"jpg": jpeg_bytes(8, 8), "txt": "first"}, {"jpg": image, "txt": "second"}]
    )
    records = list(iter_source(source("w", "wds", ["a.tar"]), tmp_path))
    data, record = load_image(records[1])
    assert data == image and (record.width, record.height) == (20, 10)
    assert records[1].meta["image_bytes_from"]["size"] == len(image)


def test_compressed_webdataset_tar_is_read_by_member_name(tmp_path):
    image = jpeg_bytes(20, 10)
    plain = write_wds_tar(tmp_path / "a.tar", [{"jpg": image, "txt": "a cat"}])
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
    (record,) = iter_source(source("w", "wds", ["a.tar.gz"]), tmp_path)
    assert "offset" not in record.meta["image_bytes_from"]
    assert load_image(record)[0] == image


def test_bad_webdataset_sample_json_is_rejected(tmp_path):
    write_wds_tar(tmp_path / "a.tar", [{"jpg": jpeg_bytes(), "json": "{nope"}])
    _, _, rejections = read_all(source("w", "wds", ["a.tar"]), tmp_path)
    assert rejections == {"w-000000000": "invalid JSON in sample .json"}


def test_unreadable_tar_is_a_file_error(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(OvdetError, match=r"a\.tar: cannot read tar"):
        list(iter_source(source("w", "wds", ["a.tar"]), tmp_path))
