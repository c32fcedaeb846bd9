"""The Ray shard stage: every format round-trips to the loader, every bad input is counted,
reruns and interrupted runs give byte-identical shards, and the CLI's user errors are one line."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from fixtures import (  # noqa: E402
    LVIS_CATEGORIES,
    coco_annotation,
    coco_image,
    jpeg_bytes,
    odvg_detection,
    odvg_grounding,
    source,
    write_coco,
    write_jpeg,
    write_json,
    write_jsonl,
    write_parquet,
    write_png,
    write_wds_tar,
)
from ovdet.pipelines.shard import run_shard_stage  # noqa: E402

from ovdet.cli import main as ovdet_main  # noqa: E402
from ovdet.config import DataConfig, LoaderConfig, SynthConfig, load_config  # noqa: E402
from ovdet.data.captions import extract_caption_phrases  # noqa: E402
from ovdet.data.loader import TrainLoader  # noqa: E402
from ovdet.data.records import Record  # noqa: E402
from ovdet.data.sources import iter_source  # noqa: E402
from ovdet.data.synthetic import generate_world  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    """One 2-CPU local cluster for the in-process runs; the stage reuses it instead of starting its own."""
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    assert ray.util.get_node_ip_address() == "127.0.0.1"  # tests/conftest.py: loopback only
    yield
    ray.shutdown()


def shard(cfg: DataConfig, out: Path, **kwargs) -> dict:
    return run_shard_stage(cfg, out, progress=False, **kwargs)


def read_shard(path: Path) -> list[tuple[str, bytes, dict]]:
    """``(key, jpg bytes, json)`` per sample, in tar order, read with tarfile (not with our code)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return [(key, parts["jpg"], json.loads(parts["json"])) for key, parts in samples.items()]


def read_all_shards(out: Path, manifest: dict, name: str) -> list[tuple[str, bytes, dict]]:
    return [s for entry in manifest["sources"][name]["shards"] for s in read_shard(out / entry["path"])]


def file_tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def visible_tars(folder: Path) -> dict[str, bytes]:
    return {
        k: v for k, v in file_tree(folder).items() if k.endswith(".tar") and not Path(k).name.startswith(".")
    }


# Fixtures: every published format, valid records only


