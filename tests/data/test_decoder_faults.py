"""Images that break decoders, at every entrance: the shard stage rejects them with a reason, detect
and eval refuse them with an error naming the file; CMYK, 16-bit, alpha and EXIF-rotated images are
read to the same pixels in training (the shards) as in detect and eval."""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
from fixtures import bomb_png, jpeg_bytes, write_jpeg, write_png
from PIL import Image

from ovdet.data.images import load_image
from ovdet.data.records import Record
from ovdet.errors import OvdetError, RecordError
from ovdet.eval.evaluator import AnnotatedImages
from ovdet.infer import open_image


def write_broken(folder, kind: str):
    if kind == "zero-byte":
        path = folder / "empty.jpg"
        path.write_bytes(b"")
    elif kind == "truncated-jpeg":
        path = folder / "cut.jpg"
        path.write_bytes(jpeg_bytes(64, 64)[:400])
    else:
        path = bomb_png(folder / "bomb.png")
    return path


BROKEN = {"zero-byte": "image file is empty (0 bytes)", "truncated-jpeg": "cannot decode image",
          "bomb-30k-x-30k": "decompression bomb"}  # fmt: skip


def record_for(path) -> Record:
    return Record(key="img-7", source="s", kind="detection", image_path=str(path))


@pytest.mark.parametrize("kind", BROKEN)
def test_the_shard_stage_rejects_a_broken_image_with_its_reason(tmp_path, kind):
    with pytest.raises(RecordError) as caught:
        load_image(record_for(write_broken(tmp_path, kind)))
    assert caught.value.record_id == "img-7" and BROKEN[kind] in caught.value.reason


@pytest.mark.parametrize("kind", BROKEN)
def test_detect_and_eval_refuse_a_broken_image_naming_the_file(tmp_path, kind):
    path = write_broken(tmp_path, kind)
    with pytest.raises(OvdetError) as caught:
        open_image(path)
    assert str(caught.value).startswith(f"{path}: cannot read image: ") and BROKEN[kind] in str(caught.value)
    with pytest.raises(OvdetError, match=f"^{re.escape(str(path))}: cannot read image"):
        AnnotatedImages([path], [{"id": 1, "width": 64, "height": 64}])[0]


def test_a_bomb_is_refused_from_its_header_without_decoding_the_pixels(tmp_path):
    path = bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 10_000
    start = time.perf_counter()
    with pytest.raises(OvdetError, match="more than 89478485 pixels"):
        open_image(path)
    assert time.perf_counter() - start < 1.0


def write_readable(folder, kind: str):
    if kind == "cmyk-jpeg":
        return write_jpeg(folder / "cmyk.jpg", 40, 30, mode="CMYK")
    if kind.startswith("exif-"):
        return write_jpeg(folder / f"{kind}.jpg", 40, 30, exif_orientation=int(kind.removeprefix("exif-")))
    return write_png(folder / f"{kind}.png", 40, 30, mode={"png-16-bit": "I;16", "png-alpha": "RGBA"}[kind])


@pytest.mark.parametrize("kind", ["cmyk-jpeg", "png-16-bit", "png-alpha", "exif-3", "exif-6", "exif-8", "exif-2"])
def test_detect_reads_the_pixels_the_shards_hold(tmp_path, kind):
    path = write_readable(tmp_path, kind)
    shard_bytes, record = load_image(record_for(path))
    in_training = np.asarray(Image.open(io.BytesIO(shard_bytes)).convert("RGB"), dtype=np.int16)
    in_detect = open_image(path)
    assert in_detect.mode == "RGB" and in_detect.size == (record.width, record.height)
    # the shard re-encodes as JPEG (quality 92: a mean error of about 3 on this noisy image); a wrong
    # orientation or channel order is off by tens
    assert np.abs(np.asarray(in_detect, dtype=np.int16) - in_training).mean() < 6.0
    assert open_image(Image.open(path)).tobytes() == in_detect.tobytes()  # a PIL image in gets the same


def test_16_bit_values_are_scaled_to_8_bits_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 0x8080, dtype=np.uint16)).save(path)
    assert open_image(path).getpixel((1, 1)) == (128, 128, 128)


def test_eval_refuses_an_image_whose_oriented_size_disagrees_with_the_ground_truth(tmp_path):
    path = write_jpeg(tmp_path / "turned.jpg", 40, 30, exif_orientation=6)  # 30 x 40 once oriented
    assert AnnotatedImages([path], [{"id": 3, "width": 30, "height": 40}])[0].size == (30, 40)
    with pytest.raises(OvdetError, match=r"turned.jpg: image is 30x40 \(after EXIF orientation\), the ground truth "
                                         r"says 40x30 \(image id 3\)"):
        AnnotatedImages([path], [{"id": 3, "width": 40, "height": 30}])[0]
