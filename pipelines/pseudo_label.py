"""The pseudo-label stage (OWL-ST's data engine) as Ray actors: a trained detector labels
image-text samples with boxes for the names their captions mention, written as a detection source
that ``ovdet train`` mixes like any other.

Plan: every shard of the input folder's image-text sources becomes one output shard (same order),
``pseudo-SOURCE/pseudo-SOURCE-NNNNNN.tar``. Each Ray actor loads the model once and labels whole
shards; a finished shard leaves a ``.done.json`` sidecar whose fingerprint covers the input shard's
checksum, the model's weights and every setting, so re-running the command skips finished shards
(checked on the driver, before any model loads) and redoes changed ones.

The rule (``PseudoLabelConfig``), per image:

1. queries: the names the caption mentions (the image-text record's labels) plus ``negatives``
   other names of the input vocabulary (the manifest's name pool), drawn from ``(seed, key)``;
2. detect with class-agnostic NMS (``nms_iou``): each region keeps only its best-scoring query;
3. keep a region if its query is one of the caption's names and its score >= ``threshold``;
4. per caption name, at most ``top_k`` regions (highest scores first).

A sample is rejected, with its reason in ``rejected.jsonl``, when its caption names nothing to query
or when no region passes: a detection record with no box would teach that the named objects are
absent. Counts balance as in ``ovdet shard``: read = written + rejected. Every written box carries
its score, and the manifest the model, its weights' SHA-256 and the rule's settings (provenance).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ovdet.pipelines.shard import finished_shard, ray_session, sidecar_of
from ovdet.pipelines.shard_report import reason_counts

from ovdet.config import PseudoLabelConfig
from ovdet.data.records import Phrase, Record
from ovdet.data.shards import MANIFEST, REJECTED, index_tar, read_manifest, read_member, write_tar_atomic
from ovdet.errors import OvdetError
from ovdet.fileio import sha256_file, write_json_atomic, write_jsonl_atomic

log = logging.getLogger(__name__)
PREFIX = "pseudo-"


@dataclass
class LabelPlan:
    """One input shard to label into one output shard."""

    source: str  # the input image-text source
    input_path: str  # absolute
    input_sha256: str
    path: str  # relative to the output folder
    fingerprint: str = ""


def plan_labels(shard_dir: Path, sources: list[str]) -> tuple[dict[str, Any], list[LabelPlan], list[str]]:
    """(input manifest, one plan per input shard, the vocabulary pool) of the image-text sources."""
    manifest = read_manifest(shard_dir)
    image_text = {name: s for name, s in manifest["sources"].items() if s["kind"] == "image_text"}
    unknown = [name for name in sources if name not in manifest["sources"]]
    wrong = [name for name in sources if name in manifest["sources"] and name not in image_text]
    if unknown or wrong:
        raise OvdetError(f"{shard_dir / MANIFEST}: " + "; ".join(
            [f"no source {name!r} (has {sorted(manifest['sources'])})" for name in unknown]
            + [f"source {name!r} is {manifest['sources'][name]['kind']}, not image_text" for name in wrong]))
    chosen = sources or sorted(image_text)
    if not chosen:
        found = ", ".join(f"{n} ({s['kind']})" for n, s in manifest["sources"].items())
        raise OvdetError(f"{shard_dir / MANIFEST}: no image_text source to pseudo-label (sources: {found})")
    plans, pool = [], set()
    for name in chosen:
        pool.update(image_text[name]["names"])
        for index, shard in enumerate(image_text[name]["shards"]):
            out = f"{PREFIX}{name}/{PREFIX}{name}-{index:06d}.tar"
            plans.append(LabelPlan(name, str((shard_dir / shard["path"]).resolve()), shard["sha256"], out))
    return manifest, plans, sorted(pool)


def model_identity(model: str) -> dict[str, str]:
    """The model as given and the SHA-256 of its weights (what the fingerprint and provenance hold)."""
    from ovdet.infer import model_weights_file

    try:
        weights = model_weights_file(model)
    except OvdetError as exc:
        raise OvdetError(f"{exc}; pseudo-label needs a trained model (a training folder, its final/, a published "
                         "folder or hf:FOLDER)") from None
    return {"model": str(model), "weights_sha256": sha256_file(weights)}


# What a written record holds; raised when that changes, so a re-run relabels finished shards.
# 2: the caption's names are kept as phrases (the loader never samples them as negatives).
LABEL_FORMAT = 2


def fingerprint(plan: LabelPlan, identity: dict[str, str], cfg: PseudoLabelConfig, pool: list[str]) -> str:
    payload = json.dumps([plan.input_sha256, plan.source, identity["weights_sha256"], rule_settings(cfg), pool,
                          LABEL_FORMAT], sort_keys=True).encode()  # fmt: skip
    return hashlib.sha256(payload).hexdigest()


def rule_settings(cfg: PseudoLabelConfig) -> dict[str, Any]:
    """What decides the labels (not how the stage runs)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("ray_address", "num_workers", "threads")}


