"""Imports point upstream only (STYLE.md): models/losses never import train, eval, the CLI or
distributed frameworks; the trainer never imports eval; scoring precomputed detections never loads torch."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_INTERNALS = ("ovdet.models.",)  # any submodule: the publish package uses ovdet.models / ovdet.infer only
FORBIDDEN = {
    "ovdet/models": ("ovdet.train", "ovdet.eval", "ovdet.cli", "deepspeed", "ray", "webdataset", "torch.distributed"),
    "ovdet/losses": ("ovdet.train", "ovdet.eval", "ovdet.cli", "deepspeed", "ray", "webdataset", "torch.distributed"),
    "ovdet/ops": ("ovdet.models", "ovdet.train", "ovdet.eval", "ovdet.cli"),
    "ovdet/data": ("ovdet.models", "ovdet.losses", "ovdet.train", "ovdet.eval", "ovdet.cli"),
    "ovdet/train": ("ovdet.eval", "ovdet.cli", "torch.distributed"),  # collectives go through ovdet/dist.py
    "ovdet/eval": ("ovdet.train", "ovdet.cli"),
    "ovdet/infer.py": ("ovdet.data.loader", "ovdet.train", "ovdet.eval", "ovdet.cli", "deepspeed", "ray"),
    # publish may use eval's table formatter (ovdet.eval.report), not run an evaluation
    "ovdet/publish": ("ovdet.train", "ovdet.eval.evaluator", "ovdet.eval.engine", "ovdet.eval.metrics", "ovdet.cli",
                      "ovdet.data.loader", "deepspeed", "ray", *MODEL_INTERNALS),
    "pipelines": ("ovdet.models", "ovdet.losses", "ovdet.train", "ovdet.eval", "torch", "deepspeed"),
}
# The readers share ovdet/data/sources/common.py; importing the package from a reader is the old hidden cycle.
READERS = ("ovdet/data/sources", ("ovdet.data.sources",))


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # `from ovdet.models import factory` imports the submodule ovdet.models.factory
            package = ROOT / node.module.replace(".", "/")
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (package / f"{alias.name}.py").is_file() or (package / alias.name).is_dir())
    return names


def python_files(entry: str) -> list[Path]:
    path = ROOT / entry
    assert path.exists(), f"import rule for {entry}, which does not exist"
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


def offences_of(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    """``f`` forbids the module and its submodules; ``f.`` (trailing dot) forbids only the submodules."""
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return [f"{where} imports {name}" for name in sorted(imported_modules(path))
            if any(name.startswith(f) if f.endswith(".") else (name == f or name.startswith(f + "."))
                   for f in forbidden)]


def test_imports_point_upstream_only():
    offences = []
    for entry, forbidden in FORBIDDEN.items():
        for path in python_files(entry):
            offences += offences_of(path, forbidden)
    assert offences == []


def test_readers_import_common_not_their_package():
    """``from ovdet.data.sources import X`` in a reader needs the package's __init__, which imports the
    readers: the hidden cycle. Readers import ``ovdet.data.sources.common`` (or a sibling module)."""
    folder, (package,) = READERS
    offences = []
    for path in python_files(folder):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == package or (
                    isinstance(node, ast.Import) and any(a.name == package for a in node.names)):
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offences == []


def test_only_dist_py_uses_torch_distributed():
    users = [str(path.relative_to(ROOT)) for path in python_files("ovdet")
             if offences_of(path, ("torch.distributed",)) and path.name != "dist.py"]
    assert users == []


def test_nothing_imports_a_top_level_pipelines_package():
    """The stage code installs as ovdet.pipelines; `import pipelines` would only work inside the checkout."""
    users = [str(path.relative_to(ROOT)) for entry in ("ovdet", "pipelines", "tests") for path in python_files(entry)
             if offences_of(path, ("pipelines",))]
    assert users == []


def test_a_rule_catches_an_offence(tmp_path):
    """The checker itself: a forbidden import, a from-import of a submodule and a prefix-only name."""
    module = tmp_path / "m.py"
    module.write_text("from ovdet.models import factory\nimport ovdet.trainer_like\nimport torch.distributed as d\n"
                      "from ovdet.models import build_detector\n")
    found = offences_of(module, ("ovdet.train", *MODEL_INTERNALS, "torch.distributed"))
    assert [o.split(" imports ")[1] for o in found] == ["ovdet.models.factory", "torch.distributed"]


def test_scoring_precomputed_detections_does_not_import_torch():
    code = "import sys, ovdet.cli, ovdet.eval.metrics, ovdet.data.vocab; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
