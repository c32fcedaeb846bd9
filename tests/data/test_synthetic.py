import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest
import yaml
from PIL import Image

from ovdet.config import SynthConfig
from ovdet.data.synthetic import generate_world
from ovdet.data.synthetic_scenes import CATEGORIES, COLOURS, NOVEL_NAMES, SHAPES, SPLITS, sample_image
from ovdet.errors import OvdetError

SMALL = dict(image_size=96, num_detection=6, num_grounding=6, num_image_text=6, num_eval=6)
NOVEL_IDS = {c["id"] for c in CATEGORIES if c["split"] == "novel"}


def small_config(**changes) -> SynthConfig:
    return SynthConfig(**{**SMALL, **changes})


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(small_config(), out, progress=False)
    return out


def test_same_seed_gives_byte_identical_files(world, tmp_path):
    generate_world(small_config(), tmp_path, progress=False)
    assert file_hashes(tmp_path) == file_hashes(world)


def test_different_seed_gives_different_images(world, tmp_path):
    generate_world(small_config(seed=1), tmp_path, progress=False)
    ours, theirs = file_hashes(world), file_hashes(tmp_path)
    images = [name for name in ours if name.endswith(".jpg")]
    assert len(images) == 24
    assert all(ours[name] != theirs[name] for name in images)


def test_split_contents_do_not_depend_on_other_split_sizes(world, tmp_path):
    generate_world(small_config(num_detection=2, num_image_text=9), tmp_path, progress=False)
    ours, theirs = file_hashes(world), file_hashes(tmp_path)
    for name in (
        "images/eval/000005.jpg",
        "images/grounding/000003.jpg",
        "eval.json",
        "grounding_train.jsonl",
    ):
        assert ours[name] == theirs[name]


def test_layout_has_every_split_and_file(world):
    for split in SPLITS:
        assert len(list((world / "images" / split).glob("*.jpg"))) == 6
    for name in ("detection_train.json", "grounding_train.jsonl", "image_text_train.jsonl", "eval.json"):
        assert (world / name).is_file()
    summary = json.loads((world / "world.json").read_text())
    assert summary["config"] == dataclasses.asdict(small_config())
    assert summary["counts"]["eval"]["images"] == 6


def test_images_are_jpeg_of_the_configured_size_without_exif(world):
    image = Image.open(world / "images/detection/000000.jpg")
    assert (image.format, image.size, image.mode) == ("JPEG", (96, 96), "RGB")
    assert not image.getexif()


def test_detection_json_annotates_only_base_categories_and_lists_all(world):
    coco = json.loads((world / "detection_train.json").read_text())
    assert [c["id"] for c in coco["categories"]] == list(range(1, 49))
    assert [c["name"] for c in coco["categories"]] == [c["name"] for c in CATEGORIES]
    assert coco["annotations"]
    assert all(a["category_id"] not in NOVEL_IDS for a in coco["annotations"])
    assert all(a["iscrowd"] == 0 and a["area"] > 0 for a in coco["annotations"])
    assert [i["file_name"] for i in coco["images"]] == [f"detection/{i:06d}.jpg" for i in range(6)]


def test_detection_images_still_contain_unannotated_novel_objects():
    config = small_config(num_detection=40)
    objects = [o for i in range(40) for o in sample_image(config, "detection", i).objects]
    assert any(o.is_novel for o in objects)


