"""Vocabularies from YAML, text, comma strings and presets; every user error is an OvdetError."""

from __future__ import annotations

import pytest

from ovdet.data.vocab import Category, Vocabulary, load_vocabulary
from ovdet.errors import OvdetError

VOCAB_YAML = """\
categories:
  - {id: 3, name: car, split: base, synonyms: [automobile]}
  - {id: 17, name: cat, split: novel, synonyms: []}
prompts: ["a photo of a {}.", "a {} in the scene."]
"""


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_vocabulary_keeps_ids_splits_synonyms_and_prompts(tmp_path):
    vocab = load_vocabulary(write(tmp_path, "vocab.yaml", VOCAB_YAML))
    assert vocab.names == ["car", "cat"]
    assert vocab.base_ids == [3] and vocab.novel_ids == [17]
    assert vocab.by_name("Automobile").id == 3
    assert vocab.prompts == ["a photo of a {}.", "a {} in the scene."]


def test_to_yaml_round_trips(tmp_path):
    vocab = Vocabulary([Category(5, "red car", "novel", ["crimson car"]), Category(9, "dog", frequency="f")])
    vocab.to_yaml(tmp_path / "out.yaml")
    assert load_vocabulary(str(tmp_path / "out.yaml")) == vocab


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("categories:\n  - {id: 1, name: cat, split: new}\n", "split must be 'base' or 'novel'"),
        ("categories:\n  - {id: 1, name: cat}\n  - {id: 1, name: dog}\n", "duplicate category id 1"),
        ("categories:\n  - {id: 1, name: cat}\n  - {id: 2, name: Cat}\n", "duplicate category name"),
        ("categories:\n  - {id: 1, name: cat, colour: red}\n", "unknown key(s) colour"),
        ("categories: []\nextra: 1\n", "unknown key(s) extra"),
        ("categories:\n  - {id: one, name: cat}\n", "'id' must be an integer"),
        ("categories: [\n", "invalid YAML"),
    ],
)
def test_bad_yaml_vocabulary_names_file_and_reason(tmp_path, text, reason):
    path = write(tmp_path, "vocab.yaml", text)
    with pytest.raises(OvdetError, match="vocab.yaml") as error:
        load_vocabulary(path)
    assert reason in str(error.value)


def test_missing_vocabulary_file_is_a_user_error(tmp_path):
    with pytest.raises(OvdetError, match="not found"):
        load_vocabulary(str(tmp_path / "nope.yaml"))


def test_text_file_assigns_ids_in_order_and_novel_names(tmp_path):
    path = write(tmp_path, "names.txt", "cat\n\n# comment\ndog\nred car\n")
    vocab = load_vocabulary(path, novel=["dog"])
    assert [(c.id, c.name, c.split) for c in vocab.categories] == [
        (1, "cat", "base"), (2, "dog", "novel"), (3, "red car", "base")
    ]  # fmt: skip


def test_text_file_takes_ids_from_gt_categories_by_name(tmp_path):
    gt = {"categories": [{"id": 18, "name": "dog"}, {"id": 17, "name": "cat"}]}
    vocab = load_vocabulary(write(tmp_path, "names.txt", "cat\ndog\n"), gt=gt)
    assert vocab.ids == [17, 18]


def test_text_name_missing_from_gt_is_a_user_error(tmp_path):
    gt = {"categories": [{"id": 17, "name": "cat"}]}
    with pytest.raises(OvdetError, match="unicorn"):
        load_vocabulary(write(tmp_path, "names.txt", "cat\nunicorn\n"), gt=gt)


def test_comma_string_is_an_ad_hoc_vocabulary():
    vocab = load_vocabulary("cat, dog,red car", novel=["red car"])
    assert vocab.names == ["cat", "dog", "red car"]
    assert vocab.novel_ids == [3]


def test_unknown_novel_name_is_a_user_error():
    with pytest.raises(OvdetError, match="unicorn"):
        load_vocabulary("cat,dog", novel=["unicorn"])


def test_ov_coco_preset_has_48_base_and_17_novel_with_coco_ids():
    vocab = load_vocabulary("ov-coco")
    assert len(vocab.base_ids) == 48 and len(vocab.novel_ids) == 17
    assert vocab.by_name("airplane").id == 5 and vocab.by_name("airplane").split == "novel"
    assert vocab.by_name("toothbrush").id == 90 and vocab.by_name("person").split == "base"


def test_lvis_preset_makes_rare_novel_and_keeps_frequency():
    gt = {"categories": [
        {"id": 1, "name": "aerosol_can", "frequency": "c", "synonyms": ["spray_can"]},
        {"id": 2, "name": "ax", "frequency": "r", "synonyms": []},
        {"id": 3, "name": "apple", "frequency": "f", "synonyms": []},
    ]}  # fmt: skip
    vocab = load_vocabulary("lvis", gt=gt)
    assert vocab.novel_ids == [2] and vocab.base_ids == [1, 3]
    assert [c.frequency for c in vocab.categories] == ["c", "r", "f"]
    assert vocab.by_name("spray can").id == 1


def test_lvis_preset_without_gt_is_a_user_error():
    with pytest.raises(OvdetError, match="lvis"):
        load_vocabulary("lvis")
