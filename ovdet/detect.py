"""``ovdet detect``: zero-shot detection over files and folders, JSON + drawn copies."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import ImageDraw

from ovdet.errors import OvdetError
from ovdet.infer import Detector, open_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def collect_images(items: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            paths.append(path)
        else:
            raise OvdetError(f"{item}: no such image or folder")
    if not paths:
        raise OvdetError(f"no images found in {items}")
    return paths


def draw_detections(image, detections, path: Path) -> None:
    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    for det in detections:
        draw.rectangle(det.box_xyxy, outline=(255, 40, 40), width=2)
        draw.text((det.box_xyxy[0] + 2, det.box_xyxy[1] + 1), f"{det.label} {det.score:.2f}", fill=(255, 255, 0))
    canvas.save(path, quality=90)


def run_detect(model: str, vocabulary: list[str], images: list[str], out_dir: Path, templates=None,
               threshold: float = 0.2, top_k: int = 50, nms_iou: float = 0.5, batch_size: int = 8,
               nms: str = "auto") -> list[Path]:
    """Detect ``vocabulary`` in every image; writes ``OUT/NAME.json`` and ``OUT/NAME.jpg``."""
    paths = collect_images(images)
    detector = Detector.from_pretrained(model)
    settings = detector.nms_settings(nms, nms_iou)
    print(f"nms: {settings.method}" + (f" (auto: {detector.spec.get('assigner', 'hungarian')} assignment)"
                                        if nms == "auto" else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    results = detector.detect(paths, vocabulary, templates, threshold, top_k, nms_iou, batch_size, progress=True,
                              nms=nms)  # fmt: skip
    written = []
    for index, (path, found) in enumerate(zip(paths, results, strict=True)):
        stem = f"{index:05d}-{path.stem}"
        record = {"image": str(path), "vocabulary": vocabulary, "detections": [d.to_json() for d in found]}
        (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=1))
        draw_detections(open_image(path), found, out_dir / f"{stem}.jpg")
        written.append(out_dir / f"{stem}.json")
    return written
