"""`ovdet publish`: the exported folder rebuilds the same detector, the card validates, the token never leaks.

Everything runs offline: HfApi's network methods are patched. The model is a tiny random-init ViT with
the pip-shipped MiniLM text tower, saved as the trainer saves it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx2
import pytest
import requests
import yaml
from drawn_images import write_drawn_images
from huggingface_hub import HfApi, ModelCard, metadata_load
from huggingface_hub.errors import HfHubHTTPError

from ovdet.cli import main
from ovdet.errors import OvdetError
from ovdet.publish import publish

REPO_ID = "my-org/ovdet-tiny"
FAKE_TOKEN = "hf_FAKEtokenDoNotLeak9f3a1c77e2"
METRICS = {
    "AP": {"base": 0.4125, "novel": 0.2031, "all": 0.3601, "hm": 0.2722},
    "AP50": {"base": 0.6502, "novel": 0.3977, "all": 0.5871, "hm": 0.4935},
    "AP75": {"base": 0.4, "novel": 0.2, "all": 0.35, "hm": 0.2667},
    "per_category": {"red circle": {"id": 1, "split": "base", "AP": 0.41, "AP50": 0.65},
                     "blue star": {"id": 2, "split": "novel", "AP": 0.2, "AP50": 0.4}},
    "settings": {"maxDets": 100},
    "model": "/home/someone/runs/demo/train/final",
}
VOCAB = {"categories": [{"id": 1, "name": "red circle", "split": "base"},
                        {"id": 2, "name": "blue star", "split": "novel"}],
         "prompts": ["a photo of a {}."]}
MANIFEST = {"version": 1, "config": {"root": "/data"}, "sources": {
    "synth-detection": {"kind": "detection", "format": "coco", "weight": 1.0, "read": 600, "written": 598,
                        "rejected": 2, "shards": [{"path": "a.tar"}, {"path": "b.tar"}]},
    "synth-image-text": {"kind": "image_text", "format": "jsonl", "weight": 1.0, "read": 600, "written": 600,
                         "rejected": 0, "shards": [{"path": "c.tar"}]},
}}
EXPORTED_FILES = {"model.safetensors", "config.json", "model_spec.json", "vocab.yaml", "metrics.json",
                  "training_config.yaml", "data_summary.json", "README.md"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder as `ovdet demo` leaves it: train/final, train/config.json, eval, synth, shards."""
    from safetensors.torch import save_file

    from ovdet.config import ModelConfig
    from ovdet.models.factory import create_detector, resolve_model_spec

    run = tmp_path_factory.mktemp("run")
    final = run / "train" / "final"
    final.mkdir(parents=True)
    cfg = ModelConfig(name="tiny-vit-minilm", feature_indices=[1])
    model = create_detector(cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(final / "model.safetensors"))
    (final / "model_spec.json").write_text(json.dumps({"spec": resolve_model_spec(cfg), "step": 0, "config": {}}))
    (run / "train" / "config.json").write_text(json.dumps({"run_dir": str(run), "train": {"steps": 3}}))
    for relative, content in [("eval/metrics.json", json.dumps(METRICS)), ("synth/vocab.yaml", yaml.safe_dump(VOCAB)),
                              ("shards/manifest.json", json.dumps(MANIFEST))]:
        (run / relative).parent.mkdir(parents=True, exist_ok=True)
        (run / relative).write_text(content)
    return run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    return publish(run_dir, REPO_ID, out_dir=tmp_path_factory.mktemp("export") / "folder", dry_run=True)


@pytest.fixture
def bare_model(run_dir, tmp_path) -> Path:
    """The model folder alone, outside any run (so no evaluation is found)."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model.safetensors", "model_spec.json"):
        (folder / name).hardlink_to(run_dir / "train" / "final" / name)
    return folder


@pytest.fixture
def images(tmp_path) -> list[Path]:
    return write_drawn_images(tmp_path)


@pytest.fixture
def fake_hub(monkeypatch):
    """Patch HfApi's network methods; ``calls`` records (method, args, kwargs); ``fail`` makes them raise."""
    state = {"calls": [], "fail": None}

    def recorder(name):
        def method(self, *args, **kwargs):
            state["calls"].append((name, args, kwargs))
            if state["fail"] is not None:
                raise state["fail"]
            return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{REPO_ID}/commit/abc"})()
        return method

    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, recorder(name))
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    return state


def test_exported_folder_detects_exactly_like_the_source_model(run_dir, exported, images):
    from ovdet.infer import Detector

    vocabulary = ["red circle", "blue square", "cat"]
    source = Detector.from_pretrained(run_dir / "train" / "final").detect(images, vocabulary, score_threshold=0.0, top_k=20)
    published = Detector.from_pretrained(exported).detect(images, vocabulary, score_threshold=0.0, top_k=20)
    assert [len(d) for d in source] == [20, 20]
    for theirs, ours in zip(source, published, strict=True):
        assert [(d.box_xyxy, d.label, d.score) for d in ours] == [(d.box_xyxy, d.label, d.score) for d in theirs]


