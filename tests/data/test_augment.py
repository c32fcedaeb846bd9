"""The loader's augmentations (docs/augmentation.md): off, the batches are the loader's of before,
bit for bit; on, a sample is a function of (seed, stream index) only, Mosaic's boxes follow their
pixels, merged texts keep the negative rules, and a global batch shares one input size."""

from __future__ import annotations

import colorsys
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import test_loader
import torch
from fixtures import jpeg_bytes
from PIL import Image
from scipy import ndimage
from test_loader import (
    LVIS_POOL,
    NAMES,
    assert_same_batches,
    batches,
    concat_ranks,
    detection_record,
    loader_config,
    lvis_record,
    write_shard_set,
)

from ovdet.config import LoaderConfig, load_config
from ovdet.data.augment import (
    blend,
    hsv_jitter,
    merge_texts,
    mosaic_offset,
    place_boxes,
)
from ovdet.data.loader import (
    Part,
    ShardSampleDataset,
    merge_parts,
    open_shard_sets,
    render_part,
    texts_of,
    texts_of_part,
)
from ovdet.data.records import Phrase, Record
from ovdet.errors import OvdetError
from ovdet.ops.boxes import box_cxcywh_to_xyxy_array

ALL_ON = {"mosaic_probability": 0.5, "mixup_probability": 0.5, "photometric_probability": 0.5,
          "multiscale_sizes": [32, 64], "min_scale": 0.5}  # fmt: skip


# A world of every kind of sample: detection, federated LVIS, grounding, image-text


def grounding_record(index: int) -> Record:
    rng = np.random.default_rng(100 + index)
    phrases = ["a man", "a red bike", "the dog", "two birds", "a tall tree", "a blue car"]
    chosen = [phrases[i] for i in rng.choice(len(phrases), size=2, replace=False)]
    caption = " and ".join(chosen)
    boxes = [[2.0 + 10 * i, 3.0, 14.0 + 10 * i, 20.0] for i in range(2)]
    spans = [(caption.index(p), caption.index(p) + len(p)) for p in chosen]
    phrases = [Phrase(p, [s], [i]) for i, (p, s) in enumerate(zip(chosen, spans, strict=True))]
    return Record(key=f"ground-{index}", source="ground", kind="grounding", width=48, height=32,
                  caption=caption, boxes=boxes, category_ids=[-1, -1], category_names=chosen,
                  is_crowd=[0, 0], phrases=phrases)  # fmt: skip


def image_text_record(index: int) -> Record:
    captions = ["a red heart on a mat", "a blue star and a green moon", "two yellow circles"]
    return Record(key=f"itext-{index}", source="itext", kind="image_text", width=40, height=40,
                  caption=captions[index % 3])  # fmt: skip


def federated_record(index: int) -> Record:
    names = [LVIS_POOL[index % 8], LVIS_POOL[8 + index]]
    meta = {"federated": True, "not_exhaustive_categories": [LVIS_POOL[(index + 5) % 8]]}
    record = lvis_record(names, negatives=[LVIS_POOL[(index + 3) % 8], LVIS_POOL[12 + index]], meta=meta)
    return Record(**{**record.__dict__, "key": f"lvis-{index}", "source": "lvis"})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_shard_set(
        tmp_path_factory.mktemp("world") / "shards",
        {
            "det": (2.0, [detection_record("det", i) for i in range(12)]),
            "lvis": (1.0, [federated_record(i) for i in range(8)]),
            "ground": (1.0, [grounding_record(i) for i in range(8)]),
            "itext": (1.0, [image_text_record(i) for i in range(8)]),
        },
        per_shard=4,
    )


def checksum(batch_list: list[dict]) -> str:
    digest = hashlib.sha256()
    for batch in batch_list:
        digest.update(
            repr((batch["key"], batch["texts"], batch["kind"], batch["has_boxes"].tolist())).encode()
        )
        for name in ("boxes", "labels", "image_labels"):
            for tensor in batch[name]:
                digest.update(str(tensor.dtype).encode() + tensor.numpy().tobytes())
        digest.update(batch["images"].numpy().tobytes())
    return digest.hexdigest()


