"""Vocabularies: the category names a detector is asked about, their ids and base/novel split.

``load_vocabulary(spec)`` accepts, in this order of precedence:

* a preset name: ``ov-coco`` (48 base / 17 novel COCO categories, OVR-CNN split) or ``lvis``
  (needs ``gt``, an LVIS v1 annotation dict: rare = novel, common + frequent = base);
* a YAML file (``.yaml``/``.yml``) in the format of ``docs/evaluation.md``;
* a text file with one name per line (blank lines and ``#`` comments skipped);
* an ad-hoc comma-separated string such as ``"cat,dog,red car"``.

For text files and ad-hoc strings, ids are 1..N in order, or the ids of the ``gt`` categories of
the same name when ``gt`` (a COCO dict) is given. ``novel`` (a list of names) overrides the split
of every source: listed names are novel, the others base. Every user error is an ``OvdetError``.
No torch here: the eval CLI path imports this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ovdet.errors import OvdetError
from ovdet.fileio import read_yaml, write_text_atomic

SPLITS = ("base", "novel")
LVIS_FREQUENCIES = ("r", "c", "f")
DEFAULT_PROMPTS = ["a photo of a {}."]
CATEGORY_KEYS = {"id", "name", "split", "synonyms", "frequency"}
TOP_LEVEL_KEYS = {"categories", "prompts"}

# OV-COCO (Bansal et al. 2018, used by OVR-CNN, ViLD, Detic): 65 COCO categories with real COCO ids.
OV_COCO_CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"),
    (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"),
    (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"), (38, "kite"),
    (41, "skateboard"), (42, "surfboard"), (44, "bottle"), (47, "cup"), (48, "fork"), (49, "knife"),
    (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"),
    (56, "broccoli"), (57, "carrot"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (65, "bed"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"),
    (75, "remote"), (76, "keyboard"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"),
    (90, "toothbrush"),
]  # fmt: skip
OV_COCO_NOVEL = [
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard",
    "skateboard", "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors",
]  # fmt: skip
PRESETS = ("ov-coco", "lvis")


@dataclass
class Category:
    """One category. ``frequency`` is the LVIS group ('r', 'c', 'f') or None outside LVIS."""

    id: int
    name: str
    split: str = "base"
    synonyms: list[str] = field(default_factory=list)
    frequency: str | None = None


@dataclass
class Vocabulary:
    """Categories in id order plus the prompt templates used to embed their names."""

    categories: list[Category]
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    _name_index: dict[str, Category] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    @property
    def ids(self) -> list[int]:
        return [c.id for c in self.categories]

    @property
    def base_ids(self) -> list[int]:
        return [c.id for c in self.categories if c.split == "base"]

    @property
    def novel_ids(self) -> list[int]:
        return [c.id for c in self.categories if c.split == "novel"]

    @property
    def has_frequencies(self) -> bool:
        return any(c.frequency for c in self.categories)

    def by_name(self, name: str) -> Category:
        """The category called ``name`` (or with it as a synonym), case and ``_``/space insensitive;
        a name wins over another category's synonym, then the first category in order."""
        if self._name_index is None:
            index: dict[str, Category] = {}
            for category in self.categories:
                index.setdefault(normalize_name(category.name), category)
            for category in self.categories:
                for synonym in category.synonyms:
                    index.setdefault(normalize_name(synonym), category)
            self._name_index = index
        category = self._name_index.get(normalize_name(name))
        if category is None:
            raise OvdetError(f"vocabulary: no category named {name!r}")
        return category

    def to_yaml(self, path: str | Path) -> None:
        """Write the vocabulary in the YAML format that ``load_vocabulary`` reads."""
        categories = [{k: v for k, v in asdict(c).items() if v is not None} for c in self.categories]
        text = yaml.safe_dump({"categories": categories, "prompts": self.prompts}, sort_keys=False)
        write_text_atomic(path, text)


