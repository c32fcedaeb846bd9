"""Caption -> noun phrases, for the image-level loss on image-text samples.

Detic extracts image labels by matching vocabulary names in captions; with a vocabulary we do
the same (longest name first, whole words). Without one, a rule-based chunker splits the caption
at punctuation and conjunctions and strips articles and counts: good for list-like captions
("a photo of a red circle, a blue star and a green heart."), and documented as a heuristic.
"""

from __future__ import annotations

import re

LEADING_WORDS = re.compile(
    r"^(?:(?:a|an|the|some|this|that|these|those|one|two|three|four|five|six|seven|eight|\d+)\s+)+",
    re.IGNORECASE,
)
PREFIXES = re.compile(r"^(?:a |an )?(?:photo|picture|image|drawing) of\s+", re.IGNORECASE)
SPLITTERS = re.compile(r"[,;.:!?]|\band\b|\bwith\b|\bnext to\b|\bnear\b", re.IGNORECASE)


def extract_caption_phrases(caption: str, vocabulary: list[str] | None = None) -> list[str]:
    """Distinct phrases named by ``caption``, in order of first mention."""
    if vocabulary:
        return match_vocabulary(caption, vocabulary)
    phrases = []
    for chunk in SPLITTERS.split(caption):
        phrase = LEADING_WORDS.sub("", PREFIXES.sub("", chunk.strip())).strip().lower()
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return phrases


def match_vocabulary(caption: str, vocabulary: list[str]) -> list[str]:
    """The vocabulary names ``caption`` mentions (a trailing plural "s" allowed), in order of first mention."""
    return [name for _, _, name in match_vocabulary_spans(caption, vocabulary)]


def match_vocabulary_spans(caption: str, vocabulary: list[str]) -> list[tuple[int, int, str]]:
    """``(start, end, name)`` of each name's first mention, sorted by position; a longer name wins
    over a shorter one inside it ("red circle" over "circle"), and one stretch of text names one name."""
    text = caption.lower()
    found: list[tuple[int, int, str]] = []
    taken = [False] * len(text)
    for name in sorted(set(vocabulary), key=len, reverse=True):
        for match in re.finditer(rf"\b{re.escape(name.lower())}s?\b", text):
            if not any(taken[match.start() : match.end()]):
                taken[match.start() : match.end()] = [True] * (match.end() - match.start())
                found.append((match.start(), match.end(), name))
                break
    return sorted(found)