def test_exported_folder_holds_the_listed_files_and_a_portable_spec(exported):
    files = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    assert EXPORTED_FILES <= files
    tokenizer_files = {f.removeprefix("tokenizer/") for f in files if f.startswith("tokenizer/")}
    assert {"config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json"} <= tokenizer_files
    assert "model.safetensors" not in tokenizer_files  # the text weights live in the top-level file
    config = json.loads((exported / "config.json").read_text())
    assert json.loads((exported / "model_spec.json").read_text())["spec"] == config
    text_cfg = config["arch"]["text_cfg"]
    assert text_cfg["hf_model_name"] == text_cfg["hf_tokenizer_name"] == "local:tokenizer"
    assert text_cfg["hf_model_pretrained"] is False
    assert "vision_weights" not in config["arch"] and "site-packages" not in json.dumps(config)


def test_exported_metadata_files_come_from_the_run(exported):
    metrics = json.loads((exported / "metrics.json").read_text())
    assert metrics["AP"] == METRICS["AP"] and metrics["model"] == REPO_ID  # no local path published
    assert yaml.safe_load((exported / "vocab.yaml").read_text())["categories"][1]["split"] == "novel"
    assert yaml.safe_load((exported / "training_config.yaml").read_text())["train"] == {"steps": 3}
    summary = json.loads((exported / "data_summary.json").read_text())
    assert summary["total_samples"] == 1198
    assert summary["sources"]["synth-detection"] == {"kind": "detection", "format": "coco", "weight": 1.0,
                                                     "read": 600, "written": 598, "rejected": 2, "shards": 2}


def test_model_card_metadata_validates_and_carries_the_model_index(exported):
    card = ModelCard.load(exported / "README.md")
    meta = metadata_load(exported / "README.md")
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "ovdet"
    assert meta["pipeline_tag"] == "zero-shot-object-detection"
    assert set(meta["tags"]) == {"object-detection", "open-vocabulary", "zero-shot-object-detection", "ovdet"}
    assert meta["datasets"] == ["synth-detection", "synth-image-text"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {f"{metric}_{split}": round(100 * METRICS[metric][split], 2)
                       for metric in ("AP", "AP50") for split in ("base", "novel", "all", "hm")}
    assert all(r.task_type == "zero-shot-object-detection" for r in card.data.eval_results)
    assert f'ovdet detect --model {REPO_ID} --vocab "cat,dog,red car"' in card.text
    assert f'Detector.from_pretrained("{REPO_ID}")' in card.text
    assert "| AP | 41.25 | 20.31 | 36.01 | 27.22 |" in card.text


def test_undefined_metrics_are_dashed_in_the_table_and_left_out_of_the_model_index(bare_model, tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({**METRICS, "AP": {"base": 0.4125, "novel": -1.0, "all": 0.3601, "hm": -1.0}}))
    folder = publish(bare_model, REPO_ID, out_dir=tmp_path / "out", dry_run=True, metrics_path=path)
    card = ModelCard.load(folder / "README.md")
    assert "| AP | 41.25 | - | 36.01 | - |" in card.text  # the table ovdet eval prints (ovdet.eval.report)
    assert {r.metric_type for r in card.data.eval_results} == {"AP_base", "AP_all", "AP50_base", "AP50_novel",
                                                               "AP50_all", "AP50_hm"}


@pytest.mark.parametrize("protocol, named", [(None, "COCO protocol (pycocotools COCOeval)"),
                                              ("lvis", "LVIS federated protocol (lvis-api LVISEval"),
                                              ("lvis-fixed", "LVIS Fixed AP protocol")])
def test_card_names_the_evaluation_protocol_of_the_metrics(bare_model, tmp_path, protocol, named):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({**METRICS, **({"protocol": protocol} if protocol else {})}))
    folder = publish(bare_model, REPO_ID, out_dir=tmp_path / "out", dry_run=True, metrics_path=path)
    text = ModelCard.load(folder / "README.md").text
    assert named in text and text.count("protocol") == 1


@pytest.mark.parametrize("layout", ["run", "train", "final"])
def test_run_training_and_model_folders_publish_the_same_weights(run_dir, tmp_path, layout):
    checkpoint = {"run": run_dir, "train": run_dir / "train", "final": run_dir / "train" / "final"}[layout]
    folder = publish(checkpoint, REPO_ID, out_dir=tmp_path / "out", dry_run=True, metrics_path=run_dir / "eval" / "metrics.json")
    assert (folder / "model.safetensors").read_bytes() == (run_dir / "train" / "final" / "model.safetensors").read_bytes()


def test_default_export_folder_is_inside_the_run(run_dir):
    folder = publish(run_dir, REPO_ID, dry_run=True)
    assert folder == run_dir / "publish" / "ovdet-tiny" and (folder / "README.md").is_file()


def test_publish_refuses_a_model_without_evaluation(bare_model, tmp_path):
    with pytest.raises(OvdetError, match="no evaluation found.*--no-metrics"):
        publish(bare_model, REPO_ID, out_dir=tmp_path / "out", dry_run=True)
    assert not (tmp_path / "out").exists()


