"""The training loader: weighted mixing, rank/worker splitting, determinism, exact resume,
vocabulary sampling and box transforms. Shards are written directly (no Ray) in the shard
stage's layout; tests/pipelines/test_shard_stage.py covers shards made by the stage itself."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import jpeg_bytes
from ovdet.pipelines.shard import names_of
from PIL import Image

from ovdet.config import LoaderConfig
from ovdet.data.loader import MixedSampleStream, TrainLoader, build_sample, texts_of
from ovdet.data.records import Phrase, Record
from ovdet.data.shards import MANIFEST, write_tar_atomic
from ovdet.fileio import write_json_atomic
from ovdet.ops.boxes import box_cxcywh_to_xyxy

NAMES = [f"thing{i}" for i in range(30)]


def detection_record(source: str, index: int, width: int = 48, height: int = 32) -> Record:
    rng = np.random.default_rng(index)
    boxes, names = [], []
    for _ in range(int(rng.integers(1, 4))):
        x1, y1 = rng.uniform(0, width - 8), rng.uniform(0, height - 8)
        boxes.append([float(x1), float(y1), float(x1 + rng.uniform(4, 8)), float(y1 + rng.uniform(4, 8))])
        names.append(NAMES[int(rng.integers(len(NAMES)))])
    return Record(
        key=f"{source}-{index}",
        source=source,
        kind="detection",
        width=width,
        height=height,
        boxes=boxes,
        category_ids=[NAMES.index(n) for n in names],
        category_names=names,
        is_crowd=[0] * len(names),
    )


def write_shard_set(out: Path, sources: dict[str, tuple[float, list[Record]]], per_shard: int = 5) -> Path:
    """Tars + manifest as the shard stage lays them out (``name/name-000000.tar``)."""
    manifest = {"version": 1, "config": {}, "sources": {}}
    for name, (weight, records) in sources.items():
        shards = []
        for index, start in enumerate(range(0, len(records), per_shard)):
            chunk = records[start : start + per_shard]
            path = f"{name}/{name}-{index:06d}.tar"
            samples = [
                (r.key, jpeg_bytes(r.width, r.height, seed=start + i), r.to_json())
                for i, r in enumerate(chunk)
            ]
            write_tar_atomic(out / path, samples)
            shards.append(
                {"path": path, "count": len(chunk), "bytes": (out / path).stat().st_size, "sha256": ""}
            )
        manifest["sources"][name] = {
            "kind": records[0].kind,
            "format": "coco",
            "weight": weight,
            "read": len(records),
            "written": len(records),
            "rejected": 0,
            "clipped_boxes": 0,
            "names": sorted({n for r in records for n in names_of(r)}),
            "shards": shards,
        }
    write_json_atomic(out / MANIFEST, manifest)
    return out


@pytest.fixture
def two_sources(tmp_path) -> Path:
    return write_shard_set(
        tmp_path / "shards",
        {
            "a": (3.0, [detection_record("a", i) for i in range(12)]),
            "b": (1.0, [detection_record("b", i) for i in range(12)]),
        },
    )


@pytest.fixture
def one_source(tmp_path) -> Path:
    return write_shard_set(tmp_path / "shards", {"a": (1.0, [detection_record("a", i) for i in range(24)])})


def loader_config(**overrides) -> LoaderConfig:
    defaults = {"image_size": 32, "batch_size": 4, "num_workers": 0, "num_negatives": 5}
    return LoaderConfig(**(defaults | overrides))


def batches(
    shard_dir: Path, cfg: LoaderConfig, num_batches: int, rank: int = 0, world_size: int = 1
) -> list[dict]:
    return list(TrainLoader([shard_dir], cfg, rank, world_size).iterate(num_batches))


def assert_same_batches(left: list[dict], right: list[dict]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a["key"] == b["key"] and a["texts"] == b["texts"]
        assert torch.equal(a["images"], b["images"])
        for name in ("boxes", "labels", "image_labels"):
            assert all(torch.equal(x, y) for x, y in zip(a[name], b[name], strict=True)), name


def concat_ranks(per_rank: list[dict]) -> dict:
    """Rank batches of one global batch, in rank order, as one batch."""
    out = {
        name: [v for batch in per_rank for v in batch[name]]
        for name in ("key", "texts", "boxes", "labels", "image_labels")
    }
    out["images"] = torch.cat([batch["images"] for batch in per_rank])
    return out


# Mixing


def test_stream_draws_sources_in_proportion_to_their_weights():
    stream = MixedSampleStream([12, 12], [3.0, 1.0], seed=0)
    draws = np.array([stream.locate(k)[0] for k in range(20_000)])
    assert abs((draws == 0).mean() - 0.75) < 0.01


def test_stream_weights_do_not_depend_on_source_sizes():
    stream = MixedSampleStream([10, 1000], [1.0, 1.0], seed=1)
    draws = np.array([stream.locate(k)[0] for k in range(20_000)])
    assert abs((draws == 0).mean() - 0.5) < 0.015


def test_loader_batches_mix_sources_three_to_one(two_sources):
    keys = [key for batch in batches(two_sources, loader_config(batch_size=40), 8) for key in batch["key"]]
    share_a = np.mean([key.startswith("a-") for key in keys])
    assert abs(share_a - 0.75) < 0.07  # 320 draws: 3 standard deviations


def test_source_weights_in_the_loader_config_override_the_manifest(two_sources):
    cfg = loader_config(batch_size=40, source_weights={"a": 1.0, "b": 3.0})
    keys = [key for batch in batches(two_sources, cfg, 8) for key in batch["key"]]
    assert abs(np.mean([key.startswith("b-") for key in keys]) - 0.75) < 0.07


def test_a_single_source_block_is_a_permutation_of_its_samples():
    stream = MixedSampleStream([24], [1.0], seed=3)
    for block in range(3):
        indices = [stream.locate(block * 24 + p)[1] for p in range(24)]
        assert sorted(indices) == list(range(24))


# Ranks and workers


def test_ranks_and_workers_see_disjoint_samples_that_cover_a_block(one_source):
    cfg = loader_config(batch_size=3, num_workers=2)
    per_rank = [batches(one_source, cfg, 4, rank, world_size=2) for rank in range(2)]  # 2 x 4 x 3 = 24
    keys = [key for rank_batches in per_rank for batch in rank_batches for key in batch["key"]]
    assert len(keys) == len(set(keys)) == 24


def test_two_ranks_with_two_workers_reproduce_one_rank_with_double_batch(two_sources):
    single = batches(two_sources, loader_config(batch_size=6, num_workers=0), 3)
    cfg = loader_config(batch_size=3, num_workers=2)
    per_rank = [batches(two_sources, cfg, 3, rank, world_size=2) for rank in range(2)]
    assert_same_batches([concat_ranks([r0, r1]) for r0, r1 in zip(*per_rank, strict=True)], single)


# Determinism and resume


def test_same_seed_gives_identical_batches_and_another_seed_differs(two_sources):
    first = batches(two_sources, loader_config(seed=5), 3)
    assert_same_batches(batches(two_sources, loader_config(seed=5), 3), first)
    other = batches(two_sources, loader_config(seed=6), 3)
    assert [b["key"] for b in other] != [b["key"] for b in first]


def test_resume_from_state_dict_gives_the_next_batches_of_an_uninterrupted_run(two_sources):
    cfg = loader_config(num_workers=2)
    uninterrupted = batches(two_sources, cfg, 7)
    loader = TrainLoader([two_sources], cfg)
    list(loader.iterate(4))
    state = json.loads(json.dumps(loader.state_dict()))  # survives a checkpoint round trip
    resumed = TrainLoader([two_sources], cfg)
    resumed.load_state_dict(state)
    assert_same_batches(list(resumed.iterate(3)), uninterrupted[4:])


def test_resume_on_twice_the_ranks_with_half_the_batch_continues_the_global_stream(two_sources):
    uninterrupted = batches(two_sources, loader_config(batch_size=6), 5)
    loader = TrainLoader([two_sources], loader_config(batch_size=6))
    list(loader.iterate(3))
    per_rank = []
    for rank in range(2):
        resumed = TrainLoader([two_sources], loader_config(batch_size=3), rank, world_size=2)
        resumed.load_state_dict(loader.state_dict())
        per_rank.append(list(resumed.iterate(2)))
    assert_same_batches([concat_ranks(list(pair)) for pair in zip(*per_rank, strict=True)], uninterrupted[3:])


def test_resume_that_would_split_a_global_batch_is_refused(two_sources):
    from ovdet.errors import OvdetError

    loader = TrainLoader([two_sources], loader_config(batch_size=4))
    list(loader.iterate(1))
    with pytest.raises(OvdetError, match="resume"):
        TrainLoader([two_sources], loader_config(batch_size=3)).load_state_dict(loader.state_dict())


# Texts


def sample_of(record: Record, pool: list[str], seed: int = 0, image: bytes | None = None, **cfg) -> dict:
    jpeg = image or jpeg_bytes(record.width, record.height)
    return build_sample(jpeg, record, pool, loader_config(**cfg), np.random.default_rng(seed))


def test_texts_are_positives_then_num_negatives_never_a_positive():
    record = Record(
        key="k",
        source="s",
        kind="detection",
        width=48,
        height=32,
        boxes=[[1, 1, 9, 9], [10, 10, 20, 20], [2, 2, 5, 5]],
        category_ids=[1, 2, 1],
        category_names=["thing1", "thing2", "thing1"],
        is_crowd=[0, 0, 0],
    )
    positives = ["thing1", "thing2"]
    for seed in range(20):
        texts = sample_of(record, NAMES, seed, num_negatives=7, template_probability=0.0)["texts"]
        assert texts[: len(positives)] == positives
        negatives = texts[len(positives) :]
        assert len(negatives) == len(set(negatives)) == 7
        assert set(negatives) <= set(NAMES) - set(positives)


def test_negatives_are_fewer_when_the_pool_is_small_and_skip_crowd_names():
    record = Record(
        key="k",
        source="s",
        kind="detection",
        width=48,
        height=32,
        boxes=[[1, 1, 9, 9], [10, 10, 20, 20]],
        category_ids=[0, 1],
        category_names=["cat", "person"],
        is_crowd=[0, 1],
    )
    sample = sample_of(record, ["cat", "dog", "person", "bird"], num_negatives=60, template_probability=0.0)
    assert sample["texts"] == ["cat", "dog", "bird"]
    assert sample["labels"].tolist() == [0] and len(sample["boxes"]) == 1


def test_a_caption_name_without_a_box_is_never_a_negative():
    """A pseudo-labelled image (``ovdet pseudo-label``): its caption names a dog that got no box above
    the threshold; the dog is still in the image, so "dog" is no negative, and "cat" stays a positive."""
    record = Record(key="p", source="pseudo", kind="detection", width=48, height=32, boxes=[[1, 1, 9, 9]],
                    category_ids=[-1], category_names=["cat"], is_crowd=[0], caption="a cat and a dog.",
                    phrases=[Phrase("cat", [(2, 5)], []), Phrase("dog", [(12, 15)], [])])  # fmt: skip
    sample = sample_of(record, ["cat", "dog", "person", "bird"], num_negatives=60, template_probability=0.0)
    assert sample["texts"] == ["cat", "person", "bird"]
    assert sample["labels"].tolist() == [0]


def test_image_text_negatives_skip_pool_phrases_that_overlap_a_positive():
    record = Record(key="i", source="s", kind="image_text", width=48, height=32,
                    caption="a red heart on a textured background and a blue star.")  # fmt: skip
    pool = ["red heart", "red heart on a textured background", "image showing a blue star", "green heart", "star"]
    sample = sample_of(record, pool, num_negatives=60, template_probability=0.0)
    assert sample["texts"] == ["red heart on a textured background", "blue star", "green heart"]
    assert sample["image_labels"].tolist() == [0, 1] and not sample["has_boxes"]
    matched = Record(**{**record.__dict__, "phrases": [Phrase("red heart", [(2, 11)], []), Phrase("blue star", [(47, 56)], [])]})
    sample = sample_of(matched, pool, num_negatives=60, template_probability=0.0)
    assert sample["texts"] == ["red heart", "blue star", "green heart"]


def test_labels_index_each_box_name_in_the_texts():
    record = detection_record("a", 2)
    sample = sample_of(record, NAMES, template_probability=0.0)
    assert [sample["texts"][i] for i in sample["labels"].tolist()] == record.category_names


def test_detection_names_are_templated_but_grounding_phrases_are_not():
    templates = {"prompt_templates": ["a photo of a {}."], "template_probability": 1.0, "num_negatives": 3}
    detection = Record(
        key="d",
        source="s",
        kind="detection",
        width=48,
        height=32,
        boxes=[[1, 1, 9, 9]],
        category_ids=[0],
        category_names=["cat"],
        is_crowd=[0],
    )
    texts = sample_of(detection, ["cat", "dog", "bird", "fish"], **templates)["texts"]
    assert texts[0] == "a photo of a cat." and all(t.startswith("a photo of a ") for t in texts)
    caption = "a man rides a red bike"
    grounding = Record(
        key="g",
        source="s",
        kind="grounding",
        width=48,
        height=32,
        caption=caption,
        boxes=[[1, 1, 9, 9], [10, 10, 30, 30]],
        category_ids=[-1, -1],
        category_names=["a man", "a red bike"],
        is_crowd=[0, 0],
        phrases=[Phrase("a man", [(0, 5)], [0]), Phrase("a red bike", [(12, 22)], [1])],
    )
    sample = sample_of(grounding, ["a man", "a red bike", "the dog", "two birds"], **templates)
    assert sample["texts"] == ["a man", "a red bike", "the dog", "two birds"]
    assert sample["labels"].tolist() == [0, 1]


def lvis_record(names: list[str], **fields) -> Record:
    boxes = [[1.0 + i, 1.0, 9.0 + i, 9.0] for i in range(len(names))]
    return Record(key="l", source="lvis", kind="detection", width=48, height=32, boxes=boxes,
                  category_ids=list(range(len(names))), category_names=names, is_crowd=[0] * len(names), **fields)  # fmt: skip


LVIS_POOL = ["bat_(animal)", "baseball_bat", "bow_(weapon)", "bow_(decorative_ribbons)", "date_(fruit)",
             "hot_dog", "speaker_(stereo_equipment)", "Tabasco_sauce"] + [f"thing_{i}" for i in range(20)]  # fmt: skip


def test_category_names_become_prompt_texts_and_labels_follow_them():
    record = lvis_record(["speaker_(stereo_equipment)", "bow_(weapon)", "speaker_(stereo_equipment)"])
    sample = sample_of(record, texts_of(LVIS_POOL, "detection"), num_negatives=60, template_probability=0.0)
    assert sample["texts"][:2] == ["speaker (stereo equipment)", "bow (weapon)"]
    assert sample["labels"].tolist() == [0, 1, 0]
    assert not any("_" in text for text in sample["texts"])
    assert "bow (decorative ribbons)" in sample["texts"]  # another category, not a duplicate of the positive


def test_no_negative_shares_a_text_with_a_positive_or_another_negative():
    record = lvis_record(["Hot_Dog"])
    pool = texts_of(["hot_dog", "hot dog", "bow_(weapon)", "Bow_(weapon)", "bow_(decorative_ribbons)"], "detection")
    sample = sample_of(record, pool, num_negatives=60, template_probability=0.0)
    assert sample["texts"] == ["hot dog", "bow (weapon)", "bow (decorative ribbons)"]


def test_loader_gives_lvis_names_from_shards_as_prompt_texts(tmp_path):
    records = [lvis_record([LVIS_POOL[i], LVIS_POOL[i + 1]]) for i in range(6)]
    records = [Record(**{**r.__dict__, "key": f"l{i}"}) for i, r in enumerate(records)]
    shard_dir = write_shard_set(tmp_path, {"lvis": (1.0, records)})
    cfg = loader_config(num_negatives=4, template_probability=0.0, batch_size=6)
    batch = batches(shard_dir, cfg, 1)[0]
    expected = set(texts_of(LVIS_POOL[:7], "detection"))
    assert all(set(texts) <= expected and len(texts) == 6 for texts in batch["texts"])


FEDERATED = {"negatives": ["bat_(animal)", "date_(fruit)", "Tabasco_sauce"],
             "meta": {"federated": True, "not_exhaustive_categories": ["speaker_(stereo_equipment)", "hot_dog"]}}  # fmt: skip


def test_federated_negatives_are_exactly_the_verified_names():
    record = lvis_record(["bow_(weapon)", "speaker_(stereo_equipment)"], **FEDERATED)
    for seed in range(10):
        texts = sample_of(record, texts_of(LVIS_POOL, "detection"), seed, num_negatives=10, template_probability=0.0)["texts"]
        assert texts == ["bow (weapon)", "speaker (stereo equipment)", "bat (animal)", "date (fruit)", "tabasco sauce"]


def test_federated_negatives_beyond_num_negatives_are_a_seeded_subset_of_the_verified_names():
    record = lvis_record(["bow_(weapon)"], **FEDERATED)
    pool = texts_of(LVIS_POOL, "detection")
    draws = {tuple(sample_of(record, pool, seed, num_negatives=2, template_probability=0.0)["texts"][1:]) for seed in range(20)}
    assert all(len(set(d)) == 2 and set(d) <= {"bat (animal)", "date (fruit)", "tabasco sauce"} for d in draws)
    assert len(draws) == 3  # every pair comes up: the subset depends on the seed
    again = sample_of(record, pool, 7, num_negatives=2, template_probability=0.0)["texts"]
    assert again == sample_of(record, pool, 7, num_negatives=2, template_probability=0.0)["texts"]


def test_pool_mode_fills_after_the_verified_names_never_with_not_exhaustive_ones():
    record = lvis_record(["bow_(weapon)"], **FEDERATED)
    pool = texts_of(LVIS_POOL, "detection")
    seen = set()
    for seed in range(30):
        texts = sample_of(record, pool, seed, num_negatives=8, template_probability=0.0, federated_negatives="pool")["texts"]
        negatives = texts[1:]
        assert negatives[:3] == ["bat (animal)", "date (fruit)", "tabasco sauce"] and len(set(negatives)) == 8
        assert not {"speaker (stereo equipment)", "hot dog", "bow (weapon)"} & set(negatives)
        seen.update(negatives[3:])
    assert len(seen) > 10  # filled from the pool, not a fixed list


def test_records_without_the_federated_flag_keep_the_texts_of_before():
    """Pinned with the loader of before federated labels and prompt names (same seed, same draws)."""
    record = Record(key="k", source="s", kind="detection", width=48, height=32, boxes=[[1, 1, 9, 9], [10, 10, 20, 20]],
                    category_ids=[1, 2], category_names=["thing1", "thing2"], is_crowd=[0, 0],
                    negatives=["thing3", "thing4"], meta={"not_exhaustive_categories": ["thing5"]})  # fmt: skip
    expected = ["a thing1.", "thing2", "thing3", "thing6", "thing17", "thing22", "thing24"]
    assert sample_of(record, NAMES, seed=3)["texts"] == expected
    assert sample_of(record, NAMES, seed=3, federated_negatives="pool")["texts"] == expected


# Boxes and pixels


def rectangle_jpeg(width: int, height: int, box: list[int]) -> bytes:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    pixels[y1:y2, x1:x2] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def bright_region_xyxy(image: torch.Tensor) -> np.ndarray:
    """Bounding box of the bright pixels of a [3, S, S] uint8 image, in pixel edges."""
    ys, xs = np.nonzero(image.float().mean(0).numpy() > 128)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def input_boxes_xyxy(sample: dict, size: int) -> np.ndarray:
    """The sample's normalized cxcywh boxes as xyxy pixels of the letterboxed input."""
    return box_cxcywh_to_xyxy(sample["boxes"].double()).numpy() * size


