"""evaluate_files / python -m ovdet.cli eval write metrics.json, the table and the report; no torch import."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from ovdet.data.vocab import load_vocabulary
from ovdet.eval.metrics import evaluate, evaluate_files
from ovdet.eval.report import write_report

LVIS_FREQUENCY = {1: "f", 2: "c", 3: "f", 5: "r", 8: "c", 13: "r", 21: "f", 34: "r"}


def write_world(tmp_path, gt, detections, vocab):
    paths = {"gt": tmp_path / "gt.json", "dets": tmp_path / "dets.json", "vocab": tmp_path / "vocab.yaml"}
    paths["gt"].write_text(json.dumps(gt))
    paths["dets"].write_text(json.dumps(detections))
    vocab.to_yaml(paths["vocab"])
    return paths


def write_images(image_root, gt, count: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image_root.mkdir()
    pixels = np.random.default_rng(0).random((48, 64, 3))
    for image in gt["images"][:count]:
        plt.imsave(image_root / image["file_name"], pixels)


def test_evaluate_files_writes_metrics_json_and_prints_table(coco_world, tmp_path, capsys):
    paths = write_world(tmp_path, *coco_world)
    metrics = evaluate_files(paths["gt"], paths["dets"], str(paths["vocab"]), tmp_path / "out", report=False)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    printed = capsys.readouterr().out
    assert "base" in printed and "hm" in printed and "APl" in printed and "ARl@100" in printed
    assert "protocol coco" in printed
    assert metrics["protocol"] == "coco"
    assert metrics["settings"] == {"protocol": "coco", "maxDets": [1, 10, 100], "iouThrs": metrics["settings"]["iouThrs"],
                                   "areaRng": metrics["settings"]["areaRng"], "engine": "faster"}
    assert len(metrics["settings"]["iouThrs"]) == 10


def test_report_writes_markdown_and_plots(coco_world, tmp_path):
    gt, detections, vocab = coco_world
    metrics = evaluate(gt, detections, vocab)
    write_images(tmp_path / "images", gt, count=3)
    report = write_report(tmp_path / "out", metrics, gt, detections, vocab, image_root=tmp_path / "images")
    for name in ("per_category_ap.png", "precision_recall.png", "examples.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
        assert f"({name})" in report.read_text()
    assert "| AP |" in report.read_text()


def test_report_skips_examples_when_images_are_missing(coco_world, tmp_path):
    gt, detections, vocab = coco_world
    write_report(tmp_path, evaluate(gt, detections, vocab), gt, detections, vocab, image_root=tmp_path / "none")
    assert (tmp_path / "report.md").exists() and not (tmp_path / "examples.png").exists()


def test_lvis_vocabulary_adds_frequency_group_ap(coco_world):
    gt, detections, _ = coco_world
    for category in gt["categories"]:
        category["frequency"] = LVIS_FREQUENCY[category["id"]]
    vocab = load_vocabulary("lvis", gt=gt)
    metrics = evaluate(gt, detections, vocab)
    rare_vocab = load_vocabulary("bus,cat,zebra", gt=gt)
    rare = evaluate(gt, [d for d in detections if d["category_id"] in rare_vocab.ids], rare_vocab)
    assert metrics["APr"] == rare["AP"]["all"] == metrics["AP"]["novel"]
    assert {"APc", "APf"} <= set(metrics)


def test_cli_eval_exits_2_with_one_line_on_user_error(coco_world, tmp_path):
    paths = write_world(tmp_path, *coco_world)
    command = [sys.executable, "-m", "ovdet.cli", "eval", "--gt", str(paths["gt"]), "--detections", str(paths["dets"]),
               "--vocab", "cat,unicorn", "--out", str(tmp_path / "out")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unicorn" in result.stderr


def test_eval_import_chain_does_not_import_torch():
    code = ("import sys, ovdet.cli, ovdet.eval, ovdet.eval.metrics, ovdet.eval.report, ovdet.data.vocab; "
            "import faster_coco_eval; assert 'torch' not in sys.modules, 'torch imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)