def write_every_format(root: Path) -> DataConfig:
    """Two or three valid records per format; returns the data config that reads them all."""
    write_jpeg(root / "coco" / "000000000001.jpg", 64, 48, seed=1)
    write_jpeg(root / "coco" / "000000000002.jpg", 64, 48, seed=2)
    write_coco(
        root / "coco.json",
        [coco_image(1, neg_category_ids=[2]), coco_image(2)],
        [
            coco_annotation(1, 1, [4, 6, 10, 20], category_id=1),
            coco_annotation(2, 1, [20, 10, 30, 20], category_id=3, iscrowd=1),
            coco_annotation(3, 1, [40, 30, 20, 10], category_id=3),
        ],
        LVIS_CATEGORIES,
    )
    for i in range(3):
        write_jpeg(root / "odvg" / f"{i}.jpg", 64, 48, seed=10 + i)
    write_json(root / "labels.json", {"0": "cat", "1": "dog"})
    write_jsonl(
        root / "odvg_det.jsonl",
        [
            odvg_detection(
                "0.jpg", [{"bbox": [1, 2, 30, 40], "label": 0}, {"bbox": [30, 5, 60, 45], "label": 1}]
            ),
            odvg_detection("1.jpg", [{"bbox": [10, 10, 20, 20], "label": 1}]),
        ],
    )
    caption = "a cat next to two red balls"
    write_jsonl(
        root / "odvg_ground.jsonl",
        [
            odvg_grounding(
                "2.jpg",
                caption,
                [
                    {"bbox": [2, 2, 20, 30], "phrase": "a cat", "tokens_positive": [[0, 5]]},
                    {
                        "bbox": [[30, 5, 40, 15], [45, 20, 60, 40]],
                        "phrase": "red balls",
                        "tokens_positive": [[18, 27]],
                    },
                ],
            )
        ],
    )
    write_jpeg(root / "mdetr" / "m1.jpg", 64, 48, seed=20)
    write_coco(
        root / "mdetr.json",
        [coco_image(7, file_name="m1.jpg", caption="the man holds a blue cup")],
        [
            coco_annotation(1, 7, [1, 1, 20, 40], tokens_positive=[[0, 7]]),
            coco_annotation(2, 7, [30, 20, 10, 10], tokens_positive=[[16, 24]]),
        ],
        [{"id": 1, "name": "object"}],
    )
    for i in range(2):
        write_jpeg(root / "pairs" / f"j{i}.jpg", 48, 64, seed=30 + i)
        write_jpeg(root / "pairs" / f"p{i}.jpg", 32, 24, seed=40 + i)
    write_jsonl(
        root / "pairs.jsonl",
        [
            {"image": "j0.jpg", "caption": "a photo of a cat and a dog"},
            {"image": "j1.jpg", "caption": "a green kite"},
        ],
    )
    write_parquet(
        root / "pairs.parquet",
        [
            {"key": "p0", "image": "p0.jpg", "text": "two dogs"},
            {"key": "p1", "image": "p1.jpg", "text": "a bird"},
        ],
    )
    write_wds_tar(
        root / "web" / "00000.tar",
        [
            {
                "__key__": f"{i:09d}",
                "jpg": jpeg_bytes(40, 30, seed=50 + i),
                "txt": f"a {c} boat",
                "json": json.dumps({"url": f"http://x/{i}.jpg"}),
            }
            for i, c in enumerate(["red", "blue", "white"])
        ],
    )
    sources = [
        source("coco", "coco", ["coco.json"], "coco"),
        source("odvg-det", "odvg", ["odvg_det.jsonl", "labels.json"], "odvg"),
        source("odvg-ground", "odvg", ["odvg_ground.jsonl"], "odvg", kind="grounding"),
        source("mdetr", "mdetr", ["mdetr.json"], "mdetr", kind="grounding"),
        source("pairs-jsonl", "jsonl", ["pairs.jsonl"], "pairs", kind="image_text"),
        source("pairs-parquet", "parquet", ["pairs.parquet"], "pairs", kind="image_text"),
        source("web", "wds", ["web/*.tar"], kind="image_text"),
    ]
    return DataConfig(root=str(root), sources=sources, samples_per_shard=2)


def original_image_bytes(record: Record) -> bytes:
    where = record.meta.get("image_bytes_from")
    if where:
        with tarfile.open(where["tar"]) as tar:
            return tar.extractfile(where["member"]).read()
    return Path(record.image_path).read_bytes()


def stored_json(record: Record) -> dict:
    """What the shard should hold: the record without local paths, its size filled in from the image."""
    data = record.to_json()
    data["meta"].pop("image_bytes_from", None)
    if not record.width:  # image-text sources have no annotated size
        data["width"], data["height"] = Image.open(io.BytesIO(original_image_bytes(record))).size
    return data