# Computed with the loader of before augmentation (commit 9a63132), Pillow 13.0, numpy 2.4: a Pillow
# whose JPEG decoder or resize changes pixels changes them too (then recompute them with that commit)
BEFORE_AUGMENTATION = {
    "letterbox": "a51de27c1cafcf2f1eb43a75e69e3dd8815229c7620f3bf5093ac2cfa665d808",
    "stretch": "0d50e1501559db933b4e9b31408eb1a893cdcdd9e1e961a349d90af6d5f77c6a",
}


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
def test_with_augmentation_off_batches_are_bit_identical_to_the_loader_of_before(world, resize):
    cfg = loader_config(resize=resize, image_size=48, batch_size=6, min_scale=0.5, num_negatives=4, seed=3)
    assert checksum(batches(world, cfg, 5)) == BEFORE_AUGMENTATION[resize]


# Determinism


def dataset(shard_dir: Path, **cfg) -> ShardSampleDataset:
    """Random access by stream index, on one rank (global batch = ``batch_size``)."""
    config = loader_config(**cfg)
    return ShardSampleDataset(open_shard_sets([shard_dir], config), config)


def assert_same_sample(a: dict, b: dict) -> None:
    assert a["key"] == b["key"] and a["texts"] == b["texts"] and torch.equal(a["image"], b["image"])
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])


def test_an_augmented_sample_is_a_function_of_seed_and_index_alone(world):
    on = {**ALL_ON, "mosaic_probability": 1.0, "mixup_probability": 1.0, "photometric_probability": 1.0}
    first, second = dataset(world, **on), dataset(world, **on)
    order = [11, 3, 40, 3, 0]
    samples = {k: first[k] for k in order}
    for k in reversed(order):  # another order, another dataset: other cached blocks, other open shards
        assert_same_sample(second[k], samples[k])
    other_seed = dataset(world, **on, seed=1)
    assert not all(torch.equal(other_seed[k]["image"], samples[k]["image"]) for k in (0, 3, 11))


def test_augmented_batches_do_not_depend_on_workers_or_ranks(world):
    single = batches(world, loader_config(**ALL_ON, batch_size=6), 3)
    per_rank = [
        batches(world, loader_config(**ALL_ON, batch_size=3, num_workers=2), 3, r, 2) for r in range(2)
    ]
    assert_same_batches([concat_ranks(list(pair)) for pair in zip(*per_rank, strict=True)], single)


def test_a_global_batch_shares_one_input_size_across_ranks_and_the_size_varies(world):
    cfg = loader_config(multiscale_sizes=[32, 64, 96], batch_size=2)
    per_rank = [batches(world, cfg, 10, rank, world_size=2) for rank in range(2)]
    sizes = [[b["images"].shape[-1] for b in rank_batches] for rank_batches in per_rank]
    assert sizes[0] == sizes[1] and len(set(sizes[0])) > 1 and set(sizes[0]) <= {32, 64, 96}
    assert all(b["images"].shape[-2] == b["images"].shape[-1] for b in per_rank[0])
    boxes = torch.cat([box for b in per_rank[0] for box in b["boxes"]])
    corners = box_cxcywh_to_xyxy_array(boxes.numpy())
    assert len(boxes) and corners.min() >= -1e-6 and corners.max() <= 1 + 1e-6


def test_no_record_is_lost_with_every_augmentation_on(tmp_path):
    shard_dir = write_shard_set(tmp_path, {"a": (1.0, [detection_record("a", i) for i in range(24)])})
    cfg = loader_config(**{**ALL_ON, "mosaic_probability": 1.0, "mixup_probability": 1.0}, batch_size=4)
    keys = [key for batch in batches(shard_dir, cfg, 6) for key in batch["key"]]  # one block: 24 samples
    assert sorted(keys) == sorted(f"a-{i}" for i in range(24))


# Mosaic geometry


def test_each_mosaic_image_meets_the_centre_with_its_inner_corner():
    extents, centre = [(30, 20), (40, 10), (12, 50), (64, 64)], (25, 35)
    offsets = [mosaic_offset(p, extent, centre) for p, extent in enumerate(extents)]
    assert offsets == [(25 - 30, 35 - 20), (25, 35 - 10), (25 - 12, 35), (25, 35)]


