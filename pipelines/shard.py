"""The shard stage as Ray tasks: plan -> load + validate + normalise -> write tar -> manifest.

``run_shard_stage(cfg, out_dir)`` reads every source on the driver (annotation files only),
partitions the valid records deterministically into shards of ``samples_per_shard``, and runs
one Ray task per shard that loads, validates and re-encodes images and writes the tar
atomically. A finished shard leaves a ``.done.json`` sidecar (its checksum and a fingerprint of
its inputs), so re-running the same command skips the shards already written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovdet.config import DataConfig, to_dict
from ovdet.data.records import Record
from ovdet.data.shards import (
    MANIFEST,
    REJECTED,
    read_manifest,
    sha256_file,
    write_json_atomic,
    write_tar_atomic,
)
from ovdet.errors import OvdetError, RecordError

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
        payload = json.dumps([self.records, self.settings], sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()


@dataclass
class SourcePlan:
    name: str
    kind: str
    format: str
    weight: float
    read: int = 0
    rejected: list[dict[str, str]] = field(default_factory=list)
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
        for item in iter_source(source, root):
            plan.read += 1
            if isinstance(item, RecordError):
                plan.rejected.append({"source": source.name, "record_id": item.record_id, "reason": item.reason})
            else:
                records.append(record_to_plan_dict(item))
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
    done = target.with_name(target.name + ".done.json")
    fingerprint = plan.fingerprint()
    previous = read_sidecar(done)
    if previous and previous["fingerprint"] == fingerprint and target.exists():
        if sha256_file(target) == previous["sha256"]:
            return previous | {"skipped": True}
    samples, rejected, names, clipped = [], [], [], 0
    for data in plan.records:
        image_path = data.pop("image_path")
        record = Record.from_json(data)
        record.image_path = image_path
        try:
            jpeg, record = load_image(record, plan.settings["max_side"], plan.settings["quality"], plan.settings["max_pixels"])
        except RecordError as exc:
            rejected.append({"source": plan.source, "record_id": exc.record_id, "reason": exc.reason})
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
        "names": sorted(set(names)),
        "clipped_boxes": clipped,
    }
    write_json_atomic(done, entry)
    return entry | {"skipped": False}


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
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
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


def check_output_folder(out_dir: Path, cfg: DataConfig, overwrite: bool) -> None:
    if not (out_dir / MANIFEST).exists() or overwrite:
        return
    previous = read_manifest(out_dir).get("config")
    if previous != to_dict(cfg):
        raise OvdetError(f"{out_dir}: holds shards of a different data config; pass --overwrite to replace them")


def run_ray_tasks(shards: list[ShardPlan], out_dir: Path, cfg: DataConfig, progress: bool) -> dict[str, dict]:
    import ray
    from tqdm import tqdm

    # "local", not None: with None, ray.init joins any cluster a `ray start` on this machine left behind
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"num_cpus": cfg.num_cpus} if address == "local" else {}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, **kwargs)
    try:
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
    finally:
        if started_here:
            ray.shutdown()


def build_manifest(cfg: DataConfig, plans: list[SourcePlan], entries: dict[str, dict]) -> dict[str, Any]:
    sources = {}
    for plan in plans:
        shard_entries = [entries[s.path] for s in plan.shards]
        written = sum(e["count"] for e in shard_entries)
        rejected = len(plan.rejected) + sum(len(e["rejected"]) for e in shard_entries)
        sources[plan.name] = {
            "kind": plan.kind,
            "format": plan.format,
            "weight": plan.weight,
            "read": plan.read,
            "written": written,
            "rejected": rejected,
            "clipped_boxes": sum(e["clipped_boxes"] for e in shard_entries),
            "names": sorted({n for e in shard_entries for n in e["names"]}),
            "shards": [{k: e[k] for k in ("path", "count", "bytes", "sha256")} for e in shard_entries],
        }
        if plan.read != written + rejected:
            raise RuntimeError(f"source {plan.name}: read {plan.read} != written {written} + rejected {rejected}")
    return {"version": 1, "config": to_dict(cfg), "sources": sources}


def write_rejected(out_dir: Path, plans: list[SourcePlan], entries: dict[str, dict]) -> None:
    lines = []
    for plan in plans:
        rows = plan.rejected + [r for s in plan.shards for r in entries[s.path]["rejected"]]
        lines.extend(json.dumps(row, sort_keys=True) for row in rows)
    temp = out_dir / f".{REJECTED}.tmp-{os.getpid()}"
    temp.write_text("".join(line + "\n" for line in lines))
    os.replace(temp, out_dir / REJECTED)


def dry_run_summary(plans: list[SourcePlan]) -> dict[str, Any]:
    return {
        "dry_run": True,
        "sources": {
            p.name: {
                "kind": p.kind,
                "read": p.read,
                "valid_annotations": p.read - len(p.rejected),
                "rejected_annotations": len(p.rejected),
                "shards": len(p.shards),
            }
            for p in plans
        },
    }