@pytest.fixture(scope="module")
def every_format(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    cfg = write_every_format(root / "data")
    out = root / "shards"
    return cfg, out, shard(cfg, out)


def test_every_format_round_trips_records_and_original_jpeg_bytes_into_shards(every_format):
    cfg, out, manifest = every_format
    for src in cfg.sources:
        expected = list(iter_source(src, Path(cfg.root)))
        assert all(isinstance(r, Record) for r in expected), src.name
        stored = read_all_shards(out, manifest, src.name)
        assert [key for key, _, _ in stored] == [r.key for r in expected]
        for (_, jpg, data), record in zip(stored, expected, strict=True):
            assert data == stored_json(record)
            assert jpg == original_image_bytes(record)  # RGB JPEG, no resize: stored verbatim
        assert manifest["sources"][src.name]["written"] == len(expected)


def test_worked_examples_survive_the_shard_stage(every_format):
    _, out, manifest = every_format
    (coco_1, coco_2) = [data for _, _, data in read_all_shards(out, manifest, "coco")]
    assert coco_1["boxes"] == [[4.0, 6.0, 14.0, 26.0], [20.0, 10.0, 50.0, 30.0], [40.0, 30.0, 60.0, 40.0]]
    assert coco_1["category_names"] == ["cat", "dog", "dog"] and coco_1["is_crowd"] == [0, 1, 0]
    assert coco_1["negatives"] == ["aardvark"] and coco_2["boxes"] == []
    (ground,) = [data for _, _, data in read_all_shards(out, manifest, "odvg-ground")]
    assert ground["phrases"] == [
        {"text": "a cat", "spans": [[0, 5]], "box_indices": [0]},
        {"text": "red balls", "spans": [[18, 27]], "box_indices": [1, 2]},
    ]
    (mdetr,) = [data for _, _, data in read_all_shards(out, manifest, "mdetr")]
    assert mdetr["category_names"] == ["the man", "blue cup"]
    keys = [key for key, _, _ in read_all_shards(out, manifest, "pairs-parquet")]
    assert keys == ["pairs-parquet-p0", "pairs-parquet-p1"]
    assert manifest["sources"]["coco"]["names"] == ["cat", "dog"]
    assert manifest["sources"]["odvg-ground"]["names"] == ["a cat", "red balls"]


def test_manifest_carries_the_category_table_and_box_counts(every_format):
    _, _, manifest = every_format
    coco = manifest["sources"]["coco"]
    assert coco["categories"] == LVIS_CATEGORIES  # synonyms, definitions, frequency
    assert "categories" not in manifest["sources"]["mdetr"]
    assert (coco["boxes_read"], coco["boxes_written"], coco["boxes_rejected"]) == (3, 3, 0)
    ground = manifest["sources"]["odvg-ground"]
    assert (ground["boxes_read"], ground["boxes_written"], ground["boxes_rejected"]) == (3, 3, 0)
    assert all(s["reasons"] == {} and s["annotations_dropped"] == 0 for s in manifest["sources"].values())


def boxes_in_original_pixels(boxes_cxcywh, record: dict, image_size: int) -> np.ndarray:
    """Undo letterbox (scale 1, no flip): normalized cxcywh of the input -> xyxy of the original."""
    cx, cy, w, h = (boxes_cxcywh.numpy().astype(np.float64) * image_size).T
    scale = image_size / max(record["width"], record["height"])
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) / scale


def non_crowd(record: dict) -> tuple[list[list[float]], list[str]]:
    crowd = record["is_crowd"] or [0] * len(record["boxes"])
    kept = [i for i, c in enumerate(crowd) if not c]
    return [record["boxes"][i] for i in kept], [record["category_names"][i] for i in kept]


def test_every_format_reaches_the_loader_with_its_boxes_and_texts(every_format):
    cfg, out, manifest = every_format
    for src in cfg.sources:
        stored = {key: data for key, _, data in read_all_shards(out, manifest, src.name)}
        loader_cfg = LoaderConfig(
            sources=[src.name],
            batch_size=len(stored),
            num_workers=0,
            image_size=32,
            min_scale=1.0,
            hflip_probability=0.0,
            template_probability=0.0,
        )
        (batch,) = TrainLoader([out], loader_cfg).iterate(1)  # one block of one source: every sample once
        assert sorted(batch["key"]) == sorted(stored)
        assert batch["images"].shape == (len(stored), 3, 32, 32)
        for i, key in enumerate(batch["key"]):
            record = stored[key]
            boxes, names = non_crowd(record)
            mapped_back = boxes_in_original_pixels(batch["boxes"][i], record, 32)
            np.testing.assert_allclose(mapped_back, np.array(boxes).reshape(-1, 4), atol=1e-3)
            texts, labels = batch["texts"][i], batch["labels"][i].tolist()
            if record["kind"] == "image_text":
                phrases = extract_caption_phrases(record["caption"])
                assert not batch["has_boxes"][i] and texts[: len(phrases)] == phrases
                assert batch["image_labels"][i].tolist() == list(range(len(phrases)))
            else:
                assert [texts[j] for j in labels] == names


# Fixtures: every bad-input kind


