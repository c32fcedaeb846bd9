"""Category names as the text the text encoder reads: one rule for training, evaluation and detection.

A category keeps its raw name as its identity everywhere (records, vocabularies, evaluation
categories, detection labels); only the text given to the encoder is normalised by ``prompt_name``:
underscores become spaces, letters lower case, runs of spaces one space, and the parenthesised
qualifier stays, ``speaker_(stereo_equipment)`` -> ``speaker (stereo equipment)``. This is ViLD's
``processed_name`` (tensorflow/tpu ``projects/vild``) and Detic's ``--fix_space``
(``tools/dump_clip_features.py``); OWL-ViT (scenic ``owl_vit/preprocessing/label_ops.py``,
``_canonicalize_string``) also keeps the qualifier's words, without the parentheses. None of them
drops the qualifier, and LVIS needs it: ``bow_(weapon)`` and ``bow_(decorative_ribbons)`` would both
read "bow", and two classes with one text tie in every score.

The text is the vocabulary's own matching key (``normalize_name``), so two names of one vocabulary
never share a text (``load_vocabulary`` rejects such duplicates); lists of names from elsewhere (a
source's negative pool) go through ``prompt_texts``, which keeps one entry per text.

Synonyms (LVIS ``synonyms``) can add prompts to a class whose embeddings are averaged like prompt
templates (Detic's ``--avg_synonyms``, off by default there as here). No torch in this module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ovdet.data.vocab import normalize_name


def prompt_name(name: str) -> str:
    """The text the encoder reads for category ``name`` (the rule is in the module docstring)."""
    return normalize_name(name)


def prompt_texts(names: Iterable[str]) -> list[str]:
    """The distinct prompt texts of ``names``, in order of first appearance."""
    return list(dict.fromkeys(prompt_name(name) for name in names))


def class_prompts(names: list[str], synonyms: list[list[str]] | None = None) -> list[list[str]]:
    """Per class of ``names``, the texts whose embeddings are averaged into its class embedding.

    The name's prompt text always comes first. With ``synonyms`` (one list per class), the distinct
    texts of its synonyms follow, except a text that is also another class's name or synonym: it
    cannot tell the two apart and would pull their embeddings together.
    """
    own = [prompt_name(name) for name in names]
    if synonyms is None:
        return [[text] for text in own]
    extra = [prompt_texts(class_synonyms) for class_synonyms in synonyms]
    classes_of_text = Counter(t for text, texts in zip(own, extra, strict=True) for t in {text, *texts})
    return [
        [text, *(t for t in texts if t != text and classes_of_text[t] == 1)]
        for text, texts in zip(own, extra, strict=True)
    ]
