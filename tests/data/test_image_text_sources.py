"""Image-text readers (JSONL, Parquet, img2dataset tars): records, rejections, and per-row errors."""

from __future__ import annotations

import gzip
import tarfile
from urllib.parse import quote

import pytest
import yaml
from fixtures import (
    corrupt_row_group,
    four_sample_tar,
    img2dataset_row,
    jpeg_bytes,
    source,
    write_coco,
    write_jpeg,
    write_jsonl,
    write_parquet,
    write_wds_tar,
)

from ovdet.data.images import load_image
from ovdet.data.records import Record
from ovdet.data.sources import iter_source
from ovdet.errors import OvdetError, RecordError

REMOTE = "remote image URL (download it with img2dataset, then shard its tars with format wds)"


def read_all(src, root):
    items = list(iter_source(src, root))
    records = [i for i in items if isinstance(i, Record)]
    rejections = {i.record_id: i.reason for i in items if isinstance(i, RecordError)}
    return items, records, rejections


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
        ({"image": "a.jpg"}, "missing caption (looked for columns: caption, text, txt, alt_text, alt)"),
        (
            {"caption": "a cat", "jpg": "a.jpg"},
            "missing image path (looked for columns: image, image_path, filepath, file_path, path,"
            " file_name, filename, url, image_url)",
        ),
        ({"image": "", "caption": "a cat"}, "empty image path"),
        ({"image": 3, "caption": "a cat"}, "image path is not a string"),
        ({"url": "https://x.org/a.jpg", "caption": "a cat"}, REMOTE),
        ({"URL": "s3://bucket/a.jpg", "TEXT": "a cat"}, REMOTE),
        ({"url": "gs://bucket/a.jpg", "caption": "a cat"}, REMOTE),
        ({"url": "file://host/a.jpg", "caption": "a cat"}, "file URL on another host (host)"),
        ([1, 2], "row is not a JSON object"),
    ],
)
def test_bad_image_text_row_is_rejected(tmp_path, row, reason):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"image": "ok.jpg", "caption": "ok"}, row])
    items, records, rejections = read_all(source("cc", "jsonl", [path]), tmp_path)
    assert len(items) == 2 and rejections == {"cc-2": reason}


