"""`ovdet pseudo-label` (pipelines/pseudo_label.py): the trainer's 8-step reference model labels the
tiny world's image-text shards. Here because the stage needs a trained model: the session's
``uninterrupted_run`` (tests/train/conftest.py).

The 8-step model scores everything low, so the rule's threshold is 0 here: what is tested is the
rule's mechanics (caption names only, top-k per name, scores kept), resume, determinism across
worker counts, the counts balancing, training on the output, and the bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from ovdet.pipelines.pseudo_label import read_shard, run_pseudo_label_stage

from ovdet.config import PseudoLabelConfig
from ovdet.data.records import Record
from ovdet.data.shards import MANIFEST, write_tar_atomic
from ovdet.errors import OvdetError
from ovdet.fileio import sha256_file

pytestmark = pytest.mark.slow
RULE = {"threshold": 0.0, "top_k": 2, "negatives": 6}


@pytest.fixture(scope="module")
def labelled(uninterrupted_run, tiny_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pseudo") / "two-workers"
    run_pseudo_label_stage(str(uninterrupted_run), tiny_shards, out, PseudoLabelConfig(**RULE, num_workers=2),
                           progress=False)  # fmt: skip
    return out


def samples(folder: Path) -> dict[str, tuple[Record, bytes]]:
    return {record.key: (record, jpeg) for tar in sorted(folder.rglob("*.tar")) for record, jpeg in read_shard(tar)}


def test_boxes_name_only_caption_names_with_scores_and_provenance_and_counts_balance(labelled, tiny_shards,
                                                                                    uninterrupted_run):
    manifest = json.loads((labelled / MANIFEST).read_text())
    (name, source), = manifest["sources"].items()
    assert name == "pseudo-synth-image-text" and source["kind"] == "detection"
    assert source["read"] == 32 == source["written"] + source["rejected"] and source["written"] > 0
    rejected = [json.loads(line) for line in (labelled / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == source["rejected"] and sum(source["reasons"].values()) == source["rejected"]
    assert manifest["pseudo_label"]["weights_sha256"] == sha256_file(uninterrupted_run / "final" / "model.safetensors")
    assert manifest["pseudo_label"]["rule"]["threshold"] == 0.0
    inputs = samples(tiny_shards / "synth-image-text")
    written = samples(labelled)
    assert set(written) | {row["key"] for row in rejected} == set(inputs)
    for key, (record, jpeg) in written.items():
        source_record, source_jpeg = inputs[key]
        assert jpeg == source_jpeg and record.kind == "detection" and record.source == name
        caption_names = source_record.caption_labels()
        assert set(record.category_names) <= set(caption_names)
        assert all(record.category_names.count(n) <= RULE["top_k"] for n in caption_names)
        # every caption name stays with the image, boxed or not, so the loader never makes it a negative
        assert [p.text for p in record.phrases] == caption_names and not any(p.box_indices for p in record.phrases)
        provenance = record.meta["pseudo_label"]
        assert len(provenance["scores"]) == len(record.boxes) == len(record.category_names)
        assert provenance["from"] == "synth-image-text" and provenance["weights_sha256"]
        assert all(0 <= x1 < x2 <= record.width and 0 <= y1 < y2 <= record.height for x1, y1, x2, y2 in record.boxes)
    assert sum(len(r.boxes) for r, _ in written.values()) == source["boxes_written"]


def test_rerun_skips_finished_shards_and_one_worker_writes_the_same_bytes(labelled, uninterrupted_run, tiny_shards,
                                                                          tmp_path):
    before = {p: (p.stat().st_mtime_ns, sha256_file(p)) for p in labelled.rglob("*.tar")}
    run_pseudo_label_stage(str(uninterrupted_run), tiny_shards, labelled, PseudoLabelConfig(**RULE, num_workers=2),
                           progress=False)  # fmt: skip
    assert {p: (p.stat().st_mtime_ns, sha256_file(p)) for p in labelled.rglob("*.tar")} == before
    one = tmp_path / "one-worker"
    run_pseudo_label_stage(str(uninterrupted_run), tiny_shards, one, PseudoLabelConfig(**RULE, num_workers=1),
                           progress=False)  # fmt: skip
    assert {p.relative_to(one): sha256_file(p) for p in one.rglob("*.tar")} == {
        p.relative_to(labelled): digest for p, (_, digest) in before.items()}
    with pytest.raises(OvdetError, match="another model or rule; pass --overwrite"):
        run_pseudo_label_stage(str(uninterrupted_run), tiny_shards, one, PseudoLabelConfig(threshold=0.5),
                               progress=False)  # fmt: skip


def test_training_mixes_the_pseudo_labels_like_any_detection_source(labelled, tiny_shards, in_process, tmp_path):
    from ovdet.config import LoaderConfig
    from ovdet.data.loader import open_shard_sets

    sets = {s.name: s for s in open_shard_sets([tiny_shards, labelled], LoaderConfig())}
    assert sets["pseudo-synth-image-text"].kind == "detection" and sets["pseudo-synth-image-text"].names
    from train_runs import DEMO_CONFIG, tiny_overrides

    from ovdet.config import load_config
    from ovdet.train.trainer import run_training

    overrides = tiny_overrides(tiny_shards, loader__sources="[synth-detection,pseudo-synth-image-text]",
                               train__steps=2, train__checkpoint_every=0)  # fmt: skip
    cfg = load_config(str(DEMO_CONFIG), overrides)
    summary = run_training(cfg.train, cfg.model, cfg.loss, cfg.loader, [tiny_shards, labelled], tmp_path / "train",
                           {}, progress=False)  # fmt: skip
    assert summary["step"] == 2 and summary["stopped"] == "completed"  # in_process undoes the launcher variables


def blanked_copy(tiny_shards: Path, out: Path, blank: int) -> tuple[Path, list[str]]:
    """The image-text source of the tiny shards with its first ``blank`` captions emptied, and their keys."""
    manifest = json.loads((tiny_shards / MANIFEST).read_text())
    source = manifest["sources"]["synth-image-text"]
    for index, shard in enumerate(source["shards"]):
        rows = list(read_shard(tiny_shards / shard["path"]))
        if index == 0:
            for record, _ in rows[:blank]:
                record.caption, record.phrases = "", []
            keys = [record.key for record, _ in rows[:blank]]
        write_tar_atomic(out / shard["path"], [(r.key, jpeg, r.to_json()) for r, jpeg in rows])
        shard["sha256"] = sha256_file(out / shard["path"])
    (out / MANIFEST).write_text(json.dumps({**manifest, "sources": {"synth-image-text": source}}))
    return out, keys


def test_empty_captions_are_rejected_by_name_and_counted(uninterrupted_run, tiny_shards, tmp_path):
    shards, blanked = blanked_copy(tiny_shards, tmp_path / "shards", blank=3)
    manifest = run_pseudo_label_stage(str(uninterrupted_run), shards, tmp_path / "out",
                                      PseudoLabelConfig(**RULE, num_workers=1), progress=False)  # fmt: skip
    source = manifest["sources"]["pseudo-synth-image-text"]
    assert source["reasons"]["empty caption"] == 3 and source["read"] == source["written"] + source["rejected"] == 32
    rows = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    empty = [row for row in rows if row["reason"].startswith("empty caption")]
    assert sorted(row["key"] for row in empty) == sorted(blanked)
    assert all(row["shard"].endswith("synth-image-text-000000.tar") for row in empty)


def test_a_model_that_cannot_encode_the_vocabulary_fails_in_one_line_before_any_worker(
    uninterrupted_run, tiny_shards, tmp_path, monkeypatch
):
    from ovdet.infer import Detector

    def broken(self, vocabulary, templates=None, synonyms=None):
        raise ValueError("token id 30522 is out of range for the embedding table")

    monkeypatch.setattr(Detector, "class_embeddings", broken)
    with pytest.raises(OvdetError, match=r"cannot encode the vocabulary of the shards \(\d+ names.*out of range"):
        run_pseudo_label_stage(str(uninterrupted_run), tiny_shards, tmp_path / "out", PseudoLabelConfig(**RULE),
                               progress=False)  # fmt: skip
    assert not list((tmp_path / "out").rglob("*.tar"))


@pytest.mark.parametrize(("sources", "message"), [
    (["nope"], r"no source 'nope'"),
    (["synth-detection"], r"source 'synth-detection' is detection, not image_text"),
])  # fmt: skip
def test_sources_that_are_missing_or_not_image_text_are_refused(uninterrupted_run, tiny_shards, tmp_path, sources,
                                                                message):
    with pytest.raises(OvdetError, match=message):
        run_pseudo_label_stage(str(uninterrupted_run), tiny_shards, tmp_path / "out", PseudoLabelConfig(),
                               sources=sources, progress=False)  # fmt: skip


def test_a_folder_that_is_not_a_model_is_named(tiny_shards, tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(OvdetError, match="model: not a model folder"):
        run_pseudo_label_stage(str(tmp_path / "model"), tiny_shards, tmp_path / "out", PseudoLabelConfig(),
                               progress=False)  # fmt: skip
    shutil.rmtree(tmp_path / "model")