def test_placed_boxes_are_clipped_and_dropped_when_mostly_cut_off():
    # 10 x 10 boxes on a 64 canvas, visible: 25%, 15%, 6 x 6 = 36%, 4 x 4 = 16%; then a box 1.5 px wide
    corners = np.array([[0, 0, 10, 10]] * 4 + [[0, 0, 1.5, 10]], dtype=np.float64)
    offsets = [(-7.5, 0), (-8.5, 0), (58, 58), (60, 60), (4, 4)]
    boxes = np.stack([(corners[:, 0] + corners[:, 2]) / 2, (corners[:, 1] + corners[:, 3]) / 2,
                      corners[:, 2] - corners[:, 0], corners[:, 3] - corners[:, 1]], axis=1) / 64  # fmt: skip
    placed = [place_boxes(box[None], offset, 64) for box, offset in zip(boxes, offsets, strict=True)]
    assert [bool(keep[0]) for _, keep in placed] == [True, False, True, False, False]
    np.testing.assert_allclose(box_cxcywh_to_xyxy_array(placed[0][0]) * 64, [[0, 0, 2.5, 10]])
    np.testing.assert_allclose(box_cxcywh_to_xyxy_array(placed[2][0]) * 64, [[58, 58, 64, 64]])


PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]


def colour_record(index: int) -> tuple[Record, bytes]:
    """A 64 x 48 grey image with one box filled with ``PALETTE[index]``, as PNG (exact colours)."""
    rng = np.random.default_rng(index)
    x1, y1 = int(rng.integers(0, 30)), int(rng.integers(0, 20))
    x2, y2 = x1 + int(rng.integers(16, 32)), y1 + int(rng.integers(14, 26))
    pixels = np.full((48, 64, 3), 90, dtype=np.uint8)
    pixels[y1:y2, x1:x2] = PALETTE[index]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    record = Record(key=f"colour-{index}", source="colours", kind="detection", width=64, height=48,
                    boxes=[[float(x1), float(y1), float(x2), float(y2)]], category_ids=[index],
                    category_names=[f"colour{index}"], is_crowd=[0])  # fmt: skip
    return record, buffer.getvalue()


@pytest.fixture(scope="module")
def colour_world(tmp_path_factory) -> Path:
    records, images = zip(*(colour_record(i) for i in range(len(PALETTE))), strict=True)
    with pytest.MonkeyPatch.context() as patch:  # write_shard_set's images, by their index (its seed)
        patch.setattr(test_loader, "jpeg_bytes", lambda width, height, seed: images[seed])
        return write_shard_set(
            tmp_path_factory.mktemp("colours"), {"colours": (1.0, list(records))}, per_shard=6
        )


def colour_of(text: str) -> np.ndarray:
    return np.array(PALETTE[int(text.removeprefix("colour"))])


def assert_boxes_cover_exactly_their_colour(sample: dict, size: int) -> None:
    """Each box's inside (2 px in from its edges, past the resize's blur) has its name's colour, and
    every patch of that colour lies in the boxes of that name, but for the slivers of boxes dropped
    at the canvas's edge (images are cropped by the canvas only: each stays in its quadrant)."""
    image = sample["image"].permute(1, 2, 0).numpy().astype(int)
    boxes = box_cxcywh_to_xyxy_array(sample["boxes"].double().numpy()) * size
    names = [sample["texts"][label] for label in sample["labels"].tolist()]
    for name in set(names):
        own = boxes[[n == name for n in names]]
        for x1, y1, x2, y2 in own:
            inside = image[int(np.ceil(y1)) + 2 : int(y2) - 2, int(np.ceil(x1)) + 2 : int(x2) - 2]
            assert (np.abs(inside - colour_of(name)) <= 2).all(), name
        patches, count = ndimage.label((np.abs(image - colour_of(name)) <= 2).all(-1))
        for patch in range(1, count + 1):
            ys, xs = np.nonzero(patches == patch)
            centres = np.stack([xs + 0.5, ys + 0.5], axis=1)
            in_a_box = np.logical_or.reduce(
                [((centres >= b[:2] - 1) & (centres <= b[2:] + 1)).all(-1) for b in own]
            )
            at_edge = min(xs.min(), ys.min()) == 0 or max(xs.max(), ys.max()) == size - 1
            assert in_a_box.all() or at_edge, name


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
def test_mosaic_boxes_cover_exactly_their_sources_colour(colour_world, resize):
    data = dataset(
        colour_world,
        image_size=64,
        mosaic_probability=1.0,
        min_scale=0.5,
        num_negatives=0,
        resize=resize,
        template_probability=0.0,
    )
    shown = []
    for k in range(24):
        sample = data[k]
        assert_boxes_cover_exactly_their_colour(sample, 64)
        shown.append(len(set(sample["labels"].tolist())))
        assert sample["texts"][0] == f"colour{sample['key'].removeprefix('colour-')}"  # its own texts first
    assert max(shown) >= 3  # mosaics, not single images