def test_image_text_vocabulary_labels_each_caption_with_the_names_it_mentions(tmp_path):
    rows = [
        {
            "image": "a.jpg",
            "caption": "an image showing a red circle and two blue stars on a textured background.",
        },
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
    path = write_jsonl(
        tmp_path / "pairs.jsonl", [{"image": "a.jpg", "caption": "a photo of a red circle and a dog"}]
    )
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


def test_malformed_image_text_jsonl_line_is_rejected_by_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = b'{"image": "a.jpg", "caption": "x"}\n'
    path.write_bytes(good + b"{oops}\n\xff\n" + good.replace(b"a.jpg", b"b.jpg"))
    items, records, rejections = read_all(source("cc", "jsonl", [path]), tmp_path)
    assert len(items) == 4 and [r.key for r in records] == ["cc-1", "cc-4"]
    assert rejections == {
        f"{path}:2": "invalid JSON: Expecting property name enclosed in double quotes",
        f"{path}:3": "invalid UTF-8: invalid start byte",
    }


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


def test_image_text_columns_match_case_insensitively_and_local_paths_win_over_urls(tmp_path):
    rows = [
        {"FILE_PATH": "a.jpg", "TXT": "a cat"},
        {"Path": "b.jpg", "Alt_Text": "a dog"},
        {"file_name": "c.jpg", "alt": "a car"},
        {"filename": "d.jpg", "caption": "a cup", "Text": "ignored: caption comes first"},
        {"image_url": "e.jpg", "text": "a hat"},
        {"url": "https://x.org/f.jpg", "image": "f.jpg", "caption": "a pen"},
        {"Image": None, "IMAGE": "g.jpg", "caption": "a box"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    items, records, _ = read_all(source("cc", "jsonl", [path]), tmp_path)
    assert len(items) == len(records) == 7
    assert [r.image_path for r in records] == [str(tmp_path / f"{c}.jpg") for c in "abcdefg"]
    assert [r.caption for r in records] == ["a cat", "a dog", "a car", "a cup", "a hat", "a pen", "a box"]


def test_image_text_key_comes_from_key_or_id_column_else_the_line_number(tmp_path):
    rows = [
        {"image": "a.jpg", "caption": "x", "KEY": "000000007"},
        {"image": "b.jpg", "caption": "x", "Id": 12},
        {"image": "c.jpg", "caption": "x", "key": ""},
        {"image": "d.jpg", "caption": "x", "key": None, "id": "abc"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    _, records, _ = read_all(source("cc", "jsonl", [path]), tmp_path)
    assert [r.key for r in records] == ["cc-000000007", "cc-12", "cc-3", "cc-abc"]


def test_laion_parquet_with_url_and_text_columns_reads_local_files(tmp_path):
    write_jpeg(tmp_path / "images" / "my cat.jpg", 20, 10)
    rows = [
        {"SAMPLE_ID": 1001, "URL": "file://" + str(tmp_path / "images" / "my%20cat.jpg"), "TEXT": "a cat"},
        {"SAMPLE_ID": 1002, "URL": "images/dog.jpg", "TEXT": "a dog", "WIDTH": 64, "HEIGHT": 48},
        {"SAMPLE_ID": 1003, "URL": "http://laion.example/x.jpg", "TEXT": "a car", "WIDTH": 64, "HEIGHT": 48},
        {"SAMPLE_ID": 1004, "URL": "file://localhost/abs/c%2Bd.jpg", "TEXT": None},
    ]
    path = write_parquet(tmp_path / "part-00000.parquet", rows)
    items, records, rejections = read_all(source("laion", "parquet", [path]), tmp_path)
    assert len(items) == 4 and [r.key for r in records] == ["laion-1001", "laion-1002"]
    assert records[0].image_path == str(tmp_path / "images" / "my cat.jpg")
    assert records[1].image_path == str(tmp_path / "images" / "dog.jpg")
    assert load_image(records[0])[1].width == 20
    assert rejections == {
        "laion-1003": REMOTE,
        "laion-1004": "missing caption (looked for columns: caption, text, txt, alt_text, alt)",
    }


def test_img2dataset_parquet_keeps_success_rows_and_rejects_failed_ones_with_their_error(tmp_path):
    image = write_jpeg(tmp_path / "in" / "a b#1.jpg")
    missing = "[Errno 2] No such file or directory: '/in/b.jpg'"
    rows = [
        img2dataset_row("000000000", "file://" + quote(str(image)), "a cat", "success"),
        img2dataset_row("000000001", "file:///in/b.jpg", "a dog", "failed_to_download", missing),
        img2dataset_row("000000002", "file:///in/c.jpg", "a car", "failed_to_resize"),
        img2dataset_row("000000003", "https://x.org/d.jpg", "a cup", "failed_to_download", "timeout"),
    ]
    path = write_parquet(tmp_path / "out" / "00000.parquet", rows)
    items, records, rejections = read_all(source("i2d", "parquet", [path], kind="image_text"), tmp_path)
    assert len(items) == 4
    assert [(r.key, r.image_path, r.caption) for r in records] == [("i2d-000000000", str(image), "a cat")]
    assert rejections == {
        "i2d-000000001": f"img2dataset status failed_to_download: {missing}",
        "i2d-000000002": "img2dataset status failed_to_resize",
        "i2d-000000003": "img2dataset status failed_to_download: timeout",
    }


def test_parquet_row_group_that_does_not_decode_rejects_each_of_its_rows(tmp_path):
    rows = [{"image": f"{i}.jpg", "caption": f"caption {i}"} for i in range(5)]
    path = write_parquet(tmp_path / "pairs.parquet", rows)  # row groups of 2: rows 0-1, 2-3, 4
    corrupt_row_group(path, 1)
    items, records, rejections = read_all(source("pq", "parquet", [path]), tmp_path)
    assert len(items) == 5 and [r.key for r in records] == ["pq-0", "pq-1", "pq-4"]
    assert records[2].caption == "caption 4" and records[2].meta == {"row": 4}
    assert sorted(rejections) == [f"{path}:row 2", f"{path}:row 3"]
    reason = rejections[f"{path}:row 2"]
    assert reason.startswith("cannot decode row group 1: ") and "\n" not in reason


def test_file_that_is_not_parquet_is_a_file_error(tmp_path):
    (tmp_path / "pairs.parquet").write_bytes(b"not parquet" * 10)
    with pytest.raises(OvdetError, match=r"pairs\.parquet: cannot read Parquet"):
        list(iter_source(source("pq", "parquet", ["pairs.parquet"]), tmp_path))


@pytest.mark.parametrize(
    "where, reason",
    [
        ("header", "truncated member header at byte {header}"),
        ("data", "unexpected end of data"),
        ("garbage", "invalid member header at byte {header}"),
        ("boundary", "no end-of-archive marker at byte {header} (file truncated?)"),
    ],
)
def test_broken_tar_keeps_samples_before_the_break_and_rejects_the_break_once(tmp_path, where, reason):
    broken = tmp_path / "shards" / "00000.tar"
    header, data_start = four_sample_tar(broken)
    next_sample = {"__key__": "000010000", "jpg": jpeg_bytes(), "txt": "next file"}  # img2dataset: shard 1
    good = write_wds_tar(tmp_path / "shards" / "00001.tar", [next_sample])
    data = broken.read_bytes()
    cut = {"header": header + 100, "data": data_start + 100, "boundary": header}.get(where)
    if cut is None:  # a garbled header in a file of full length
        broken.write_bytes(data[:header] + b"\x01" * 512 + data[header + 512 :])
    else:
        broken.write_bytes(data[:cut])
    items, records, rejections = read_all(source("w", "wds", ["shards/*.tar"]), tmp_path)
    assert len(items) == 4
    assert [(r.key, r.caption) for r in records] == [  # several tars: the tar's stem in the key
        ("w-00000-000000000", "caption 0"),
        ("w-00000-000000001", "caption 1"),
        ("w-00001-000010000", "next file"),
    ]
    assert records[2].meta["image_bytes_from"]["tar"] == str(good)
    assert rejections == {str(broken): "cannot read tar after sample 2: " + reason.format(header=header)}


def test_truncated_compressed_tar_keeps_the_samples_before_the_break(tmp_path):
    _, data_start = four_sample_tar(tmp_path / "a.tar")
    stored = gzip.compress((tmp_path / "a.tar").read_bytes(), compresslevel=0, mtime=0)
    stored_header = 10 + 5  # gzip header, then one stored deflate block: tar byte n is at n + 15
    (tmp_path / "a.tar.gz").write_bytes(stored[: stored_header + data_start + 100])
    items, records, rejections = read_all(source("w", "wds", ["a.tar.gz"]), tmp_path)
    assert len(items) == 3 and [r.caption for r in records] == ["caption 0", "caption 1"]
    assert rejections == {
        str(tmp_path / "a.tar.gz"): "cannot read tar after sample 2: "
        "Compressed file ended before the end-of-stream marker was reached"
    }


def test_webdataset_sample_whose_caption_member_cannot_be_read_is_rejected(tmp_path, monkeypatch):
    write_wds_tar(tmp_path / "a.tar", [{"jpg": jpeg_bytes(), "txt": f"caption {i}"} for i in range(3)])
    extractfile = tarfile.TarFile.extractfile

    def failing_extractfile(tar, member):
        if member.name == "000000001.txt":
            raise tarfile.ReadError("bad member data")
        return extractfile(tar, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", failing_extractfile)
    items, records, rejections = read_all(source("w", "wds", ["a.tar"]), tmp_path)
    assert len(items) == 3 and [r.key for r in records] == ["w-000000000", "w-000000002"]
    assert rejections == {"w-000000001": "cannot read member 000000001.txt: bad member data"}


def test_tar_cut_in_a_later_member_header_keeps_the_sample_read_so_far(tmp_path):
    """A cut header's sample is unknown: the 3rd sample is judged on its whole jpg (no caption)."""
    path = tmp_path / "a.tar"
    four_sample_tar(path)
    with tarfile.open(path) as tar:
        third_txt = tar.getmember("000000002.txt").offset
    path.write_bytes(path.read_bytes()[: third_txt + 100])
    items, records, rejections = read_all(source("w", "wds", ["a.tar"]), tmp_path)
    assert len(items) == 4 and [r.key for r in records] == ["w-000000000", "w-000000001"]
    assert rejections == {
        "w-000000002": "missing caption",
        str(path): f"cannot read tar after sample 3: truncated member header at byte {third_txt}",
    }


def test_caption_labels_match_lvis_names_as_written_in_text_and_keep_the_raw_name(tmp_path):
    """Detic's get_cc_tags map_name: underscores as spaces, no qualifier; synonyms match too; a term
    two categories share names neither."""
    vocabulary = {
        "categories": [
            {
                "id": 1,
                "name": "speaker_(stereo_equipment)",
                "synonyms": ["speaker_(stereo_equipment)", "loudspeaker"],
            },
            {"id": 2, "name": "aerosol_can", "synonyms": ["spray_can"]},
            {"id": 3, "name": "bow_(weapon)", "synonyms": ["bow_(weapon)"]},
            {"id": 4, "name": "bow_(decorative_ribbons)", "synonyms": ["bow_(decorative_ribbons)"]},
        ]
    }
    (tmp_path / "lvis.yaml").write_text(yaml.safe_dump(vocabulary))
    rows = [
        {"image": "a.jpg", "caption": "A loudspeaker, a bow and an aerosol can next to a speaker"},
        {"image": "b.jpg", "caption": "a red bow on a gift"},
    ]
    config = source("cc", "jsonl", [write_jsonl(tmp_path / "pairs.jsonl", rows)], kind="image_text")
    config.vocabulary = "lvis.yaml"
    items, records, rejections = read_all(config, tmp_path)
    (record,) = records
    assert [(p.text, [record.caption[a:b] for a, b in p.spans]) for p in record.phrases] == [
        ("speaker_(stereo_equipment)", ["loudspeaker"]),
        ("aerosol_can", ["aerosol can"]),
    ]
    assert rejections == {"cc-2": "caption names no vocabulary name"}  # "bow" is ambiguous