def query_names(record: Record, pool: list[str], negatives: int, seed: int) -> tuple[list[str], list[str]]:
    """(caption names, negatives): the negatives drawn from the pool without the caption's names, from
    a generator seeded by (seed, key), so a sample's queries do not depend on its shard or worker."""
    names = record.caption_labels()
    rng = random.Random(f"{seed}:{record.key}")
    others = [name for name in pool if name not in set(names)]
    return names, rng.sample(others, min(negatives, len(others)))


def caption_phrases(record: Record, names: list[str]) -> list[Phrase]:
    """The caption's names as phrases without boxes: the image shows each of them, boxed or not, so
    the loader never samples one as a negative (``ovdet.data.loader.negatives_of``)."""
    if record.phrases:
        return [Phrase(p.text, list(p.spans), []) for p in record.phrases]
    return [Phrase(name, [], []) for name in names]


def select(detections, names: list[str], threshold: float, top_k: int):
    """Rule steps 3 and 4 on one image's detections (already one query per region)."""
    kept = []
    for name in names:
        mine = sorted((d for d in detections if d.label == name and d.score >= threshold), key=lambda d: -d.score)
        kept.extend(mine[:top_k])
    return kept


class Labeller:
    """A Ray actor body: the detector loaded once, then whole shards labelled."""

    def __init__(self, model: str, cfg: PseudoLabelConfig, pool: list[str], identity: dict[str, str]):
        from ovdet.infer import load_detector

        self.detector = load_detector(model, cfg.threads)
        self.cfg, self.pool, self.identity = cfg, pool, identity

    def label_shard(self, plan: LabelPlan, out_dir: str) -> dict[str, Any]:
        cfg = self.cfg
        source = f"{PREFIX}{plan.source}"
        samples, rejected, names_written, boxes = [], [], set(), 0
        records = list(read_shard(Path(plan.input_path)))
        for record, jpeg in records:
            names, kept = self.label_sample(record, jpeg)
            if isinstance(kept, str):  # the image does not decode
                rejected.append(rejection(plan, record, kept))
                continue
            if not names:
                rejected.append(rejection(plan, record, "empty caption: it names nothing to look for"))
                continue
            if not kept:
                rejected.append(rejection(plan, record, f"no box above threshold: none scores >= {cfg.threshold} "
                                                        f"for {', '.join(names)}"))  # fmt: skip
                continue
            out = Record(
                key=record.key, source=source, kind="detection", width=record.width, height=record.height,
                boxes=[[round(v, 2) for v in d.box_xyxy] for d in kept], category_ids=[-1] * len(kept),
                category_names=[d.label for d in kept], is_crowd=[0] * len(kept), caption=record.caption,
                phrases=caption_phrases(record, names),
                meta={**record.meta, "pseudo_label": {"from": plan.source, "scores": [round(d.score, 5) for d in kept],
                                                      **self.identity, "threshold": cfg.threshold}},
            )  # fmt: skip
            samples.append((record.key, jpeg, out.to_json()))
            names_written.update(out.category_names)
            boxes += len(kept)
        target = Path(out_dir) / plan.path
        write_tar_atomic(target, samples)
        entry = {"path": plan.path, "count": len(samples), "read": len(records), "bytes": target.stat().st_size,
                 "sha256": sha256_file(target), "fingerprint": plan.fingerprint, "rejected": rejected,
                 "boxes_written": boxes, "names": sorted(names_written)}  # fmt: skip
        write_json_atomic(sidecar_of(target), entry, ensure_ascii=True)
        return entry

    def label_sample(self, record: Record, jpeg: bytes) -> tuple[list[str], list | str]:
        """(caption names, the detections kept, or why the image cannot be read). One detect call
        per sample: each sample has its own queries."""
        from ovdet.data.images import decode, to_rgb
        from ovdet.errors import RecordError
        from ovdet.infer import MAX_IMAGE_PIXELS

        names, negatives = query_names(record, self.pool, self.cfg.negatives, self.cfg.seed)
        if not names:
            return names, []
        try:
            image = to_rgb(decode(record.key, jpeg, MAX_IMAGE_PIXELS)[0])
        except RecordError as exc:
            return names, exc.reason
        (found,) = self.detector.detect([image], names + negatives, templates=self.cfg.prompt_templates,
                                        score_threshold=self.cfg.threshold, top_k=self.cfg.max_regions,
                                        nms="agnostic", nms_iou=self.cfg.nms_iou)  # fmt: skip
        return names, select(found, names, self.cfg.threshold, self.cfg.top_k)


