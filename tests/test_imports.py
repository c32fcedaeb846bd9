"""Imports point upstream only (STYLE.md): models/losses never import train, eval, the CLI or
distributed frameworks; the trainer never imports eval; scoring precomputed detections never loads torch."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "ovdet/models": ("ovdet.train", "ovdet.eval", "ovdet.cli", "deepspeed", "ray", "webdataset", "torch.distributed"),
    "ovdet/losses": ("ovdet.train", "ovdet.eval", "ovdet.cli", "deepspeed", "ray", "webdataset", "torch.distributed"),
    "ovdet/ops": ("ovdet.models", "ovdet.train", "ovdet.eval", "ovdet.cli"),
    "ovdet/data": ("ovdet.models", "ovdet.losses", "ovdet.train", "ovdet.eval", "ovdet.cli"),
    "ovdet/train": ("ovdet.eval", "ovdet.cli"),
    "ovdet/eval": ("ovdet.train", "ovdet.cli"),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_imports_point_upstream_only():
    offences = []
    for folder, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name in imported_modules(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    offences.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offences == []


def test_scoring_precomputed_detections_does_not_import_torch():
    code = "import sys, ovdet.cli, ovdet.eval.metrics, ovdet.data.vocab; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