def test_mixup_shows_the_boxes_and_texts_of_both_images(colour_world):
    data = dataset(
        colour_world, image_size=64, mixup_probability=1.0, num_negatives=0, template_probability=0.0
    )
    for k in range(12):
        sample = data[k]
        own = f"colour{sample['key'].removeprefix('colour-')}"
        assert len(sample["texts"]) == 2 and sample["texts"][0] == own and sample["labels"].tolist() == [0, 1]
        assert len(sample["boxes"]) == 2


def test_mixup_pixels_are_the_ratio_blend_of_both_images():
    first, second = (
        np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8) for seed in (0, 1)
    )
    expected = 0.3 * first.astype(float) + 0.7 * second.astype(float)
    assert np.abs(blend(first, second, 0.3) - expected).max() <= 1


# Texts of a merged sample


def test_merge_texts_keeps_first_appearances_and_remaps_labels():
    positives, labels = merge_texts([["cat", "dog"], ["dog", "bird"], ["cat"]], [[0, 1, 0], [1, 0], [0]])
    assert positives == ["cat", "dog", "bird"] and labels == [0, 1, 0, 2, 1, 0]


def merged(records: list[Record]) -> Part:
    """``records`` as MixUp would merge them (each on its own 32 canvas, every box kept)."""
    rng = np.random.default_rng(0)
    parts = [render_part(jpeg_bytes(r.width, r.height), r, loader_config(), 32, rng) for r in records]
    return merge_parts(parts, parts[0].pixels, [p.boxes for p in parts], [p.labels for p in parts])


def detection(key: str, names: list[str], crowd: list[int] | None = None, **fields) -> Record:
    boxes = [[1.0 + i, 1.0, 9.0 + i, 9.0] for i in range(len(names))]
    return Record(key=key, source="s", kind="detection", width=48, height=32, boxes=boxes,
                  category_ids=[0] * len(names), category_names=names, is_crowd=crowd or [0] * len(names),
                  **fields)  # fmt: skip


def test_merged_texts_are_the_union_then_negatives_of_no_image():
    a = detection("a", ["thing1", "thing2", "thing3"], crowd=[0, 0, 1])
    b = detection("b", ["thing2", "thing4"])
    part = merged([a, b])
    assert part.positives == ["thing1", "thing2", "thing4"]
    assert [part.positives[label] for label in part.labels] == ["thing1", "thing2", "thing2", "thing4"]
    assert len(part.boxes) == 4
    cfg = loader_config(num_negatives=20, template_probability=0.0)
    for seed in range(10):
        texts = texts_of_part(part, NAMES, cfg, np.random.default_rng(seed))
        assert texts[:3] == part.positives and len(texts) == 3 + 20
        assert not {"thing1", "thing2", "thing3", "thing4"} & set(texts[3:])  # thing3: a crowd box of a


def federated(key: str, names: list[str], negatives: list[str], not_exhaustive: list[str]) -> Record:
    meta = {"federated": True, "not_exhaustive_categories": not_exhaustive}
    return detection(key, names, negatives=negatives, meta=meta)