def test_detection_annotations_match_the_drawn_base_objects(world):
    coco = json.loads((world / "detection_train.json").read_text())
    for image in coco["images"]:
        drawn = sample_image(small_config(), "detection", image["id"] - 1).objects
        annotated = [a["category_id"] for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert annotated == [o.category_id for o in drawn if not o.is_novel]


def test_eval_json_contains_novel_annotations(tmp_path):
    generate_world(small_config(num_eval=20), tmp_path, progress=False)
    coco = json.loads((tmp_path / "eval.json").read_text())
    assert any(a["category_id"] in NOVEL_IDS for a in coco["annotations"])
    assert any(a["category_id"] not in NOVEL_IDS for a in coco["annotations"])


def test_every_colour_and_every_shape_occurs_in_some_base_category():
    base = [c for c in CATEGORIES if c["split"] == "base"]
    assert {c["colour"] for c in base} == set(COLOURS)
    assert {c["shape"] for c in base} == set(SHAPES)


def test_a_quarter_of_the_categories_are_novel():
    assert len(CATEGORIES) == 48
    assert len(NOVEL_NAMES) == 12
    assert len(set(c["name"] for c in CATEGORIES)) == 48


def test_boxes_lie_inside_the_image_with_sizes_in_the_scale_range(world):
    config = small_config()
    coco = json.loads((world / "eval.json").read_text())
    size = config.image_size
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= size and y + h <= size
        # the longest side of a rotated shape's box is between side/sqrt(2) and side*sqrt(2)
        assert (
            config.min_scale * size / math.sqrt(2) - 1
            <= max(w, h)
            <= config.max_scale * size * math.sqrt(2) + 1
        )


def test_object_counts_are_within_the_configured_range():
    config = small_config(num_eval=30)
    counts = [len(sample_image(config, "eval", i).objects) for i in range(30)]
    assert all(1 <= n <= 8 for n in counts)
    assert len(set(counts)) > 2


def test_odvg_spans_slice_the_caption_to_the_phrase(world):
    rows = read_jsonl(world / "grounding_train.jsonl")
    assert [r["filename"] for r in rows] == [f"grounding/{i:06d}.jpg" for i in range(6)]
    for row in rows:
        caption, regions = row["grounding"]["caption"], row["grounding"]["regions"]
        assert regions and (row["height"], row["width"]) == (96, 96)
        for region in regions:
            assert region["phrase"] not in NOVEL_NAMES
            x1, y1, x2, y2 = region["bbox"]
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
            assert [caption[s:e] for s, e in region["tokens_positive"]] == [region["phrase"]]


def test_grounding_caption_mentions_no_novel_category(world):
    for row in read_jsonl(world / "grounding_train.jsonl"):
        assert not any(name in row["grounding"]["caption"] for name in NOVEL_NAMES)


def test_image_text_captions_name_every_object_including_novel(tmp_path):
    config = small_config(num_image_text=30)
    generate_world(config, tmp_path, progress=False)
    rows = read_jsonl(tmp_path / "image_text_train.jsonl")
    saw_novel = False
    for index, row in enumerate(rows):
        assert row["image"] == f"image_text/{index:06d}.jpg" and set(row) == {"image", "caption"}
        for obj in sample_image(config, "image_text", index).objects:
            assert obj.name in row["caption"]
            saw_novel |= obj.is_novel
    assert saw_novel


def test_vocabulary_matching_gives_each_caption_exactly_its_objects_names(tmp_path):
    """What `configs/data/synthetic.yaml` does: the image-text source's labels are the world's
    vocabulary names matched in each caption, whatever template the caption uses."""
    from ovdet.config import SourceConfig
    from ovdet.data.sources import iter_source

    config = small_config(num_image_text=40)
    generate_world(config, tmp_path, progress=False)
    source = SourceConfig(name="it", kind="image_text", format="jsonl", paths=["image_text_train.jsonl"],
                          image_root="images", vocabulary="vocab.yaml")  # fmt: skip
    records = list(iter_source(source, tmp_path))
    assert len(records) == 40
    for index, record in enumerate(records):
        names = {obj.name for obj in sample_image(config, "image_text", index).objects}
        assert set(record.caption_labels()) == names, record.caption


def test_vocab_lists_splits_synonyms_and_prompts(world):
    vocab = yaml.safe_load((world / "vocab.yaml").read_text())
    assert [c["name"] for c in vocab["categories"] if c["split"] == "novel"] == NOVEL_NAMES
    red_circle = vocab["categories"][0]
    assert red_circle["name"] == "red circle" and "crimson circle" in red_circle["synonyms"]
    assert all(c["synonyms"] and c["name"] not in c["synonyms"] for c in vocab["categories"])
    assert vocab["prompts"] == ["a photo of a {}."]


def test_rerun_with_the_same_config_is_a_no_op(world):
    before = {p: p.stat().st_mtime_ns for p in world.rglob("*")}
    summary = generate_world(small_config(), world, progress=False)
    assert {p: p.stat().st_mtime_ns for p in world.rglob("*")} == before
    assert summary["counts"]["detection"]["images"] == 6


def test_a_different_config_into_the_same_dir_raises_unless_overwrite(tmp_path):
    generate_world(small_config(), tmp_path, progress=False)
    with pytest.raises(OvdetError, match="different world"):
        generate_world(small_config(seed=3, num_eval=2), tmp_path, progress=False)
    generate_world(small_config(seed=3, num_eval=2), tmp_path, overwrite=True, progress=False)
    assert len(list((tmp_path / "images/eval").glob("*.jpg"))) == 2
    assert json.loads((tmp_path / "world.json").read_text())["config"]["seed"] == 3


def test_a_non_empty_dir_without_a_world_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OvdetError, match="no world.json"):
        generate_world(small_config(), tmp_path, progress=False)


def test_invalid_config_raises_naming_the_key(tmp_path):
    with pytest.raises(OvdetError, match="max_scale"):
        generate_world(small_config(max_scale=0.9), tmp_path, progress=False)


# ---- the novel-words world: novel names use words no base name carries


@pytest.fixture(scope="module")
def novel_words_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("novel-words")
    generate_world(small_config(world="novel-words", num_detection=30, num_grounding=30, num_image_text=40,
                                num_eval=30), out, progress=False)  # fmt: skip
    return out


def words(text: str) -> set[str]:
    return set(text.lower().replace(",", " ").replace(".", " ").split())


