"""The training loader: mixes shard sets by weight, decodes, letterboxes, samples vocabularies.

The sample stream is a deterministic function of (seed, global sample index k): block ``b`` of
the stream draws, for each position, a source with probability proportional to its weight and
takes that source's next sample from a seeded permutation. Global batch ``g`` is
``stream[g*G : (g+1)*G]`` with ``G = batch_size * world_size``; rank ``r`` reads its slice, so
ranks and DataLoader workers never see the same sample, and augmentation is seeded by ``k``,
so the result does not depend on how the batch is split. The loader's whole state is the
number of global samples consumed: saving and restoring it resumes exactly. A sample's texts are
its positives, then negatives from its source's pool (LVIS federated images: its verified-absent names).

Augmentation (``ovdet.data.augment``, docs/augmentation.md; off by default, and then the samples are
those of before it existed): multi-scale sizes drawn per global batch, Mosaic and MixUp with partners
drawn from k's block of the stream, HSV jitter. They draw from streams of their own, seeded by (seed, k)
or (seed, global batch), and leave the sample's own draws as they were: the state above still resumes exactly.
"""

from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ovdet.config import LoaderConfig
from ovdet.data.augment import (
    augment_rng,
    batch_input_size,
    blend,
    hsv_jitter,
    merge_texts,
    mosaic_centre,
    mosaic_offset,
    paste,
    place_boxes,
)
from ovdet.data.letterbox import boxes_to_letterbox, letterbox, stretch
from ovdet.data.prompts import prompt_name, prompt_texts
from ovdet.data.records import Record
from ovdet.data.shards import SampleLocation, checked_member, index_tar, read_manifest
from ovdet.errors import OvdetError


@dataclass
class ShardSet:
    """One source's shards as listed by a manifest."""

    name: str
    kind: str
    weight: float
    shards: list[Path]
    names: list[str]


def open_shard_sets(shard_dirs: list[Path], cfg: LoaderConfig) -> list[ShardSet]:
    sets = []
    for shard_dir in shard_dirs:
        for name, source in read_manifest(shard_dir)["sources"].items():
            if cfg.sources and name not in cfg.sources:
                continue
            weight = cfg.source_weights.get(name, source["weight"])
            shards = [Path(shard_dir) / s["path"] for s in source["shards"] if s["count"] > 0]
            if weight > 0 and shards:
                sets.append(ShardSet(name, source["kind"], weight, shards, source["names"]))
    missing = set(cfg.sources) - {s.name for s in sets}
    if missing:
        raise OvdetError(f"loader.sources: {sorted(missing)} not found (or empty) in {[str(d) for d in shard_dirs]}")
    if not sets:
        raise OvdetError(f"no samples to train on in {[str(d) for d in shard_dirs]}")
    return sets