def one_box_record(width: int, height: int, box: list[int]) -> Record:
    return Record(key="r", source="s", kind="detection", width=width, height=height,
                  boxes=[[float(v) for v in box]], category_ids=[0], category_names=["cat"], is_crowd=[0])


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_letterboxed_boxes_map_back_to_the_original_boxes(flip):
    box, size = [10, 6, 30, 20], 32
    record = one_box_record(64, 48, box)
    sample = sample_of(
        record, [], image=rectangle_jpeg(64, 48, box), image_size=size, min_scale=1.0, hflip_probability=flip
    )
    in_input = input_boxes_xyxy(sample, size)
    scale = size / 64
    expected = np.array([[64 - 30, 6, 64 - 10, 20]] if flip else [box], dtype=np.float64) * scale
    np.testing.assert_allclose(in_input, expected, atol=1e-4)
    back = in_input / scale
    if flip:
        back[:, [0, 2]] = 64 - back[:, [2, 0]]
    np.testing.assert_allclose(back, [box], atol=1e-4)
    np.testing.assert_allclose(
        bright_region_xyxy(sample["image"]), in_input[0], atol=1.0
    )  # pixels moved alike


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
@pytest.mark.parametrize("seed", range(4))
def test_boxes_follow_the_pixels_under_scale_jitter_and_flip(seed, resize):
    box, size = [8, 4, 40, 28], 64
    record = one_box_record(48, 36, box)
    sample = sample_of(
        record,
        [],
        seed=seed,
        image=rectangle_jpeg(48, 36, box),
        image_size=size,
        min_scale=0.5,
        hflip_probability=0.5,
        resize=resize,
    )
    in_input = input_boxes_xyxy(sample, size)[0]
    np.testing.assert_allclose(bright_region_xyxy(sample["image"]), in_input, atol=1.5)


def test_workers_forked_after_the_main_process_read_a_shard_still_read_it_correctly(tmp_path):
    shard_dir = write_shard_set(tmp_path, {"a": (1.0, [detection_record("a", i) for i in range(24)])}, per_shard=24)
    cfg = loader_config(num_workers=2, batch_size=12)
    reference = batches(shard_dir, cfg, 20)
    loader = TrainLoader([shard_dir], cfg)
    loader.dataset[0]  # opens the shard in the main process: the forked workers inherit the open file
    assert_same_batches(list(loader.iterate(20)), reference)
