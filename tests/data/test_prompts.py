"""Category names as prompt text: LVIS names normalised with their qualifier, one text per name of a
vocabulary, synonyms that name two classes left out of both."""

import subprocess
import sys

from ovdet.data.prompts import class_prompts, prompt_name, prompt_texts
from ovdet.data.vocab import Category, Vocabulary

LVIS_NAMES = ["speaker_(stereo_equipment)", "bow_(weapon)", "bow_(decorative_ribbons)", "Tabasco_sauce",
              "octopus_(food)", "octopus_(animal)", "baseball_bat", "bat_(animal)"]  # fmt: skip


def test_underscores_become_spaces_and_the_qualifier_stays():
    assert prompt_name("speaker_(stereo_equipment)") == "speaker (stereo equipment)"
    assert prompt_name("bow_(weapon)") == "bow (weapon)"
    assert prompt_name("Tabasco_sauce") == "tabasco sauce"
    assert prompt_name("  red   heart ") == "red heart"


def test_names_without_underscores_are_their_own_text():
    for name in ("red heart", "blue star", "person", "traffic light"):
        assert prompt_name(name) == name


def test_lvis_names_that_share_a_head_noun_keep_distinct_texts():
    texts = [prompt_name(name) for name in LVIS_NAMES]
    assert len(set(texts)) == len(LVIS_NAMES)
    assert {"bow (weapon)", "bow (decorative ribbons)", "octopus (food)", "octopus (animal)"} <= set(texts)


def test_the_text_finds_its_category_in_the_vocabulary():
    vocab = Vocabulary([Category(i + 1, name) for i, name in enumerate(LVIS_NAMES)])
    for name in LVIS_NAMES:
        assert vocab.by_name(prompt_name(name)).name == name


def test_prompt_texts_keep_one_entry_per_text_in_order():
    names = ["hot_dog", "bow_(weapon)", "hot dog", "Hot_Dog", "bow_(decorative_ribbons)"]
    assert prompt_texts(names) == ["hot dog", "bow (weapon)", "bow (decorative ribbons)"]


def test_class_prompts_without_synonyms_are_the_name_texts():
    assert class_prompts(["bow_(weapon)", "red heart"]) == [["bow (weapon)"], ["red heart"]]


def test_class_prompts_add_synonyms_after_the_name_without_repeating_it():
    prompts = class_prompts(["aerosol_can", "red heart"], [["aerosol_can", "spray_can"], []])
    assert prompts == [["aerosol can", "spray can"], ["red heart"]]


def test_a_synonym_naming_two_classes_is_left_out_of_both():
    names = ["bow_(weapon)", "bow_(decorative_ribbons)", "cap_(headwear)", "bottle_cap"]
    synonyms = [["bow_(weapon)", "bow", "longbow"], ["bow", "ribbon_bow"], ["cap"], ["Cap", "bottle_top"]]
    assert class_prompts(names, synonyms) == [
        ["bow (weapon)", "longbow"], ["bow (decorative ribbons)", "ribbon bow"],
        ["cap (headwear)"], ["bottle cap", "bottle top"],
    ]  # fmt: skip


def test_a_synonym_that_is_another_class_name_is_left_out_but_the_name_stays():
    assert class_prompts(["cap", "baseball_cap"], [[], ["cap", "ball_cap"]]) == [["cap"], ["baseball cap", "ball cap"]]


def test_prompts_module_does_not_import_torch():
    code = "import sys, ovdet.data.prompts; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
