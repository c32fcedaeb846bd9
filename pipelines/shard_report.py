"""What the shard stage tells the user: counts that balance, reasons by kind, and its verdict.

Counts are kept at two levels and both balance, per source:

    read = written + rejected                      records (images, lines, rows, tar samples)
    boxes_read = boxes_written + boxes_rejected    annotated boxes

``boxes_rejected`` holds the boxes dropped alone (``annotations_dropped``) and those lost with a
rejected record. ``stage_problems`` is the verdict: a source that writes nothing, or rejects more
than ``data.max_rejected_fraction`` of its records, fails the stage (``ovdet shard`` exits 1).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ovdet.config import DataConfig, to_dict
from ovdet.data.images import missing_image
from ovdet.errors import AnnotationError, RecordError


def rejection_row(source: str, error: RecordError) -> dict[str, Any]:
    """One line of ``rejected.jsonl``: a record's, or (with ``annotation_id``) one annotation's."""
    row = {"source": source, "record_id": error.record_id, "reason": error.reason}
    if isinstance(error, AnnotationError):
        row["annotation_id"] = error.annotation_id
    return row


def reason_kind(reason: str) -> str:
    """The reason without its particulars, to count rejections by kind: no detail after ": "
    (paths, decoder messages), no annotation label, numbers as N."""
    head = reason.split(": ", 1)[0]
    head = re.sub(r"^(annotation|phrase|box) \S+( box \S+)?", r"\1", head)
    return re.sub(r"\d+(\.\d+)?", "N", head)


def reason_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Rejections by kind, most frequent first (ties by name, so the order is stable)."""
    counts = Counter(reason_kind(row["reason"]) for row in rows)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def image_file_of(record: dict[str, Any]) -> str:
    """The file a planned record's image is read from: its path, or the tar holding it."""
    return record["image_path"] or record["meta"].get("image_bytes_from", {}).get("tar", "")


def build_manifest(cfg: DataConfig, plans: list, entries: dict[str, dict]) -> dict[str, Any]:
    """``manifest.json``: per source, the counts at both levels, reasons, names, categories, shards."""
    sources = {}
    for plan in plans:
        shard_entries = [entries[s.path] for s in plan.shards]
        rows = plan.rejected + [row for e in shard_entries for row in e["rejected"]]
        dropped = sum("annotation_id" in row for row in rows)
        entry = {
            "kind": plan.kind,
            "format": plan.format,
            "weight": plan.weight,
            "read": plan.read,
            "written": sum(e["count"] for e in shard_entries),
            "rejected": len(rows) - dropped,
            "boxes_read": plan.boxes_read,
            "boxes_written": sum(e["boxes_written"] for e in shard_entries),
            "boxes_rejected": plan.boxes_rejected + sum(e["boxes_rejected"] for e in shard_entries),
            "annotations_dropped": dropped,
            "clipped_boxes": sum(e["clipped_boxes"] for e in shard_entries),
            "reasons": reason_counts(rows),
            "names": sorted({n for e in shard_entries for n in e["names"]}),
            "shards": [{k: e[k] for k in ("path", "count", "bytes", "sha256")} for e in shard_entries],
        }
        if plan.categories:
            entry["categories"] = plan.categories
        check_balance(plan.name, entry)
        sources[plan.name] = entry
    return {"version": 1, "config": to_dict(cfg), "sources": sources}


def check_balance(name: str, entry: dict[str, Any]) -> None:
    """Nothing is lost: a count that does not balance is a bug in the stage, not the user's data."""
    if entry["read"] != entry["written"] + entry["rejected"]:
        raise RuntimeError(f"source {name}: read {entry['read']} != written {entry['written']} + rejected {entry['rejected']}")
    if entry["boxes_read"] != entry["boxes_written"] + entry["boxes_rejected"]:
        raise RuntimeError(
            f"source {name}: boxes read {entry['boxes_read']} != written {entry['boxes_written']}"
            f" + rejected {entry['boxes_rejected']}"
        )


def dry_run_summary(plans: list, threads: int = 16) -> dict[str, Any]:
    """What a run would write, from the annotations and a stat of every image (no decoding).

    A missing image counts as a rejection with the reason the real run would give.
    """
    sources = {}
    for plan in plans:
        records = [r for shard in plan.shards for r in shard.records]
        with ThreadPoolExecutor(threads) as pool:  # stats on a network file system overlap
            present = list(pool.map(lambda r: os.path.isfile(image_file_of(r)), records))
        missing = [
            rejection_row(plan.name, missing_image(r["key"], image_file_of(r)))
            for r, ok in zip(records, present, strict=True)
            if not ok
        ]
        rows = plan.rejected + missing
        dropped = sum("annotation_id" in row for row in rows)
        sources[plan.name] = {
            "kind": plan.kind,
            "read": plan.read,
            "written": len(records) - len(missing),
            "rejected": len(rows) - dropped,
            "missing_images": len(missing),
            "boxes_read": plan.boxes_read,
            "annotations_dropped": dropped,
            "reasons": reason_counts(rows),
            "shards": len(plan.shards),
            "examples": [f"{row['record_id']}: {row['reason']}" for row in missing[:3]],
        }
    return {"dry_run": True, "sources": sources}


def stage_problems(summary: dict[str, Any], max_rejected_fraction: float) -> list[str]:
    """Why the stage failed, one line per failing source ([] when it did not).

    A source fails when it writes no record (a wrong path or image root rejects everything) or
    rejects more than ``max_rejected_fraction`` of the records it read.
    """
    problems = []
    for name, source in summary["sources"].items():
        read, written, rejected = source["read"], source["written"], source["rejected"]
        if written == 0:
            problems.append(f"source {name}: no record {'would be ' if summary.get('dry_run') else ''}written "
                            f"(read {read}, rejected {rejected})")
        elif read and rejected / read > max_rejected_fraction:
            problems.append(
                f"source {name}: rejected {rejected} of {read} records ({rejected / read:.1%}), more than "
                f"data.max_rejected_fraction = {max_rejected_fraction:g}"
            )
    return problems


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The lines ``ovdet shard`` prints: counts per source, then its rejection reasons by kind."""
    lines = []
    for name, source in summary["sources"].items():
        written = "would write" if summary.get("dry_run") else "written"
        shards = source["shards"] if isinstance(source["shards"], int) else len(source["shards"])
        lines.append(
            f"{name:24s} {source['kind']:11s} read {source['read']:7d}  {written} {source['written']:7d}  "
            f"rejected {source['rejected']:6d}  boxes read {source['boxes_read']:8d}  "
            f"dropped {source['annotations_dropped']:6d}  shards {shards}"
        )
        lines.extend(f"    {count:7d}  {kind}" for kind, count in source["reasons"].items())
        lines.extend(f"    e.g. {example}" for example in source.get("examples", []))
    return lines
