"""The shard stage as Ray tasks: plan -> load + validate + normalise -> write tar -> manifest.

``run_shard_stage(cfg, out_dir)`` reads every source on the driver (annotation files only),
partitions the valid records deterministically into shards of ``samples_per_shard``, and runs
one Ray task per shard that loads, validates and re-encodes images and writes the tar
atomically. A finished shard leaves a ``.done.json`` sidecar (its checksum and a fingerprint of
its records, settings and image files' size and mtime), so re-running the same command skips
the shards already written and redoes those whose images changed or appeared (a restored
image is retried). Counts and their checks are in ``pipelines/shard_report.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovdet.pipelines.shard_report import build_manifest, dry_run_summary, image_file_of, rejection_row

from ovdet.config import DataConfig, to_dict
from ovdet.data.records import Record
from ovdet.data.shards import (
    MANIFEST,
    REJECTED,
    read_manifest,
    write_tar_atomic,
)
from ovdet.errors import AnnotationError, OvdetError, RecordError
from ovdet.fileio import read_json, sha256_file, write_json_atomic, write_jsonl_atomic

log = logging.getLogger(__name__)


@dataclass
class ShardPlan:
    """One shard to write: which records go in it, and the settings that shape its bytes."""

    source: str
    kind: str
    path: str  # relative to the output folder
    records: list[dict[str, Any]]
    settings: dict[str, int]

    def fingerprint(self) -> str:
        """Records, settings and every image file's size and mtime: a shard is redone when any of
        them changes, so restoring a missing image (or fixing a corrupt one) is picked up."""
        files = [image_file_state(record) for record in self.records]
        payload = json.dumps([self.records, self.settings, files], sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()


def image_file_state(record: dict[str, Any]) -> list[Any]:
    """``[path, size, mtime_ns]``, or ``[path, None, None]`` when the file cannot be stat'ed."""
    path = image_file_of(record)
    try:
        stat = os.stat(path)
    except OSError:
        return [path, None, None]
    return [path, stat.st_size, stat.st_mtime_ns]


@dataclass
class SourcePlan:
    name: str
    kind: str
    format: str
    weight: float
    read: int = 0  # input records (images, lines, rows, tar samples)
    boxes_read: int = 0  # annotated boxes in them, valid or not
    boxes_rejected: int = 0  # boxes dropped alone or with their record while reading
    rejected: list[dict[str, str]] = field(default_factory=list)  # record and annotation rejections
    categories: list[dict[str, Any]] = field(default_factory=list)  # coco sources: the category table
    shards: list[ShardPlan] = field(default_factory=list)


def resolve_root(cfg: DataConfig, config_dir: Path | None) -> Path:
    root = Path(cfg.root) if cfg.root else Path(".")
    if not root.is_absolute() and config_dir is not None:
        root = config_dir / root
    return root.resolve()


def plan_shards(cfg: DataConfig, root: Path) -> list[SourcePlan]:
    """Read every source and split its valid records into shards, in file order."""
    from ovdet.data.sources import iter_source

    if not cfg.sources:
        raise OvdetError("data config lists no sources")
    names = [s.name for s in cfg.sources]
    if len(set(names)) != len(names) or not all(names):
        raise OvdetError(f"data config: source names must be unique and non-empty, got {names}")
    settings = {"max_side": cfg.max_image_side, "quality": cfg.jpeg_quality, "max_pixels": cfg.max_image_pixels}
    plans = []
    for source in cfg.sources:
        plan = SourcePlan(source.name, source.kind, source.format, source.weight)
        records: list[dict[str, Any]] = []
        categories: dict[int, dict[str, Any]] = {}
        for item in iter_source(source, root, categories=categories):
            plan.read += not isinstance(item, AnnotationError)
            if isinstance(item, RecordError):
                plan.rejected.append(rejection_row(source.name, item))
                plan.boxes_read += item.boxes
                plan.boxes_rejected += item.boxes
            else:
                records.append(record_to_plan_dict(item))
                plan.boxes_read += len(item.boxes)
        plan.categories = list(categories.values())
        size = cfg.samples_per_shard
        for index, start in enumerate(range(0, len(records), size)):
            path = f"{source.name}/{source.name}-{index:06d}.tar"
            plan.shards.append(ShardPlan(source.name, source.kind, path, records[start : start + size], settings))
        plans.append(plan)
    return plans