def write_every_bad_input(root: Path) -> DataConfig:
    """One record per bad-input kind plus a few good ones; images are 32x24 and the pixel limit is 1000."""
    images = root / "images"
    good = [coco_image(i, 32, 24) for i in (1, 2)]
    for image in good:
        write_jpeg(images / image["file_name"], 32, 24, seed=image["id"])
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (images / "truncated.jpg").write_bytes(jpeg_bytes(32, 24)[:300])
    write_jpeg(images / "small.jpg", 16, 12)
    write_jpeg(images / "bomb.jpg", 64, 48)
    write_jpeg(images / "gray.jpg", 32, 24, mode="L")
    write_jpeg(images / "cmyk.jpg", 32, 24, mode="CMYK")
    write_png(images / "alpha.png", 32, 24, mode="RGBA")
    named = {
        3: "corrupt.jpg",
        4: "truncated.jpg",
        5: "absent.jpg",
        6: "small.jpg",
        7: "bomb.jpg",
        8: "gray.jpg",
        9: "cmyk.jpg",
        10: "alpha.png",
    }
    for i in range(11, 18):
        write_jpeg(images / f"box{i}.jpg", 32, 24, seed=i)
        named[i] = f"box{i}.jpg"
    extra = [coco_image(i, *((64, 48) if i == 7 else (32, 24)), file_name=name) for i, name in named.items()]
    annotations = [
        coco_annotation(1, 1, [2, 2, 10, 10]),
        coco_annotation(2, 2, [28, 20, 10, 10]),  # slightly outside: clipped to [28, 20, 32, 24]
        coco_annotation(11, 11, [1, math.nan, 5, 5]),
        coco_annotation(12, 12, [1, 1, math.inf, 5]),
        coco_annotation(13, 13, [1, 1, 0, 5]),
        coco_annotation(14, 14, [5, 5, 4, -3]),
        coco_annotation(15, 15, [40, 30, 5, 5]),  # fully outside
        coco_annotation(16, 16, [1, 1, 5, 5], category_id=99),  # the image's only box: the image goes
        coco_annotation(17, 17, [1, 1, 5, 5], category_id=2),
        coco_annotation(99, 404, [1, 1, 5, 5]),  # orphan
        coco_annotation(17, 17, [2, 2, 5, 5]),  # repeats annotation id 17
    ]
    # images 11-15 also hold a valid box, so they are kept without their bad one
    annotations += [coco_annotation(100 + i, i, [2, 2, 6, 6]) for i in range(11, 16)]
    duplicate = coco_image(1, 32, 24, file_name="box17.jpg")
    write_coco(root / "coco.json", good + extra + [duplicate], annotations)
    write_jpeg(root / "ground" / "g.jpg", 32, 24)
    write_jsonl(
        root / "ground.jsonl",
        [
            odvg_grounding(
                "g.jpg",
                "a cat",
                [{"bbox": [1, 1, 9, 9], "phrase": "a cat", "tokens_positive": [[0, 5]]}],
                32,
                24,
            ),
            odvg_grounding("g.jpg", "", [], 32, 24),
            odvg_grounding(
                "g.jpg",
                "a dog",
                [{"bbox": [1, 1, 9, 9], "phrase": "a dog", "tokens_positive": [[2, 40]]}],
                32,
                24,
            ),
        ],
    )
    write_jsonl(
        root / "pairs.jsonl",
        [{"image": "ground/g.jpg", "caption": "a cat"}, {"image": "ground/g.jpg", "caption": "  "}],
    )
    sources = [
        source("coco", "coco", ["coco.json"], "images"),
        source("ground", "odvg", ["ground.jsonl"], "ground", kind="grounding"),
        source("pairs", "jsonl", ["pairs.jsonl"], kind="image_text"),
    ]
    return DataConfig(root=str(root), sources=sources, samples_per_shard=4, max_image_pixels=1000)