def read_shard(path: Path):
    """``(record, jpeg bytes)`` of every sample of a shard, each member checked against its CRC."""
    with open(path, "rb") as stream:
        for location in index_tar(path):
            jpeg = read_member(stream, path, location, "jpg")
            yield Record.from_json(json.loads(read_member(stream, path, location, "json"))), jpeg


def rejection(plan: LabelPlan, record: Record, reason: str) -> dict[str, str]:
    return {"source": plan.source, "shard": plan.input_path, "key": record.key, "reason": reason}


def check_model_vocabulary(model: str, pool: list[str], cfg: PseudoLabelConfig) -> None:
    """Load the model on the driver and encode the whole name pool once: a model that cannot encode
    the vocabulary fails here in one line, before any worker starts."""
    from ovdet.infer import Detector

    detector = Detector.from_pretrained(model)
    if getattr(detector.model, "fuses_text", False):
        return  # reads the names in its prompt: nothing to encode ahead
    try:
        embeddings = detector.class_embeddings(pool, cfg.prompt_templates)
    except Exception as exc:  # noqa: BLE001 -- any failure of the text tower is the same user error
        raise OvdetError(f"{model}: cannot encode the vocabulary of the shards ({len(pool)} names, e.g. "
                         f"{pool[:3]}): {type(exc).__name__}: {exc}") from None
    if not bool(embeddings.isfinite().all()):
        raise OvdetError(f"{model}: encodes the vocabulary of the shards to non-finite embeddings")