def record_to_plan_dict(record: Record) -> dict[str, Any]:
    data = record.to_json()
    data["image_path"] = record.image_path
    return data


def write_shard(plan: ShardPlan, out_dir: str) -> dict[str, Any]:
    """Ray task body: load every record's image, write the tar, return its manifest entry."""
    from ovdet.data.images import load_image

    target = Path(out_dir) / plan.path
    fingerprint = plan.fingerprint()
    if (previous := finished_shard(target, fingerprint)) is not None:
        return previous | {"skipped": True}
    samples, rejected, names, clipped, boxes_rejected = [], [], [], 0, 0
    for data in plan.records:
        data = dict(data)
        image_path = data.pop("image_path")
        record = Record.from_json(data)
        record.image_path = image_path
        try:
            jpeg, record = load_image(record, plan.settings["max_side"], plan.settings["quality"], plan.settings["max_pixels"])
        except RecordError as exc:
            rejected.append(rejection_row(plan.source, exc))
            boxes_rejected += len(record.boxes)
            continue
        clipped += int(record.meta.get("clipped_boxes", 0))
        names.extend(names_of(record))
        samples.append((record.key, jpeg, record.to_json()))
    write_tar_atomic(target, samples)
    entry = {
        "path": plan.path,
        "count": len(samples),
        "bytes": target.stat().st_size,
        "sha256": sha256_file(target),
        "fingerprint": fingerprint,
        "rejected": rejected,
        "boxes_written": sum(len(sample[2]["boxes"]) for sample in samples),
        "boxes_rejected": boxes_rejected,
        "names": sorted(set(names)),
        "clipped_boxes": clipped,
    }
    write_json_atomic(sidecar_of(target), entry, ensure_ascii=True)
    return entry | {"skipped": False}


def sidecar_of(target: Path) -> Path:
    """Where a shard's ``.done.json`` lives: beside it."""
    return target.with_name(target.name + ".done.json")


def finished_shard(target: Path, fingerprint: str) -> dict[str, Any] | None:
    """The sidecar entry of ``target`` when it was written with ``fingerprint`` and its bytes still
    match the checksum recorded then; None when it must be (re)written."""
    previous = read_sidecar(sidecar_of(target))
    if previous and previous["fingerprint"] == fingerprint and target.exists():
        if sha256_file(target) == previous["sha256"]:
            return previous
    return None


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The ``.done.json`` of a finished shard; None when missing or unreadable (the shard is redone)."""
    try:
        return read_json(path, dict)
    except OvdetError:
        return None


def names_of(record: Record) -> list[str]:
    """The names this record can be a positive for: its negatives' pool for the loader."""
    if record.kind == "image_text":
        return record.caption_labels()
    if record.kind == "grounding":
        return [p.text for p in record.phrases]
    return list(record.category_names)