# (source, record id, annotation id or None for the record itself) -> reason (its start)
EXPECTED_REJECTIONS = {
    ("coco", "coco-3", None): "cannot decode image",
    ("coco", "coco-4", None): "cannot decode image",
    ("coco", "coco-5", None): "image file not found",
    ("coco", "coco-6", None): "image size 16x12 disagrees with annotation 32x24",
    ("coco", "coco-7", None): "image has more than 1000 pixels (decompression bomb)",
    ("coco", "coco-11", "11"): "annotation 11 has NaN coordinates",
    ("coco", "coco-12", "12"): "annotation 12 has infinite coordinates",
    ("coco", "coco-13", "13"): "annotation 13 has zero or negative size",
    ("coco", "coco-14", "14"): "annotation 14 has zero or negative size",
    ("coco", "coco-15", "15"): "annotation 15 is outside the image",
    ("coco", "coco-16", "16"): "annotation 16 has unknown category id 99",
    ("coco", "coco-16", None): "no valid annotation left (1 invalid)",
    ("coco", "coco-17", "17"): "duplicate annotation id 17",
    ("coco", "coco-1", None): "duplicate image id 1",
    ("coco", "COCO_JSON", "99"): "image id 404 not found",
    ("ground", "ground-2", None): "empty caption",
    ("ground", "ground-3", "phrase 0"): "phrase 0 span [2, 40] is outside the caption (length 5)",
    ("ground", "ground-3", None): "no valid annotation left (1 invalid)",
    ("pairs", "pairs-2", None): "empty caption",
}


@pytest.fixture(scope="module")
def every_bad_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    cfg = write_every_bad_input(root / "data")
    out = root / "shards"
    return cfg, out, shard(cfg, out)


def test_manifest_counts_balance_for_every_source_on_every_bad_input_kind(every_bad_input):
    _, out, manifest = every_bad_input
    counts = {name: (s["read"], s["written"], s["rejected"]) for name, s in manifest["sources"].items()}
    # coco: 18 image entries, one repeating id 1
    assert counts == {"coco": (18, 11, 7), "ground": (3, 1, 2), "pairs": (2, 1, 1)}
    boxes = {
        name: (s["boxes_read"], s["boxes_written"], s["boxes_rejected"], s["annotations_dropped"])
        for name, s in manifest["sources"].items()
    }
    # coco: 16 annotations; 8 kept, 8 dropped alone (6 invalid, 1 orphan, 1 repeated id)
    assert boxes == {"coco": (16, 8, 8, 8), "ground": (2, 1, 1, 1), "pairs": (0, 0, 0, 0)}
    for name, s in manifest["sources"].items():
        assert s["read"] == s["written"] + s["rejected"], name
        assert s["boxes_read"] == s["boxes_written"] + s["boxes_rejected"], name
        assert s["written"] == sum(shard["count"] for shard in s["shards"])
    assert manifest["sources"]["coco"]["clipped_boxes"] == 1
    assert manifest["sources"]["coco"]["reasons"] == {
        "annotation has zero or negative size": 2,
        "cannot decode image": 2,
        "annotation has NaN coordinates": 1,
        "annotation has infinite coordinates": 1,
        "annotation has unknown category id N": 1,
        "annotation is outside the image": 1,
        "duplicate annotation id N": 1,
        "duplicate image id N": 1,
        "image file not found": 1,
        "image has more than N pixels (decompression bomb)": 1,
        "image id N not found": 1,
        "image size NxN disagrees with annotation NxN": 1,
        "no valid annotation left (N invalid)": 1,
    }


def test_manifest_shard_entries_match_the_files(every_bad_input):
    _, out, manifest = every_bad_input
    for s in manifest["sources"].values():
        for entry in s["shards"]:
            path = out / entry["path"]
            assert entry["bytes"] == path.stat().st_size
            assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert entry["count"] == len(read_shard(path))


def test_rejected_jsonl_has_one_line_per_rejected_record_and_annotation(every_bad_input):
    cfg, out, manifest = every_bad_input
    rows = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert all(set(row) - {"annotation_id"} == {"source", "record_id", "reason"} for row in rows)
    assert len(rows) == sum(s["rejected"] + s["annotations_dropped"] for s in manifest["sources"].values())
    coco_json = str(Path(cfg.root) / "coco.json")
    found = {
        (row["source"], "COCO_JSON" if row["record_id"] == coco_json else row["record_id"], row.get("annotation_id")):
            row["reason"]
        for row in rows
    }  # fmt: skip
    assert set(found) == set(EXPECTED_REJECTIONS)
    for where, reason in EXPECTED_REJECTIONS.items():
        assert found[where].startswith(reason), (where, found[where])