def test_no_metrics_publishes_without_an_evaluation(bare_model, tmp_path):
    folder = publish(bare_model, REPO_ID, out_dir=tmp_path / "out", dry_run=True, no_metrics=True)
    assert not (folder / "metrics.json").exists()
    card = ModelCard.load(folder / "README.md")
    assert card.data.eval_results is None and "without an evaluation" in card.text


def test_deepspeed_checkpoint_is_refused(tmp_path):
    (tmp_path / "train_state.json").write_text("{}")
    with pytest.raises(OvdetError, match="DeepSpeed training checkpoint"):
        publish(tmp_path, REPO_ID, dry_run=True)


def test_dry_run_lists_the_files_and_touches_no_network(run_dir, tmp_path, fake_hub, capsys):
    folder = publish(run_dir, REPO_ID, out_dir=tmp_path / "out", dry_run=True)
    printed = capsys.readouterr().out
    assert fake_hub["calls"] == []
    assert all(f"  {name}  (" in printed for name in EXPORTED_FILES | {"tokenizer/vocab.txt"})
    assert str(folder) in printed


def test_upload_updates_the_repo_without_deleting_remote_files(run_dir, tmp_path, fake_hub):
    folder = publish(run_dir, REPO_ID, out_dir=tmp_path / "out", private=True, revision="v1")
    names = [name for name, _, _ in fake_hub["calls"]]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    _, args, kwargs = fake_hub["calls"][0]
    assert args == (REPO_ID,) and kwargs == {"private": True, "exist_ok": True}
    assert fake_hub["calls"][1][2] == {"branch": "v1", "exist_ok": True}
    upload_kwargs = fake_hub["calls"][2][2]
    assert "delete_patterns" not in upload_kwargs
    assert upload_kwargs["folder_path"] == str(folder) and upload_kwargs["revision"] == "v1"
    assert upload_kwargs["repo_id"] == REPO_ID and "AP base 41.25" in upload_kwargs["commit_message"]


def test_token_never_reaches_errors_logs_or_the_folder(run_dir, tmp_path, fake_hub, capsys, caplog):
    fake_hub["fail"] = RuntimeError(f"400 Bad Request\nrequest headers: {{'authorization': 'Bearer {FAKE_TOKEN}'}}")
    with caplog.at_level(logging.DEBUG), pytest.raises(OvdetError) as failure:
        publish(run_dir, REPO_ID, out_dir=tmp_path / "out")
    message = str(failure.value)
    assert FAKE_TOKEN not in message and "[token]" in message and "\n" not in message
    assert failure.value.__cause__ is None and failure.value.__context__ is None
    captured = capsys.readouterr()
    assert FAKE_TOKEN not in captured.out + captured.err + caplog.text
    for path in (tmp_path / "out").rglob("*"):
        assert not path.is_file() or FAKE_TOKEN.encode() not in path.read_bytes()


@pytest.mark.parametrize("error", [
    requests.ConnectionError("Max retries exceeded with url: /api/repos/create"),
    OSError("[Errno -2] Name or service not known"),
    httpx2.ConnectError("[Errno -3] Temporary failure in name resolution"),
])
def test_unreachable_hub_fails_in_one_line_and_keeps_the_folder(run_dir, tmp_path, fake_hub, error):
    fake_hub["fail"] = error
    with pytest.raises(OvdetError) as failure:
        publish(run_dir, REPO_ID, out_dir=tmp_path / "out")
    message = str(failure.value)
    assert message.startswith("cannot reach the Hugging Face Hub") and "\n" not in message
    assert message.endswith(f"the exported folder is kept at {tmp_path / 'out'}")
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_hub_refusal_names_the_http_status(run_dir, tmp_path, fake_hub):
    response = httpx2.Response(403, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
    fake_hub["fail"] = HfHubHTTPError(f"403 Forbidden: token {FAKE_TOKEN} cannot write", response=response)
    with pytest.raises(OvdetError, match=r"refused the upload to my-org/ovdet-tiny \(HTTP 403") as failure:
        publish(run_dir, REPO_ID, out_dir=tmp_path / "out")
    assert FAKE_TOKEN not in str(failure.value)


def test_missing_token_is_a_user_error(run_dir, tmp_path, fake_hub, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(OvdetError, match="no Hugging Face token"):
        publish(run_dir, REPO_ID, out_dir=tmp_path / "out")
    assert fake_hub["calls"] == []


def test_cli_publish_dry_run_and_one_line_refusal(run_dir, bare_model, tmp_path, capsys):
    assert main(["publish", "--checkpoint", str(run_dir), "--repo-id", REPO_ID, "--out", str(tmp_path / "a"), "--dry-run"]) == 0
    assert "README.md" in capsys.readouterr().out
    assert main(["publish", "--checkpoint", str(bare_model), "--repo-id", REPO_ID, "--out", str(tmp_path / "b"), "--dry-run"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_invalid_repo_id_is_refused_before_exporting(run_dir, tmp_path):
    with pytest.raises(OvdetError, match="--repo-id"):
        publish(run_dir, "no-org-name", out_dir=tmp_path / "out", dry_run=True)
    assert not (tmp_path / "out").exists()