def run_shard_stage(
    cfg: DataConfig,
    out_dir: Path,
    config_dir: Path | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Shard every source of ``cfg`` into ``out_dir``; returns the manifest (or the plan's counts)."""
    out_dir = Path(out_dir)
    root = resolve_root(cfg, config_dir)
    plans = plan_shards(cfg, root)
    if dry_run:
        return dry_run_summary(plans)
    check_output_folder(out_dir, cfg, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = run_ray_tasks([s for p in plans for s in p.shards], out_dir, cfg, progress)
    manifest = build_manifest(cfg, plans, entries)
    write_rejected(out_dir, plans, entries)
    write_json_atomic(out_dir / MANIFEST, manifest, ensure_ascii=True)
    return manifest


# Settings of how the stage runs, not of what it writes: changing them never needs --overwrite.
RUN_SETTINGS = ("ray_address", "num_cpus", "max_rejected_fraction")


def written_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The data config without its ``RUN_SETTINGS``: what decides the shards' contents."""
    return {k: v for k, v in config.items() if k not in RUN_SETTINGS}


def check_output_folder(out_dir: Path, cfg: DataConfig, overwrite: bool) -> None:
    if not (out_dir / MANIFEST).exists() or overwrite:
        return
    if written_settings(read_manifest(out_dir).get("config") or {}) != written_settings(to_dict(cfg)):
        raise OvdetError(f"{out_dir}: holds shards of a different data config; pass --overwrite to replace them")


@contextlib.contextmanager
def ray_session(cfg):
    """``ray``, initialised for ``cfg`` (its ``ray_address`` and ``num_cpus``) unless this process
    already is; a cluster started here is shut down on exit."""
    if ray_address(cfg) == "local":
        # A cluster this process starts for itself, which nothing else joins: it stays on loopback.
        # Otherwise Ray takes the machine's outward address for 127.0.0.1 and listens on every
        # interface. Read when ray is first imported (ray._private.services.get_node_ip_address).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        init_ray(cfg)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def run_ray_tasks(shards: list[ShardPlan], out_dir: Path, cfg: DataConfig, progress: bool) -> dict[str, dict]:
    from tqdm import tqdm

    with ray_session(cfg) as ray:
        task = ray.remote(num_cpus=1)(write_shard)
        pending = {task.remote(shard, str(out_dir.resolve())): shard.path for shard in shards}
        entries: dict[str, dict] = {}
        with tqdm(total=len(pending), desc="shards", unit="tar", disable=not progress) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                entry = ray.get(ready[0])
                entries[pending.pop(ready[0])] = entry
                bar.update(1)
        return entries


def ray_address(cfg: DataConfig) -> str:
    # "local", not None: with None, ray.init joins any cluster a `ray start` on this machine left behind
    return cfg.ray_address or os.environ.get("RAY_ADDRESS") or "local"


def init_ray(cfg: DataConfig) -> None:
    """Start a local cluster, or join ``ray_address`` (or ``RAY_ADDRESS``)."""
    import ray

    address = ray_address(cfg)
    kwargs = {"num_cpus": cfg.num_cpus} if address == "local" else {}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, **kwargs)
    except (ConnectionError, ray.exceptions.RayError) as exc:
        if not is_token_refusal(exc):
            raise
        raise OvdetError(
            f"Ray cluster {address} wants its authentication token: set RAY_AUTH_MODE=token and the token "
            "(`ray get-auth-token` on the head prints it) in RAY_AUTH_TOKEN, in the file RAY_AUTH_TOKEN_PATH "
            "names, or in ~/.ray/auth_token"
        ) from None


def is_token_refusal(exc: Exception) -> bool:
    """Ray raises a token it cannot find as ``AuthenticationError``, and a token the cluster refuses (or
    did not get) as a ConnectionError whose cause holds the refusal as traceback text. Matched by name:
    Rays without token authentication have no such class."""
    return type(exc).__name__ == "AuthenticationError" or "AuthenticationError" in str(exc.__cause__)


def write_rejected(out_dir: Path, plans: list[SourcePlan], entries: dict[str, dict]) -> None:
    """``rejected.jsonl``: every source's rejections in plan order. Like the manifest and the
    sidecars, ASCII-escaped: a rejection's path may hold bytes that are not UTF-8."""
    rows = []
    for plan in plans:
        rows += plan.rejected + [r for s in plan.shards for r in entries[s.path]["rejected"]]
    write_jsonl_atomic(out_dir / REJECTED, rows, sort_keys=True, ensure_ascii=True)