def test_grayscale_cmyk_and_alpha_images_are_converted_not_rejected(every_bad_input):
    _, out, manifest = every_bad_input
    stored = {key: (jpg, data) for key, jpg, data in read_all_shards(out, manifest, "coco")}
    for key, mode in [("coco-8", "L"), ("coco-9", "CMYK"), ("coco-10", "RGBA")]:
        jpg, data = stored[key]
        assert data["meta"]["converted_from"] == mode
        image = Image.open(io.BytesIO(jpg))
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (32, 24))
    assert stored["coco-2"][1]["boxes"] == [[28.0, 20.0, 32.0, 24.0]]
    assert stored["coco-2"][1]["meta"]["clipped_boxes"] == 1


def test_only_valid_records_reach_the_shards(every_bad_input):
    _, out, manifest = every_bad_input
    keys = {name: [key for key, _, _ in read_all_shards(out, manifest, name)] for name in manifest["sources"]}
    assert keys == {
        "coco": ["coco-1", "coco-2", "coco-8", "coco-9", "coco-10"]
        + [f"coco-{i}" for i in range(11, 16)]
        + ["coco-17"],
        "ground": ["ground-1"],
        "pairs": ["pairs-1"],
    }


# Reruns and interrupted runs


def test_rerun_skips_finished_shards_and_keeps_them_byte_identical(tmp_path):
    cfg = write_every_format(tmp_path / "data")
    out = tmp_path / "shards"
    first = shard(cfg, out)
    files = file_tree(out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}
    assert shard(cfg, out) == first
    assert file_tree(out) == files
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")} == stamps  # skipped, not rewritten
    lost = out / first["sources"]["coco"]["shards"][0]["path"]
    lost.unlink()
    assert shard(cfg, out) == first
    assert file_tree(out) == files
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tar") if p != lost} == {
        p: t for p, t in stamps.items() if p != lost
    }


def test_same_records_give_byte_identical_shards_in_another_folder(tmp_path, every_format):
    cfg, out, manifest = every_format
    again = shard(cfg, tmp_path / "again")
    assert again == manifest
    assert visible_tars(tmp_path / "again") == visible_tars(out)


def write_data_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump({"root": ".", **data}))
    return path


def data_config_from_yaml(path: Path) -> DataConfig:
    """As the CLI resolves it: ``root`` relative to the YAML's folder."""
    cfg = load_config(path, cls=DataConfig)
    cfg.root = str((path.parent / cfg.root).resolve())
    return cfg