def normalize_name(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def load_vocabulary(spec: str, novel: list[str] | None = None, gt: dict | None = None) -> Vocabulary:
    """Load a vocabulary from a preset name, a YAML file, a text file or a comma-separated string."""
    vocab = read_vocabulary_source(str(spec), gt)
    check_unique(vocab, str(spec))
    if novel is not None:
        apply_novel_names(vocab, novel, str(spec))
    return vocab


def read_vocabulary_source(spec: str, gt: dict | None) -> Vocabulary:
    if spec == "ov-coco":
        return ov_coco_vocabulary()
    if spec == "lvis":
        return lvis_vocabulary(gt)
    path = Path(spec)
    if path.is_file():
        if path.suffix in {".yaml", ".yml"}:
            return read_yaml_vocabulary(path)
        return names_vocabulary(read_name_lines(path), gt, str(path))
    if path.suffix in {".yaml", ".yml", ".txt"} or "/" in spec or path.is_dir():
        raise OvdetError(f"{spec}: vocabulary file not found (presets: {', '.join(PRESETS)})")
    return names_vocabulary([n.strip() for n in spec.split(",") if n.strip()], gt, "vocabulary string")


def ov_coco_vocabulary() -> Vocabulary:
    split = {name: "novel" for name in OV_COCO_NOVEL}
    return Vocabulary([Category(i, n, split.get(n, "base")) for i, n in OV_COCO_CATEGORIES])


def lvis_vocabulary(gt: dict | None) -> Vocabulary:
    """Rare categories are novel; the frequency ('r', 'c', 'f') is kept for APr/APc/APf."""
    if gt is None or "categories" not in gt:
        raise OvdetError("lvis: the LVIS preset needs the LVIS v1 annotations (gt) to read categories")
    categories = []
    for record in gt["categories"]:
        frequency = record.get("frequency")
        if frequency not in LVIS_FREQUENCIES:
            raise OvdetError(f"lvis: category {record.get('id')} has frequency {frequency!r}, expected r, c or f")
        split = "novel" if frequency == "r" else "base"
        synonyms = list(record.get("synonyms", []))
        categories.append(Category(int(record["id"]), record["name"], split, synonyms, frequency))
    return Vocabulary(sorted(categories, key=lambda c: c.id))


def read_name_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    names = [line for line in lines if line]
    if not names:
        raise OvdetError(f"{path}: vocabulary file has no names")
    return names


def names_vocabulary(names: list[str], gt: dict | None, source: str) -> Vocabulary:
    """Ids 1..N in order, or the ids of the same-named ``gt`` categories."""
    if not names:
        raise OvdetError(f"{source}: no category names given")
    if gt is None:
        return Vocabulary([Category(i + 1, name) for i, name in enumerate(names)])
    gt_ids = {normalize_name(c["name"]): int(c["id"]) for c in gt.get("categories", [])}
    missing = [name for name in names if normalize_name(name) not in gt_ids]
    if missing:
        raise OvdetError(f"{source}: names not among the GT categories: {', '.join(missing)}")
    return Vocabulary([Category(gt_ids[normalize_name(name)], name) for name in names])


def read_yaml_vocabulary(path: Path) -> Vocabulary:
    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise OvdetError(f"{path}: expected a mapping with a 'categories' list")
    unknown = set(data) - TOP_LEVEL_KEYS
    if unknown:
        raise OvdetError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (allowed: categories, prompts)")
    categories = [parse_category(entry, f"{path}: categories[{i}]") for i, entry in enumerate(data["categories"])]
    prompts = data.get("prompts", DEFAULT_PROMPTS)
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise OvdetError(f"{path}: 'prompts' must be a list of strings")
    return Vocabulary(categories, list(prompts))


def parse_category(entry: Any, where: str) -> Category:
    if not isinstance(entry, dict):
        raise OvdetError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = set(entry) - CATEGORY_KEYS
    if unknown:
        raise OvdetError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    category_id, name = entry.get("id"), entry.get("name")
    if not isinstance(category_id, int) or isinstance(category_id, bool):
        raise OvdetError(f"{where}: 'id' must be an integer, got {category_id!r}")
    if not isinstance(name, str) or not name.strip():
        raise OvdetError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    split = entry.get("split", "base")
    if split not in SPLITS:
        raise OvdetError(f"{where} ({name}): split must be 'base' or 'novel', got {split!r}")
    synonyms = entry.get("synonyms") or []
    if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
        raise OvdetError(f"{where} ({name}): 'synonyms' must be a list of strings")
    frequency = entry.get("frequency")
    if frequency is not None and frequency not in LVIS_FREQUENCIES:
        raise OvdetError(f"{where} ({name}): frequency must be r, c or f, got {frequency!r}")
    return Category(category_id, name.strip(), split, list(synonyms), frequency)


def check_unique(vocab: Vocabulary, source: str) -> None:
    seen_ids: set[int] = set()
    seen_names: set[str] = set()
    for category in vocab.categories:
        if category.id in seen_ids:
            raise OvdetError(f"{source}: duplicate category id {category.id} ({category.name})")
        if normalize_name(category.name) in seen_names:
            raise OvdetError(f"{source}: duplicate category name {category.name!r}")
        seen_ids.add(category.id)
        seen_names.add(normalize_name(category.name))


def apply_novel_names(vocab: Vocabulary, novel: list[str], source: str) -> None:
    """Listed names become novel, every other category base."""
    wanted = {normalize_name(name) for name in novel}
    known = {normalize_name(c.name) for c in vocab.categories}
    unknown = sorted(wanted - known)
    if unknown:
        raise OvdetError(f"{source}: novel names not in the vocabulary: {', '.join(unknown)}")
    for category in vocab.categories:
        category.split = "novel" if normalize_name(category.name) in wanted else "base"