def test_novel_words_world_keeps_the_48_as_base_and_adds_nine_new_word_categories(novel_words_world):
    vocab = yaml.safe_load((novel_words_world / "vocab.yaml").read_text())["categories"]
    assert [c["name"] for c in vocab[:48]] == [c["name"] for c in CATEGORIES]
    assert {c["split"] for c in vocab[:48]} == {"base"}
    novel = [c["name"] for c in vocab if c["split"] == "novel"]
    assert len(vocab) == 57 and len(novel) == 9 and "pink crescent" in novel and "white arrow" in novel
    base_words = set().union(*(words(c["name"]) for c in vocab if c["split"] == "base"))
    for name in novel:  # both words of every novel name are new; a synonym swaps one of them
        assert words(name).isdisjoint(base_words), name
    summary = json.loads((novel_words_world / "world.json").read_text())
    assert summary["novel_names"] == novel and summary["config"]["world"] == "novel-words"


def test_no_novel_word_in_any_box_bearing_record(novel_words_world):
    vocab = yaml.safe_load((novel_words_world / "vocab.yaml").read_text())["categories"]
    base_words = set().union(*(words(c["name"]) for c in vocab if c["split"] == "base"))
    novel_words = set().union(*(words(c["name"]) for c in vocab if c["split"] == "novel")) - base_words
    novel_ids = {c["id"] for c in vocab if c["split"] == "novel"}
    detection = json.loads((novel_words_world / "detection_train.json").read_text())
    assert detection["annotations"] and all(a["category_id"] not in novel_ids for a in detection["annotations"])
    rows = read_jsonl(novel_words_world / "grounding_train.jsonl")
    for row in rows:
        assert words(row["grounding"]["caption"]).isdisjoint(novel_words), row["grounding"]["caption"]
        assert all(words(r["phrase"]).isdisjoint(novel_words) for r in row["grounding"]["regions"])
    # the images themselves do hold novel objects, unannotated, as real detection data does
    drawn = [o for i in range(30) for o in sample_image(small_config(world="novel-words"), "detection", i).objects]
    assert any(o.is_novel for o in drawn)


def test_novel_words_reach_training_only_through_image_text_captions(novel_words_world):
    vocab = yaml.safe_load((novel_words_world / "vocab.yaml").read_text())["categories"]
    novel = {c["name"] for c in vocab if c["split"] == "novel"}
    captions = [row["caption"] for row in read_jsonl(novel_words_world / "image_text_train.jsonl")]
    named = {name for caption in captions for name in novel if name in caption}
    assert len(named) >= 5  # 40 captions name most of the nine
    evaluation = json.loads((novel_words_world / "eval.json").read_text())
    novel_ids = {c["id"] for c in vocab if c["split"] == "novel"}
    assert any(a["category_id"] in novel_ids for a in evaluation["annotations"])
    assert [c["name"] for c in evaluation["categories"]] == [c["name"] for c in vocab]


@pytest.mark.parametrize("shape", ["arrow", "crescent", "ring"])
def test_new_shapes_are_drawn_with_their_outline_and_hole(shape):
    """Pixel area of the unit shape against its bounding box: a ring keeps its hole (about 0.53 of its
    box), a crescent is a sliver (about 0.3), an arrow about 0.45; base circles fill about 0.78."""
    import numpy as np

    from ovdet.data.synthetic_scenes import object_mask

    config = small_config(image_size=192, min_scale=0.5, max_scale=0.5)
    fills = []
    for seed in range(8):
        mask = object_mask(np.random.default_rng(seed), config, shape)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        fills.append(mask.sum() / ((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)))
    expected = {"arrow": (0.3, 0.6), "crescent": (0.15, 0.45), "ring": (0.45, 0.62)}[shape]
    assert all(expected[0] <= fill <= expected[1] for fill in fills), fills
    if shape == "ring":  # the centre pixel is background
        mask = object_mask(np.random.default_rng(0), config, shape)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert not mask[(rows[0] + rows[-1]) // 2, (cols[0] + cols[-1]) // 2]


def test_the_compositional_world_is_unchanged_by_the_second_world(world):
    """Same images and files as before ``synth.world`` existed; a world.json written then (no
    ``world`` key) is the same compositional world, so re-running over it is a no-op."""
    summary = json.loads((world / "world.json").read_text())
    assert summary["config"]["world"] == "compositional" and len(summary["novel_names"]) == 12
    old = {**summary, "config": {k: v for k, v in summary["config"].items() if k != "world"}}
    (world / "world.json").write_text(json.dumps(old))
    try:
        assert generate_world(small_config(), world, progress=False)["counts"]["detection"]["images"] == 6
    finally:
        (world / "world.json").write_text(json.dumps(summary, indent=2))


def test_an_unknown_world_names_the_key():
    from ovdet.config import load_config

    with pytest.raises(OvdetError, match=r"synth\.world.*compositional.*novel-words"):
        load_config(None, ["synth.world=fantasy"])
