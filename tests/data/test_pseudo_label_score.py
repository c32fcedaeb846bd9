"""scripts/novel_words.py scores pseudo-labels against the objects the synthetic world drew: precision
over the written boxes, recall over every drawn object, per split, each object matched once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ovdet.config import SynthConfig
from ovdet.data.records import Record
from ovdet.data.shards import write_tar_atomic
from ovdet.data.synthetic_scenes import novel_names, sample_image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import novel_words  # noqa: E402

IMAGES = 6


def box(record: Record, name: str, xyxy: list[float], score: float) -> None:
    record.boxes.append(xyxy)
    record.category_names.append(name)
    record.category_ids.append(-1)
    record.is_crowd.append(0)
    record.meta["pseudo_label"]["scores"].append(score)


def shifted(xyxy: list[float], by: float) -> list[float]:
    return [xyxy[0] + by, xyxy[1], xyxy[2] + by, xyxy[3]]


@pytest.fixture
def world_and_expected(tmp_path) -> tuple[Path, Path, dict]:
    """A world.json (no images: the scorer redraws the objects) and pseudo-labels built from its objects."""
    cfg = SynthConfig(world="novel-words", num_image_text=IMAGES)
    world = tmp_path / "world"
    world.mkdir()
    (world / "world.json").write_text(json.dumps({"config": {"world": "novel-words", "num_image_text": IMAGES}}))
    novel = set(novel_names("novel-words"))
    expected = {split: {"boxes": 0, "right": 0, "objects": 0} for split in ("base", "novel")}
    samples = []
    for index in range(IMAGES):
        objects = sample_image(cfg, "image_text", index).objects
        for obj in objects:
            expected["novel" if obj.name in novel else "base"]["objects"] += 1
        if index == IMAGES - 1:  # rejected: no record, its objects still count for recall
            continue
        record = Record(key=f"s{index}", source=novel_words.PSEUDO_SOURCE, kind="detection", width=cfg.image_size,
                        height=cfg.image_size, meta={"row": index + 1, "pseudo_label": {"scores": []}})
        first = objects[0]
        split = "novel" if first.name in novel else "base"
        box(record, first.name, first.box, 0.9)  # right
        box(record, first.name, shifted(first.box, 0.5), 0.8)  # the same object again: wrong
        expected[split]["boxes"] += 2
        expected[split]["right"] += 1
        for obj in objects[1:]:
            split = "novel" if obj.name in novel else "base"
            if index % 2:  # its box, far off: wrong
                box(record, obj.name, shifted(obj.box, 1000.0), 0.5)
            else:
                box(record, obj.name, obj.box, 0.5)
                expected[split]["right"] += 1
            expected[split]["boxes"] += 1
        samples.append((record.key, b"jpeg", record.to_json()))
    pseudo = tmp_path / "pseudo"
    write_tar_atomic(pseudo / novel_words.PSEUDO_SOURCE / "shard-000000.tar", samples)
    manifest = {"sources": {novel_words.PSEUDO_SOURCE: {"shards": [{"sha256": "x"}]}}}
    (pseudo / "manifest.json").write_text(json.dumps(manifest))
    return world, pseudo, expected


def test_precision_and_recall_count_each_drawn_object_once(world_and_expected):
    world, pseudo, expected = world_and_expected
    score = novel_words.score_pseudo_labels(pseudo, world)
    assert score["images"] == {"labelled": IMAGES - 1, "rejected": 1}
    for split, counts in expected.items():
        assert counts["objects"] > 0, split  # the fixture's world draws both splits
        assert score[split]["boxes"] == counts["boxes"]
        assert score[split]["right"] == counts["right"]
        assert score[split]["objects"] == counts["objects"]
        assert score[split]["precision"] == pytest.approx(counts["right"] / counts["boxes"])
        assert score[split]["recall"] == pytest.approx(counts["right"] / counts["objects"])
    # cached by the shards' digest
    assert json.loads((pseudo / "score.json").read_text())["score"] == score


def test_iou_of_boxes():
    assert novel_words.iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert novel_words.iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert novel_words.iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