def processes_in_session(session_id: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and int(fields[3]) == session_id:
            found.append(int(entry.name))
    return found


def kill_after_first_shard(command: list[str], out: Path, timeout: float = 120.0) -> None:
    """Run ``command`` in its own session and SIGKILL the whole session once one shard is done."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen(
        command, start_new_session=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if out.exists() and any(out.rglob("*.done.json")):
                break
            time.sleep(0.005)
        assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()}"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
        for pid in processes_in_session(process.pid):  # Ray processes the run started, if any survived
            os.kill(pid, signal.SIGKILL)


def test_killed_run_leaves_no_partial_tar_and_its_rerun_matches_an_uninterrupted_run(tmp_path):
    world = tmp_path / "world"
    generate_world(
        SynthConfig(image_size=96, num_detection=50, num_grounding=0, num_image_text=0, num_eval=0),
        world,
        progress=False,
    )
    config = write_data_yaml(
        world / "data.yaml",
        {
            "sources": [
                {
                    "name": "det",
                    "kind": "detection",
                    "format": "coco",
                    "paths": ["detection_train.json"],
                    "image_root": "images",
                }
            ],
            "samples_per_shard": 1,
            "max_image_side": 64,  # every image is re-encoded: real work per shard
        },
    )
    cfg = data_config_from_yaml(config)
    reference = shard(cfg, tmp_path / "reference")
    assert sum(len(s["shards"]) for s in reference["sources"].values()) == 50
    out = tmp_path / "killed"
    kill_after_first_shard(
        [str(REPO / ".venv/bin/ovdet"), "shard", "--config", str(config), "--out", str(out)], out
    )
    assert not (out / "manifest.json").exists()
    finished = visible_tars(out)
    assert 0 < len(finished) < 50
    expected = visible_tars(tmp_path / "reference")
    assert all(finished[name] == expected[name] for name in finished)  # complete or absent, never partial
    leftovers = [
        p.name for p in out.rglob("*") if p.is_file() and not p.name.endswith((".tar", ".done.json"))
    ]
    assert all(name.startswith(".") for name in leftovers)
    assert shard(cfg, out) == reference
    assert visible_tars(out) == expected


# The CLI: dry runs and user errors


def data_yaml_of(cfg: DataConfig, path: Path, **settings) -> Path:
    """The YAML a user would write for ``cfg``'s sources (``root`` is the YAML's folder)."""
    keys = ("name", "kind", "format", "paths", "image_root")
    sources = [{key: getattr(s, key) for key in keys} for s in cfg.sources]
    return write_data_yaml(path, {"sources": sources, **settings})


def printed_counts(text: str) -> dict[str, tuple[int, ...]]:
    """``{source: (read, written, rejected, boxes read, dropped)}`` from the summary lines."""
    pattern = r"^(\S+) +\S+ +read +(\d+) +(?:would write|written) +(\d+) +rejected +(\d+) +boxes read +(\d+) +dropped +(\d+)"
    return {m[0]: tuple(int(v) for v in m[1:]) for m in re.findall(pattern, text, re.MULTILINE)}


def test_dry_run_stats_every_image_prints_reasons_and_fails_like_the_run_would(tmp_path, capsys):
    cfg = write_every_bad_input(tmp_path / "data")
    config = data_yaml_of(cfg, tmp_path / "data" / "data.yaml", max_image_pixels=1000)
    out = tmp_path / "shards"
    assert ovdet_main(["shard", "--config", str(config), "--out", str(out), "--dry-run"]) == 1
    assert not out.exists()
    printed = capsys.readouterr()
    # annotations, plus a stat of every image: absent.jpg is found; decoding problems are not (no decode)
    assert printed_counts(printed.out) == {
        "coco": (18, 15, 3, 16, 8),
        "ground": (3, 1, 2, 2, 1),
        "pairs": (2, 1, 1, 0, 0),
    }
    assert re.search(r"^ +1  image file not found$", printed.out, re.MULTILINE)
    assert f"e.g. coco-5: image file not found: {tmp_path / 'data' / 'images' / 'absent.jpg'}" in printed.out
    assert re.search(r"^ +2  annotation has zero or negative size$", printed.out, re.MULTILINE)
    errors = printed.err.splitlines()
    assert errors == [
        "error: source coco: rejected 3 of 18 records (16.7%), more than data.max_rejected_fraction = 0.1",
        "error: source ground: rejected 2 of 3 records (66.7%), more than data.max_rejected_fraction = 0.1",
        "error: source pairs: rejected 1 of 2 records (50.0%), more than data.max_rejected_fraction = 0.1",
    ]


def test_run_rejecting_too_much_exits_1_with_a_summary_but_keeps_what_it_wrote(tmp_path, capsys):
    cfg = write_every_bad_input(tmp_path / "data")
    out = tmp_path / "shards"
    strict = data_yaml_of(cfg, tmp_path / "data" / "strict.yaml", max_image_pixels=1000)
    assert ovdet_main(["shard", "--config", str(strict), "--out", str(out)]) == 1
    printed = capsys.readouterr()
    assert printed_counts(printed.out)["coco"] == (18, 11, 7, 16, 8)
    assert "error: source coco: rejected 7 of 18 records (38.9%)" in printed.err
    assert f"every rejection is in {out / 'rejected.jsonl'}" in printed.err
    assert (out / "manifest.json").exists()
    lenient = data_yaml_of(
        cfg, tmp_path / "data" / "lenient.yaml", max_image_pixels=1000, max_rejected_fraction=0.7
    )
    assert ovdet_main(["shard", "--config", str(lenient), "--out", str(out)]) == 0  # no --overwrite needed
    assert "error:" not in capsys.readouterr().err


def test_source_that_writes_nothing_fails_the_stage(tmp_path, capsys):
    root = tmp_path / "data"
    write_jpeg(root / "images" / "a.jpg", 32, 24)
    write_coco(root / "coco.json", [coco_image(1, 32, 24, file_name="a.jpg")], [])
    sources = [
        {"name": "c", "kind": "detection", "format": "coco", "paths": ["coco.json"], "image_root": "wrong"}
    ]
    config = write_data_yaml(root / "data.yaml", {"sources": sources, "max_rejected_fraction": 1.0})
    assert ovdet_main(["shard", "--config", str(config), "--out", str(tmp_path / "shards")]) == 1
    assert "error: source c: no record written (read 1, rejected 1)" in capsys.readouterr().err


def test_restored_image_is_retried_on_rerun_and_unchanged_reruns_stay_identical(tmp_path):
    root = tmp_path / "data"
    for i in (1, 2):
        write_jpeg(root / "images" / f"{i}.jpg", 32, 24, seed=i)
    images = [coco_image(i, 32, 24, file_name=f"{i}.jpg") for i in (1, 2)]
    write_coco(root / "coco.json", images, [coco_annotation(i, i, [1, 1, 5, 5]) for i in (1, 2)])
    cfg = DataConfig(
        root=str(root), sources=[source("c", "coco", ["coco.json"], "images")], samples_per_shard=4
    )
    kept = (root / "images" / "2.jpg").read_bytes()
    (root / "images" / "2.jpg").unlink()
    out = tmp_path / "shards"
    first = shard(cfg, out)
    assert (first["sources"]["c"]["written"], first["sources"]["c"]["rejected"]) == (1, 1)
    again = shard(cfg, out)
    assert again == first and (out / "rejected.jsonl").read_text().count("\n") == 1
    (root / "images" / "2.jpg").write_bytes(kept)  # the user restores the image
    restored = shard(cfg, out)
    assert (restored["sources"]["c"]["written"], restored["sources"]["c"]["rejected"]) == (2, 0)
    assert (out / "rejected.jsonl").read_text() == ""
    assert restored == shard(cfg, tmp_path / "fresh")  # as if it had never been missing
    assert visible_tars(out) == visible_tars(tmp_path / "fresh")


def test_a_different_config_into_the_same_folder_is_refused_unless_overwrite(tmp_path, capsys):
    root = tmp_path / "data"
    write_jpeg(root / "a.jpg", 32, 24)
    write_jsonl(root / "pairs.jsonl", [{"image": "a.jpg", "caption": "a cat"}])
    sources = [{"name": "pairs", "kind": "image_text", "format": "jsonl", "paths": ["pairs.jsonl"]}]
    first = write_data_yaml(root / "first.yaml", {"sources": sources, "samples_per_shard": 2})
    second = write_data_yaml(root / "second.yaml", {"sources": sources, "samples_per_shard": 3})
    out = tmp_path / "shards"
    assert ovdet_main(["shard", "--config", str(first), "--out", str(out)]) == 0
    capsys.readouterr()
    assert ovdet_main(["shard", "--config", str(second), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("ovdet: error: ")
    assert str(out) in error and "--overwrite" in error
    assert json.loads((out / "manifest.json").read_text())["config"]["samples_per_shard"] == 2
    assert ovdet_main(["shard", "--config", str(second), "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["samples_per_shard"] == 3


def test_malformed_jsonl_line_is_one_rejected_record_and_the_rest_is_sharded(tmp_path, capsys):
    root = tmp_path / "data"
    write_jpeg(root / "a.jpg", 32, 24)
    rows = "".join('{"image": "a.jpg", "caption": "a cat"}\n' for _ in range(9))
    (root / "pairs.jsonl").write_text(rows + '{"image": "a.jpg", "caption": \n')
    config = write_data_yaml(
        root / "data.yaml",
        {"sources": [{"name": "pairs", "kind": "image_text", "format": "jsonl", "paths": ["pairs.jsonl"]}]},
    )
    out = tmp_path / "shards"
    assert ovdet_main(["shard", "--config", str(config), "--out", str(out)]) == 0  # 1 of 10 = the 10% allowed
    assert printed_counts(capsys.readouterr().out) == {"pairs": (10, 9, 1, 0, 0)}
    (row,) = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert row["record_id"] == f"{root / 'pairs.jsonl'}:10" and row["reason"].startswith("invalid JSON: ")