def test_merged_federated_negatives_are_verified_absent_in_every_federated_image():
    a = federated("a", ["bow_(weapon)"], ["bat_(animal)", "date_(fruit)", "hot_dog"], ["Tabasco_sauce"])
    b = federated("b", ["date_(fruit)"], ["hot_dog", "bat_(animal)", "thing_3"], ["thing_4"])
    c = detection("c", ["thing_5"])
    part = merged([a, b, c])
    pool = texts_of(LVIS_POOL, "detection")
    verified = loader_config(num_negatives=10, template_probability=0.0)
    texts = texts_of_part(part, pool, verified, np.random.default_rng(0))
    assert texts == ["bow (weapon)", "date (fruit)", "thing 5", "bat (animal)", "hot dog"]
    filled = loader_config(num_negatives=10, template_probability=0.0, federated_negatives="pool")
    for seed in range(10):
        negatives = texts_of_part(part, pool, filled, np.random.default_rng(seed))[3:]
        assert negatives[:2] == ["bat (animal)", "hot dog"] and len(negatives) == 10
        assert not {"tabasco sauce", "thing 4", "bow (weapon)", "date (fruit)", "thing 5"} & set(negatives)


def test_merged_grounding_phrases_stay_untemplated_and_names_are_templated():
    grounding = Record(key="g", source="s", kind="grounding", width=48, height=32, caption="a man",
                       boxes=[[1.0, 1.0, 9.0, 9.0]], category_ids=[-1], category_names=["a man"],
                       is_crowd=[0], phrases=[Phrase("a man", [(0, 5)], [0])])  # fmt: skip
    part = merged([detection("d", ["cat"]), grounding])
    cfg = loader_config(num_negatives=2, template_probability=1.0, prompt_templates=["a photo of a {}."])
    texts = texts_of_part(part, ["dog", "bird", "cat"], cfg, np.random.default_rng(0))
    assert texts == ["a photo of a cat.", "a man", "a photo of a dog.", "a photo of a bird."]


def test_image_text_samples_are_never_merged_and_never_merged_into(world):
    on = {"mosaic_probability": 1.0, "mixup_probability": 1.0, "num_negatives": 0, "image_size": 32}
    augmented, plain = dataset(world, **on), dataset(world, num_negatives=0, image_size=32)
    captions = {
        text for i in range(3) for text in texts_of(image_text_record(i).caption_labels(), "image_text")
    }
    for k in range(40):
        sample = augmented[k]
        if sample["kind"] == "image_text":
            assert_same_sample(sample, plain[k])
        else:
            assert not captions & set(sample["texts"])


# Photometric


def test_hsv_jitter_matches_colorsys_with_the_same_gains():
    pixels = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    gains = [0.015, 0.7, 0.4]
    for seed in range(4):
        draw = np.random.default_rng(seed).uniform(-1, 1, 3) * gains  # hsv_jitter's one draw
        hue, saturation, value = draw
        expected = np.array([
            colorsys.hsv_to_rgb((h + hue) % 1, min(s * (1 + saturation), 1), min(v * (1 + value), 1))
            for h, s, v in (colorsys.rgb_to_hsv(*(p / 255)) for p in pixels.reshape(-1, 3))
        ]).reshape(pixels.shape) * 255  # fmt: skip
        difference = np.abs(hsv_jitter(pixels, gains, np.random.default_rng(seed)) - expected)
        assert difference.mean() < 2 and difference.max() <= 10  # 8-bit HSV, as OpenCV's in YOLOv5


# Config


@pytest.mark.parametrize(
    "key, value",
    [("mosaic_probability", 1.5), ("photometric_probability", -0.1), ("hflip_probability", 2.0),
     ("multiscale_sizes", [320, 100]), ("multiscale_sizes", [0]), ("mixup_alpha", 0.0),
     ("hsv_gains", [0.1, 0.2]), ("hsv_gains", [0.1, 0.2, 1.5])],
)  # fmt: skip
def test_loader_config_refuses_bad_augmentation_values_naming_the_key(key, value):
    with pytest.raises(OvdetError, match=f"loader.{key}"):
        LoaderConfig(**{key: value})


def test_a_bad_augmentation_value_in_a_config_file_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("loader:\n  mosaic_probability: 2\n")
    with pytest.raises(OvdetError, match=r"bad.yaml: loader.mosaic_probability must be in \[0, 1\]"):
        load_config(path)
