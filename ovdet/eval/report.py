"""The evaluation report: ``report.md`` with the AP table and PNG plots beside it.

Plots: per-category AP bars coloured by split, precision-recall curves at IoU 0.5 for base and
novel (from ``metrics["pr_curve_iou50"]``), and a grid of example images with GT (green) and
detections (red) when an image root is given. matplotlib (Agg) is imported only when drawing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ovdet.data.vocab import Vocabulary

AP_ROWS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
FREQUENCY_KEYS = ("APr", "APc", "APf")
TABLE_COLUMNS = ("base", "novel", "all", "hm")
SPLIT_COLORS = {"base": "tab:blue", "novel": "tab:orange"}
GT_COLOR, DETECTION_COLOR = "lime", "red"
MIN_EXAMPLE_SCORE = 0.3
MAX_EXAMPLES = 8
MAX_BOXES_PER_EXAMPLE = 20
MAX_LABELLED_BARS = 80


def format_percent(value: float, digits: int = 1) -> str:
    return "-" if value < 0 else f"{100 * value:.{digits}f}"


def table_rows(metrics: dict) -> list[str]:
    """The AP rows, then the protocol's AR rows (every split-valued ``AR*`` key, in metrics order)."""
    return [*AP_ROWS, *(key for key, value in metrics.items() if key.startswith("AR") and isinstance(value, dict))]


def format_split_table(metrics: dict, rows: Sequence[str], markdown: bool = False, digits: int = 1) -> str:
    """The metrics table: one row per name in ``rows``, columns base/novel/all/hm, in percent with
    ``digits`` decimals ('-' where undefined); plain text right-aligned, or markdown."""
    cells = [["", *TABLE_COLUMNS]]
    cells += [[name, *(format_percent(metrics[name][col], digits) for col in TABLE_COLUMNS)] for name in rows]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        lines.insert(1, "|" + "---|" * len(cells[0]))
    else:
        lines = ["".join(cell.rjust(8) for cell in row) for row in cells]
    return "\n".join(lines)


def format_table(metrics: dict, markdown: bool = False) -> str:
    """Rows AP..APl and AR (``format_split_table``); then the protocol and, where categories carry
    LVIS frequencies, APr / APc / APf."""
    lines = [format_split_table(metrics, table_rows(metrics), markdown)]
    footer = [f"protocol {metrics.get('protocol', 'coco')}"]
    footer += [f"{name} {format_percent(metrics[name])}" for name in FREQUENCY_KEYS if name in metrics]
    return "\n".join([*lines, "", "  ".join(footer)])


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(
    out_dir: str | Path,
    metrics: dict,
    gt: dict,
    detections: list[dict],
    vocab: Vocabulary,
    image_root: str | Path | None = None,
) -> Path:
    """Write ``out_dir/report.md`` and its plots; returns the report path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [plot_per_category_ap(out_dir, metrics), plot_precision_recall(out_dir, metrics)]
    if image_root is not None:
        plots.append(plot_examples(out_dir, gt, detections, vocab, Path(image_root)))
    path = out_dir / "report.md"
    path.write_text(report_markdown(metrics, [p for p in plots if p is not None]))
    return path


def report_markdown(metrics: dict, plots: list[Path]) -> str:
    lines = ["# Evaluation report", "", "Box AP and AR in percent ('-': undefined, no GT in that range).", ""]
    lines += [format_table(metrics, markdown=True), ""]
    counts = metrics.get("detections", {})
    lines += [f"{metrics['num_images']} images, {metrics['num_detections']} detections read, "
              f"{counts.get('evaluated', metrics['num_detections'])} evaluated, engine {metrics['settings']['engine']}.",
              ""]  # fmt: skip
    lines += [f"![{plot.stem}]({plot.name})" for plot in plots]
    return "\n".join(lines) + "\n"


def plot_per_category_ap(out_dir: Path, metrics: dict) -> Path:
    """Bars of per-category AP, sorted, base blue and novel orange; undefined categories left out."""
    plt = pyplot()
    rows = sorted(((v["AP"], name, v["split"]) for name, v in metrics["per_category"].items() if v["AP"] >= 0),
                  reverse=True)  # fmt: skip
    figure, axes = plt.subplots(figsize=(min(4 + 0.18 * len(rows), 24), 4))
    heights, colors = [100 * ap for ap, _, _ in rows], [SPLIT_COLORS[s] for _, _, s in rows]
    if len(rows) <= MAX_LABELLED_BARS:
        axes.bar(range(len(rows)), heights, color=colors)
        axes.set_xticks(range(len(rows)), [name for _, name, _ in rows], rotation=90, fontsize=7)
    else:  # one line collection: thousands of bar patches take seconds to draw
        axes.vlines(range(len(rows)), 0, heights, colors=colors, linewidth=max(0.3, 600 / len(rows)))
    axes.set_ylabel("AP (%)")
    axes.set_title("Per-category AP (blue: base, orange: novel)")
    return save(plt, figure, out_dir / "per_category_ap.png")


def plot_precision_recall(out_dir: Path, metrics: dict) -> Path:
    plt = pyplot()
    curves = metrics["pr_curve_iou50"]
    figure, axes = plt.subplots(figsize=(5, 4))
    for split, color in SPLIT_COLORS.items():
        if min(curves[split]) >= 0:
            axes.plot(curves["recall"], curves[split], color=color, label=split)
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall, IoU 0.5")
    axes.legend()
    return save(plt, figure, out_dir / "precision_recall.png")


def save(plt: Any, figure: Any, path: Path) -> Path:
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_examples(out_dir: Path, gt: dict, detections: list[dict], vocab: Vocabulary, image_root: Path) -> Path | None:
    """Up to 8 images that exist under ``image_root``: GT green, detections (score >= 0.3) red."""
    images = [im for im in gt["images"] if (image_root / im.get("file_name", "")).is_file()][:MAX_EXAMPLES]
    if not images:
        return None
    plt = pyplot()
    names = {c.id: c.name for c in vocab.categories}
    gt_by_image, detections_by_image = group_by_image(gt["annotations"]), group_by_image(detections)
    columns = min(4, len(images))
    rows = (len(images) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image in zip(axes.flat, images, strict=False):
        ax.imshow(plt.imread(image_root / image["file_name"]))
        draw_boxes(ax, gt_by_image[image["id"]], names, GT_COLOR)
        draw_boxes(ax, top_detections(detections_by_image[image["id"]]), names, DETECTION_COLOR)
        ax.set_title(str(image["file_name"]), fontsize=8)
    return save(plt, figure, out_dir / "examples.png")


def group_by_image(annotations: list[dict]) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = defaultdict(list)
    for annotation in annotations:
        grouped[annotation["image_id"]].append(annotation)
    return grouped


def top_detections(detections: list[dict]) -> list[dict]:
    kept = sorted((d for d in detections if d["score"] >= MIN_EXAMPLE_SCORE), key=lambda d: -d["score"])
    return kept[:MAX_BOXES_PER_EXAMPLE]


def draw_boxes(ax: Any, annotations: list[dict], names: dict[int, str], color: str) -> None:
    from matplotlib.patches import Rectangle

    for annotation in annotations:
        x, y, w, h = annotation["bbox"]
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=color, linewidth=1.5))
        label = names.get(annotation["category_id"], str(annotation["category_id"]))
        if "score" in annotation:
            label = f"{label} {annotation['score']:.2f}"
        ax.text(x, y, label, color=color, fontsize=6, va="bottom")
