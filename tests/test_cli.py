"""The CLI: help on every subcommand, --print-config, one-line user errors with exit code 2."""

import argparse
import subprocess
import sys

import pytest
import yaml

from ovdet.cli import build_parser, main

SUBCOMMANDS = ["synth", "shard", "pseudo-label", "train", "eval", "detect", "publish", "demo", "submit"]


def subparsers_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every runnable command line prefix: ``("train",)``, ``("submit", "train")``, ..."""
    children = subparsers_of(parser)
    if not children:
        return [prefix]
    return [leaf for name, child in children.items() for leaf in leaf_commands(child, (*prefix, name))]


LEAVES = leaf_commands(build_parser())


def test_the_listed_subcommands_are_all_of_them():
    assert sorted(subparsers_of(build_parser())) == sorted(SUBCOMMANDS)
    assert ("submit", "pipeline") in LEAVES and ("submit", "train") in LEAVES


@pytest.mark.parametrize("command", LEAVES, ids=" ".join)
def test_every_command_explains_its_arguments(command, capsys):
    """Every argument has its own help text, and --help shows each option and positional by name."""
    parser = build_parser()
    for name in command:
        parser = subparsers_of(parser)[name]
    arguments = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert arguments, f"{' '.join(command)} takes no arguments"
    assert [a.dest for a in arguments if not a.help or a.help == argparse.SUPPRESS] == []
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
    for argument in arguments:
        for name in argument.option_strings or [argument.metavar or argument.dest]:
            assert name in shown, f"{' '.join(command)} --help does not show {name}"
        assert " ".join(argument.help.split())[:30].replace("%%", "%") in shown


def test_default_config_is_the_packaged_demo_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--print-config", "train.steps=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["run_dir"] == "runs/demo" and printed["train"]["steps"] == 2


def test_print_config_shows_the_resolved_tree(capsys):
    assert main(["train", "--config", "configs/demo.yaml", "--print-config", "train.steps=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["steps"] == 3
    assert printed["model"]["name"] == "minilm-efficientnet-lite0"


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ovdet.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_unknown_key_is_one_line_and_exit_2():
    result = run_cli("train", "--config", "configs/demo.yaml", "--print-config", "train.stepz=3")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown key 'train.stepz'" in result.stderr and "Traceback" not in result.stderr


def test_missing_config_is_one_line_and_exit_2(tmp_path):
    result = run_cli("demo", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "missing.yaml: no such config file, and not a packaged config (demo, data/synthetic)" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_type_names_the_key_and_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loader:\n  batch_size: 2.5\n")
    result = run_cli("train", "--config", str(path), "--print-config")
    assert result.returncode == 2
    assert f"{path}: key 'loader.batch_size' must be an integer" in result.stderr


def test_synth_refuses_a_different_world_without_overwrite(tmp_path):
    small = ["synth.image_size=64", "synth.num_detection=2", "synth.num_grounding=1", "synth.num_image_text=1", "synth.num_eval=1"]
    assert run_cli("synth", "--out", str(tmp_path / "w"), *small).returncode == 0
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "w").rglob("*") if p.is_file())
    result = run_cli("synth", "--out", str(tmp_path / "w"), "--seed", "5", *small)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "w").rglob("*") if p.is_file()) == before
    assert run_cli("synth", "--out", str(tmp_path / "w"), "--seed", "5", "--overwrite", *small).returncode == 0


def test_demo_refuses_a_run_folder_holding_a_different_run(tmp_path):
    from ovdet.config import load_config
    from ovdet.demo import claim_run_dir
    from ovdet.errors import OvdetError

    cfg = load_config("configs/demo.yaml", [f"run_dir={tmp_path / 'run'}"])
    claim_run_dir(cfg, overwrite=False)
    (tmp_path / "run" / "keep.txt").write_text("x")
    claim_run_dir(cfg, overwrite=False)  # same config: resume, nothing removed
    assert (tmp_path / "run" / "keep.txt").exists()
    other = load_config("configs/demo.yaml", [f"run_dir={tmp_path / 'run'}", "train.steps=1"])
    with pytest.raises(OvdetError, match="different config; pass --overwrite"):
        claim_run_dir(other, overwrite=False)
    assert (tmp_path / "run" / "keep.txt").exists()
    claim_run_dir(other, overwrite=True)
    assert not (tmp_path / "run" / "keep.txt").exists()


def test_eval_from_detections_needs_all_inputs():
    result = run_cli("eval", "--detections", "d.json")
    assert result.returncode == 2
    assert "needs --gt, --detections, --vocab and --out" in result.stderr