class MixedSampleStream:
    """Maps a global sample index k to ``(set_index, sample_index)``, deterministically."""

    def __init__(self, sizes: list[int], weights: list[float], seed: int):
        self.sizes = sizes
        self.probabilities = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.seed = seed
        self.block_size = int(sum(sizes))
        self.blocks: OrderedDict[int, np.ndarray] = OrderedDict()

    def locate(self, k: int) -> tuple[int, int]:
        block, position = divmod(k, self.block_size)
        set_index, sample_index = self.block(block)[position]
        return int(set_index), int(sample_index)

    def block(self, b: int) -> np.ndarray:
        if b not in self.blocks:
            self.blocks[b] = self.make_block(b)
            if len(self.blocks) > 2:
                self.blocks.popitem(last=False)
        return self.blocks[b]

    def make_block(self, b: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, b])
        draws = rng.choice(len(self.sizes), size=self.block_size, p=self.probabilities)
        out = np.zeros((self.block_size, 2), dtype=np.int64)
        out[:, 0] = draws
        for s, size in enumerate(self.sizes):
            positions = np.flatnonzero(draws == s)
            repeats = -(-len(positions) // size) if len(positions) else 0
            order = np.concatenate([rng.permutation(size) for _ in range(repeats)] or [np.zeros(0, np.int64)])
            out[positions, 1] = order[: len(positions)]
        return out


PARTNER_DRAWS = 32  # stream draws per Mosaic/MixUp partner before the sample stays as it is


class ShardSampleDataset(Dataset):
    """Random access to shard samples by global stream index (see module docstring).
    ``global_batch_size`` (batch_size x world_size) ties multi-scale sizes to global batches."""

    def __init__(self, sets: list[ShardSet], cfg: LoaderConfig, global_batch_size: int | None = None):
        self.sets = sets
        self.cfg = cfg
        self.global_batch_size = global_batch_size or cfg.batch_size
        self.has_boxes = [s.kind != "image_text" for s in sets]
        self.locations: list[list[tuple[Path, SampleLocation]]] = [
            [(shard, loc) for shard in s.shards for loc in index_tar(shard)] for s in sets
        ]
        self.stream = MixedSampleStream([len(x) for x in self.locations], [s.weight for s in sets], cfg.seed)
        self.pools = [texts_of(s.names, s.kind) for s in sets]  # once: image-text pools run to millions
        self.file_descriptors: dict[Path, int] = {}

    def __len__(self) -> int:  # the stream is infinite; one "epoch" is one block
        return self.stream.block_size

    def read(self, set_index: int, sample_index: int) -> tuple[bytes, Record]:
        """The sample's JPEG bytes and record, each checked against its size and CRC-32 (``checked_member``).

        Raises:
            OvdetError: naming the shard and the sample, when the shard was deleted before this process
                opened it, or cut, changed or replaced after it was indexed.
        """
        shard, loc = self.locations[set_index][sample_index]
        try:
            if shard not in self.file_descriptors:
                self.file_descriptors[shard] = os.open(shard, os.O_RDONLY)
            # pread, not seek + read: DataLoader workers forked after this process opened a shard share
            # its file offset, and seeks racing between workers returned another sample's bytes
            fd = self.file_descriptors[shard]
            jpeg = os.pread(fd, loc.jpg_size, loc.jpg_offset)
            text = os.pread(fd, loc.json_size, loc.json_offset)
        except OSError as exc:
            raise OvdetError(f"{shard}: sample {loc.key}: cannot read the shard: {exc.strerror or exc}") from None
        checked_member(shard, loc.key, "jpg", jpeg, loc.jpg_size, loc.jpg_crc32)
        checked_member(shard, loc.key, "json", text, loc.json_size, loc.json_crc32)
        try:
            return jpeg, Record.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise OvdetError(f"{shard}: sample {loc.key}: unreadable record: {exc}") from None

    def __getitem__(self, k: int) -> dict[str, Any]:
        set_index, sample_index = self.stream.locate(k)
        jpeg, record = self.read(set_index, sample_index)
        rng = np.random.default_rng([self.cfg.seed, 7, k])
        size = self.input_size(k)
        if not is_augmenting(self.cfg):
            return build_sample(jpeg, record, self.pools[set_index], self.cfg, rng, size)
        return self.augmented_sample(k, jpeg, record, self.pools[set_index], rng, size)

    def input_size(self, k: int) -> int:
        if not self.cfg.multiscale_sizes:
            return self.cfg.image_size
        return batch_input_size(self.cfg.multiscale_sizes, self.cfg.seed, k, self.global_batch_size)

    def augmented_sample(
        self, k: int, jpeg: bytes, record: Record, pool: list[str], rng, size: int
    ) -> dict[str, Any]:
        """``build_sample`` plus Mosaic, MixUp (samples with boxes only) and HSV jitter, each drawn
        from k's augmentation stream; the sample's own ``rng`` draws as in ``build_sample``."""
        cfg, augment = self.cfg, augment_rng(self.cfg.seed, k)
        chances = [cfg.mosaic_probability, cfg.mixup_probability, cfg.photometric_probability]
        is_mosaic, is_mixup, is_photometric = (augment.random(3) < chances).tolist()
        part = render_part(jpeg, record, cfg, size, rng)
        if is_mosaic and record.kind != "image_text":
            part = self.mosaic(part, k, augment, size)
        if is_mixup and record.kind != "image_text":
            part = self.mixup(part, k, augment, size)
        texts = texts_of_part(part, pool, cfg, rng)
        pixels = hsv_jitter(part.pixels, cfg.hsv_gains, augment) if is_photometric else part.pixels
        return sample_of_part(part, pixels, texts)

    def has_boxes_at(self, k: int) -> bool:
        return self.has_boxes[self.stream.locate(k)[0]]

    def partners(self, k: int, rng, count: int) -> list[int]:
        """``count`` stream indices other than ``k`` whose samples have boxes, uniform over k's
        block (the weighted mix: source weights hold); [] when ``PARTNER_DRAWS`` draws per partner
        find too few (a stream of nearly only image-text samples)."""
        start, found = k - k % self.stream.block_size, []
        for _ in range(PARTNER_DRAWS * count):
            j = start + int(rng.integers(self.stream.block_size))
            if j != k and self.has_boxes_at(j):
                found.append(j)
                if len(found) == count:
                    return found
        return []

    def render_at(self, j: int, rng, size: int) -> Part:
        jpeg, record = self.read(*self.stream.locate(j))
        return render_part(jpeg, record, self.cfg, size, rng)

    def mosaic(self, part: Part, k: int, rng, size: int) -> Part:
        """``part`` and three partners on a 2x2 layout (``mosaic_of``); ``part`` alone when none are found."""
        partners = self.partners(k, rng, 3)
        if not partners:
            return part
        return mosaic_of([part, *(self.render_at(j, rng, size) for j in partners)], size, rng)

    def mixup(self, part: Part, k: int, rng, size: int) -> Part:
        """``part`` blended with a partner's image by a Beta(mixup_alpha, mixup_alpha) ratio (YOLOv5),
        with the boxes and positive texts of both."""
        partners = self.partners(k, rng, 1)
        if not partners:
            return part
        other = self.render_at(partners[0], rng, size)
        ratio = rng.beta(self.cfg.mixup_alpha, self.cfg.mixup_alpha)
        pixels = blend(part.pixels, other.pixels, ratio)
        return merge_parts([part, other], pixels, [part.boxes, other.boxes], [part.labels, other.labels])


def is_augmenting(cfg: LoaderConfig) -> bool:
    """Whether samples take the augmented path (multi-scale alone does not: it only sets the size)."""
    return max(cfg.mosaic_probability, cfg.mixup_probability, cfg.photometric_probability) > 0


@dataclass
class Part:
    """One record on a ``size`` canvas, or several merged by Mosaic or MixUp: a sample before its texts.

    Attributes:
        pixels: [S, S, 3] uint8 canvas.
        extent: ``(w, h)`` of the image at the canvas's top-left (the rest is padding); S x S when merged.
        boxes: [N, 4] normalized cxcywh of the canvas.
        labels: [N] index of each box's text in ``positives``.
        positives: the distinct positive texts.
        records: the records shown, the sample's own first.
    """

    pixels: np.ndarray
    extent: tuple[int, int]
    boxes: torch.Tensor
    labels: list[int]
    positives: list[str]
    records: list[Record]


def build_sample(
    jpeg: bytes, record: Record, pool: list[str], cfg: LoaderConfig, rng, size: int | None = None
) -> dict[str, Any]:
    """Decode + augment one record on a ``size`` canvas (default ``cfg.image_size``) and build its
    text list (positives first, then negatives from ``pool``, the distinct texts of its source's
    manifest names: ``texts_of``)."""
    part = render_part(jpeg, record, cfg, size or cfg.image_size, rng)
    return sample_of_part(part, part.pixels, texts_of_part(part, pool, cfg, rng))


def render_part(jpeg: bytes, record: Record, cfg: LoaderConfig, size: int, rng) -> Part:
    """Decode, scale-jitter, flip and fit (``cfg.resize``) one record onto a ``size`` canvas."""
    scale_factor = rng.uniform(cfg.min_scale, 1.0)
    flip = bool(rng.random() < cfg.hflip_probability)
    fit = stretch if cfg.resize == "stretch" else letterbox
    image = Image.open(io.BytesIO(jpeg))
    width, height = image.size  # before fit: its draft mode shrinks the image in place
    pixels, scale = fit(image, size, scale_factor, flip)
    positives, box_labels, keep = positives_of(record)
    boxes = np.asarray(record.boxes, dtype=np.float32).reshape(-1, 4)[keep]
    flip_width = record.width * np.ravel(scale)[0] if flip else None
    boxes = boxes_to_letterbox(boxes, scale, size, flip_width)
    return Part(pixels, resized_extent(width, height, scale), boxes, box_labels, positives, [record])


def resized_extent(width: int, height: int, scale: float | np.ndarray) -> tuple[int, int]:
    """The image's size on the canvas, as ``letterbox`` (one ``scale``) and ``stretch`` (per axis)
    round it."""
    scale_x, scale_y = (scale, scale) if np.ndim(scale) == 0 else np.ravel(scale)[:2]
    return max(1, round(width * scale_x)), max(1, round(height * scale_y))


def texts_of_part(part: Part, pool: list[str], cfg: LoaderConfig, rng) -> list[str]:
    """Positives, then negatives for every record shown (``negatives_of``), in prompt templates;
    a merged part's negatives are templated as its first record's kind says."""
    negatives = negatives_of(part.records, part.positives, pool, cfg, rng)
    phrases = set().union(*(positives_of(r)[0] for r in part.records if r.kind == "grounding"))
    is_phrase = [text in phrases for text in part.positives]
    is_phrase += [part.records[0].kind == "grounding"] * len(negatives)
    return apply_templates(part.positives + negatives, is_phrase, cfg, rng)


def sample_of_part(part: Part, pixels: np.ndarray, texts: list[str]) -> dict[str, Any]:
    """The sample dict of the batch contract; key and kind are the sample's own record's."""
    record = part.records[0]
    is_image_text = record.kind == "image_text"
    image_labels = torch.arange(len(part.positives)) if is_image_text else torch.zeros(0, dtype=torch.long)
    return {
        # numpy's transpose copy: torch's permute().contiguous() on uint8 is ~100x slower with >1 thread
        "image": torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
        "texts": texts,
        "labels": torch.as_tensor(part.labels, dtype=torch.long),
        "boxes": part.boxes,
        "image_labels": image_labels,
        "has_boxes": not is_image_text,
        "key": record.key,
        "kind": record.kind,
    }


def mosaic_of(parts: list[Part], size: int, rng) -> Part:
    """Four parts around a random centre of a ``size`` canvas, in random quadrants (YOLOv5's
    ``load_mosaic`` without its affine step); boxes moved and clipped, the hidden ones dropped
    (``place_boxes``)."""
    centre, positions = mosaic_centre(size, rng), rng.permutation(4).tolist()
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    boxes, labels = [], []
    for part, position in zip(parts, positions, strict=True):
        width, height = part.extent
        offset = mosaic_offset(position, part.extent, centre)
        paste(canvas, part.pixels[:height, :width], offset)
        placed, keep = place_boxes(part.boxes.numpy(), offset, size)
        boxes.append(torch.from_numpy(placed[keep]))
        labels.append([label for label, kept in zip(part.labels, keep.tolist(), strict=True) if kept])
    return merge_parts(parts, canvas, boxes, labels)


def merge_parts(
    parts: list[Part], pixels: np.ndarray, boxes: list[torch.Tensor], labels: list[list[int]]
) -> Part:
    """``parts`` shown on one ``pixels`` canvas with their ``boxes`` [N_i, 4] (normalized cxcywh) and
    ``labels`` on it: positives merged, labels remapped to them, records in ``parts`` order."""
    positives, labels = merge_texts([p.positives for p in parts], labels)
    boxes = torch.cat([b.to(torch.float32) for b in boxes]).reshape(-1, 4)
    size = pixels.shape[0]
    return Part(pixels, (size, size), boxes, labels, positives, [r for p in parts for r in p.records])


def texts_of(names: list[str], kind: str) -> list[str]:
    """The distinct texts of a record's or a pool's ``names``: grounding phrases as written (they are
    caption text), category names and caption labels as prompt texts (``prompt_name``)."""
    return list(dict.fromkeys(names)) if kind == "grounding" else prompt_texts(names)


def positives_of(record: Record) -> tuple[list[str], list[int], np.ndarray]:
    """Positive texts, each kept box's index into them, and the mask of boxes kept."""
    if record.kind == "image_text":
        return prompt_texts(record.caption_labels()), [], np.zeros(len(record.boxes), dtype=bool)
    if record.kind == "grounding":
        names = list(record.category_names)
        for phrase in record.phrases:
            for index in phrase.box_indices:
                names[index] = phrase.text
    else:
        names = [prompt_name(name) for name in record.category_names]
    crowd = record.is_crowd or [0] * len(names)
    keep = np.array([not c for c in crowd], dtype=bool)
    positives = list(dict.fromkeys(n for n, k in zip(names, keep, strict=True) if k))
    labels = [positives.index(n) for n, k in zip(names, keep, strict=True) if k]
    return positives, labels, keep


def overlaps_any(name: str, phrases: list[str]) -> bool:
    """True when ``name`` holds one of ``phrases`` as whole words, or one of them holds ``name``:
    such a name is not a safe negative for an image that the phrase describes."""
    padded = f" {name} "
    return any(f" {phrase} " in padded or padded in f" {phrase} " for phrase in phrases)


def negatives_of(
    records: list[Record], positives: list[str], pool: list[str], cfg: LoaderConfig, rng
) -> list[str]:
    """Up to ``cfg.num_negatives`` texts for an image showing ``records`` (one, or a Mosaic's or
    MixUp's several), none a positive's, a crowd box's or a caption phrase's of any of them: from ``pool``, or, when some
    have federated labels (``meta["federated"]``), as ``federated_negatives`` says."""
    exclude = set(positives).union(*(texts_of(r.category_names, r.kind) for r in records))
    # what a caption names is in the image, boxed or not (a pseudo-labelled caption name left without a
    # box): never a negative
    exclude = exclude.union(*(texts_of([p.text for p in r.phrases], r.kind) for r in records))
    federated = [r for r in records if r.meta.get("federated")]
    if federated:
        return federated_negatives(federated, exclude, pool, cfg, rng)
    # chunked caption phrases overlap: "red heart" is no negative for "red heart on a mat"
    overlapping = positives if records[0].kind == "image_text" else []
    return sample_negatives(pool, exclude, cfg.num_negatives, rng, overlapping)


def federated_negatives(
    records: list[Record], exclude: set[str], pool: list[str], cfg: LoaderConfig, rng
) -> list[str]:
    """LVIS checked only some categories per image, so only the names verified absent (``negatives``) in
    every one of ``records`` are negatives, a seeded subset beyond ``num_negatives``: another image's
    category may be here unboxed. ``federated_negatives: pool`` fills up from ``pool``, never with a
    not-exhaustive category of any of them."""
    exclude = exclude.union(*(prompt_texts(r.meta.get("not_exhaustive_categories", [])) for r in records))
    verified = sample_negatives(verified_absent(records), exclude, cfg.num_negatives, rng)
    missing = cfg.num_negatives - len(verified)
    if cfg.federated_negatives == "verified" or missing <= 0:
        return verified
    return verified + sample_negatives(pool, exclude | set(verified), missing, rng)


def verified_absent(records: list[Record]) -> list[str]:
    """The prompt texts of the names verified absent in every one of ``records``, in the first's order."""
    others = [set(prompt_texts(r.negatives)) for r in records[1:]]
    return [text for text in prompt_texts(records[0].negatives) if all(text in o for o in others)]


def sample_negatives(pool: list[str], exclude: set[str], count: int, rng, overlapping: list[str] = ()) -> list[str]:
    """``count`` names of ``pool`` (all when fewer), none in ``exclude`` nor overlapping a phrase of ``overlapping``."""
    candidates = [n for n in pool if n not in exclude and not (overlapping and overlaps_any(n, overlapping))]
    if len(candidates) <= count:
        return candidates
    return [candidates[i] for i in sorted(rng.choice(len(candidates), size=count, replace=False))]


def apply_templates(texts: list[str], is_phrase: list[bool], cfg: LoaderConfig, rng) -> list[str]:
    """Each text in a random prompt template with probability ``template_probability``; grounding
    phrases (``is_phrase``) never: they are already phrases of a caption. One vectorized draw per
    sample, none when every text is a phrase."""
    if all(is_phrase) or not cfg.prompt_templates:
        return list(texts)
    is_templated = (rng.random(len(texts)) < cfg.template_probability).tolist()
    choices = rng.integers(len(cfg.prompt_templates), size=len(texts)).tolist()
    return [
        cfg.prompt_templates[c].format(t) if templated and not phrase else t
        for t, templated, c, phrase in zip(texts, is_templated, choices, is_phrase, strict=True)
    ]


PACKED_KEYS = ("boxes", "labels", "image_labels")


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples for the trip from a worker: images stacked, and each variable-length field
    packed into one tensor plus sizes, because every tensor crossing the worker queue costs its own
    shared-memory segment (per-sample tensors made batches ~1.7x slower). ``unpack`` undoes it."""
    batch = {key: [s[key] for s in samples] for key in samples[0] if key != "image"}
    batch["images"] = stack_images([s["image"] for s in samples])
    batch["has_boxes"] = torch.tensor(batch["has_boxes"], dtype=torch.bool)
    for key in PACKED_KEYS:
        batch[f"{key}_sizes"] = [len(t) for t in batch[key]]
        batch[key] = torch.cat(batch[key])
    return batch


def unpack(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch contract: ``boxes``, ``labels``, ``image_labels`` as lists of per-sample tensors."""
    for key in PACKED_KEYS:
        batch[key] = list(torch.split(batch[key], batch.pop(f"{key}_sizes")))
    return batch


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """``[B, 3, S, S]``; inside a DataLoader worker written straight into shared memory (as
    ``default_collate`` does), so sending it to the main process copies nothing."""
    out = None
    if torch.utils.data.get_worker_info() is not None:
        out = torch.empty((len(images), *images[0].shape), dtype=images[0].dtype).share_memory_()
    return torch.stack(images, out=out)


class RankBatchSampler:
    """Yields this rank's slice of each global batch, from global batch ``start_batch`` on."""

    def __init__(self, batch_size: int, rank: int, world_size: int, start_batch: int, num_batches: int):
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.start_batch, self.num_batches = start_batch, num_batches

    def __iter__(self):
        global_batch = self.batch_size * self.world_size
        for g in range(self.start_batch, self.start_batch + self.num_batches):
            first = g * global_batch + self.rank * self.batch_size
            yield list(range(first, first + self.batch_size))

    def __len__(self) -> int:
        return self.num_batches


def worker_error(exc: OvdetError) -> OvdetError:
    """A DataLoader worker's user error as the worker raised it: torch re-raises it in this process
    with the worker's whole traceback folded into the message, and the CLI prints user errors in one line."""
    text = str(exc).rstrip()
    if not text.startswith("Caught OvdetError"):
        return exc
    return OvdetError(text.splitlines()[-1].split("OvdetError: ", 1)[-1])


class TrainLoader:
    """Stateful iterable of batches for one rank; ``state_dict`` is the global samples consumed."""

    def __init__(self, shard_dirs: list[Path], cfg: LoaderConfig, rank: int = 0, world_size: int = 1):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.sets = open_shard_sets(shard_dirs, cfg)
        self.dataset = ShardSampleDataset(self.sets, cfg, self.global_batch_size)
        self.batches_consumed = 0

    def iterate(self, num_batches: int):
        """Yield ``num_batches`` batches from the current position, advancing it."""
        sampler = RankBatchSampler(self.cfg.batch_size, self.rank, self.world_size, self.batches_consumed, num_batches)
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.cfg.num_workers,
            collate_fn=collate,
            persistent_workers=False,
            prefetch_factor=4 if self.cfg.num_workers else None,
            # Its own generator: creating the iterator must not draw from the global torch RNG
            # (dropout's), or a resumed run's RNG stream would diverge from an uninterrupted one.
            generator=torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.batches_consumed),
        )
        batches = iter(loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except OvdetError as exc:
                raise worker_error(exc) from None
            self.batches_consumed += 1
            yield unpack(batch)

    def state_dict(self) -> dict[str, int]:
        """Global samples consumed (not batches: those depend on batch size and world size) and the seed."""
        return {"samples_consumed": self.batches_consumed * self.global_batch_size, "seed": self.cfg.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.cfg.seed:
            raise OvdetError(f"loader state was saved with seed {state['seed']}, config has {self.cfg.seed}")
        if state["samples_consumed"] % self.global_batch_size:
            raise OvdetError(
                f"cannot resume loader state at sample {state['samples_consumed']}: not a multiple of "
                f"batch_size x world_size = {self.global_batch_size}"
            )
        self.batches_consumed = state["samples_consumed"] // self.global_batch_size

    @property
    def global_batch_size(self) -> int:
        return self.cfg.batch_size * self.world_size