def run_pseudo_label_stage(model: str, shard_dir: Path, out_dir: Path, cfg: PseudoLabelConfig,
                           sources: list[str] = (), overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Pseudo-label the image-text sources of ``shard_dir`` into ``out_dir``; returns the manifest."""
    shard_dir, out_dir = Path(shard_dir), Path(out_dir)
    input_manifest, plans, pool = plan_labels(shard_dir, list(sources))
    identity = model_identity(model)
    for plan in plans:
        plan.fingerprint = fingerprint(plan, identity, cfg, pool)
    check_output_folder(out_dir, identity, cfg, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = {plan.path: entry for plan in plans if (entry := finished_shard(out_dir / plan.path, plan.fingerprint))}
    todo = [plan for plan in plans if plan.path not in entries]
    if todo:
        check_model_vocabulary(model, pool, cfg)
        entries |= run_actors(todo, out_dir, model, cfg, pool, identity, progress)
    manifest = build_manifest(input_manifest, plans, entries, identity, cfg, shard_dir)
    rows = [row for plan in plans for row in entries[plan.path]["rejected"]]
    write_jsonl_atomic(out_dir / REJECTED, rows, sort_keys=True, ensure_ascii=True)
    write_json_atomic(out_dir / MANIFEST, manifest, ensure_ascii=True)
    return manifest


def check_output_folder(out_dir: Path, identity: dict[str, str], cfg: PseudoLabelConfig, overwrite: bool) -> None:
    if overwrite or not (out_dir / MANIFEST).exists():
        return
    stored = read_manifest(out_dir).get("pseudo_label") or {}
    if stored.get("weights_sha256") != identity["weights_sha256"] or stored.get("rule") != rule_settings(cfg):
        raise OvdetError(f"{out_dir}: holds pseudo-labels of another model or rule; pass --overwrite to replace them")


def run_actors(plans: list[LabelPlan], out_dir: Path, model: str, cfg: PseudoLabelConfig, pool: list[str],
               identity: dict[str, str], progress: bool) -> dict[str, dict]:
    """One actor per worker (``num_workers``, one CPU each), each labelling whole shards in turn."""
    from tqdm import tqdm

    with ray_session(cfg) as ray:  # imports ray after setting what its import reads
        from ray.util import ActorPool

        actor = ray.remote(num_cpus=1)(Labeller)
        workers = [actor.remote(model, cfg, pool, identity) for _ in range(min(cfg.num_workers, len(plans)))]
        entries = {}
        with tqdm(total=len(plans), desc="pseudo-label", unit="shard", disable=not progress) as bar:
            label = lambda worker, plan: worker.label_shard.remote(plan, str(out_dir.resolve()))  # noqa: E731
            for entry in ActorPool(workers).map_unordered(label, plans):
                entries[entry["path"]] = entry
                bar.update(1)
        return entries


def build_manifest(input_manifest: dict[str, Any], plans: list[LabelPlan], entries: dict[str, dict],
                   identity: dict[str, str], cfg: PseudoLabelConfig, shard_dir: Path) -> dict[str, Any]:
    """The shard manifest ``ovdet train`` reads (one detection source per input source), with provenance."""
    sources = {}
    for name in dict.fromkeys(plan.source for plan in plans):
        mine = [entries[plan.path] for plan in plans if plan.source == name]
        rows = [row for entry in mine for row in entry["rejected"]]
        entry = {
            "kind": "detection", "format": "pseudo-label", "weight": cfg.weight,
            "read": sum(e["read"] for e in mine), "written": sum(e["count"] for e in mine), "rejected": len(rows),
            "boxes_read": 0, "boxes_written": sum(e["boxes_written"] for e in mine), "boxes_rejected": 0,
            "annotations_dropped": 0, "clipped_boxes": 0,
            "reasons": reason_counts(rows), "names": sorted({n for e in mine for n in e["names"]}),
            "shards": [{k: e[k] for k in ("path", "count", "bytes", "sha256")} for e in mine],
            "pseudo_label_of": name,
        }  # fmt: skip
        if entry["read"] != entry["written"] + entry["rejected"]:
            raise RuntimeError(f"source {name}: read {entry['read']} != written {entry['written']} + rejected {entry['rejected']}")
        if entry["read"] != input_manifest["sources"][name]["written"]:
            raise RuntimeError(f"source {name}: read {entry['read']} of the {input_manifest['sources'][name]['written']} "
                               "samples its manifest lists")
        sources[f"{PREFIX}{name}"] = entry
    return {"version": 1, "config": {}, "sources": sources,
            "pseudo_label": {**identity, "rule": rule_settings(cfg), "input": str(shard_dir.resolve())}}  # fmt: skip
