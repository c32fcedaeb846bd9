"""``transformers`` detectors train through ``ovdet train`` like the default model: the loss falls on
one rank, two DeepSpeed ranks (ZeRO-2) run, a SIGKILLed one-rank run resumes bitwise, and the final
folder is a ``save_pretrained`` folder."""

from __future__ import annotations

import os
import signal

import pytest
from train_runs import describe, final_weights, latest_tag, metrics, run_train, start_train, wait_until

from ovdet.models.hf.tiny import write_tiny_model

KINDS = ("owlv2", "owlvit", "grounding-dino")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-hf")
    return {kind: write_tiny_model(root / kind, kind) for kind in KINDS}


def hf_overrides(folder, **extra) -> dict:
    return {"model__name": f"hf:{folder}", **extra}


@pytest.mark.slow
# OWL-ViT is OWLv2's wrapper class; it trains and publishes in tests/publish/test_publish_hf.py
@pytest.mark.parametrize("kind", ["owlv2", "grounding-dino"])
def test_hf_detector_trains_on_one_rank_and_resumes_bitwise(kind, tiny_shards, tiny_models, tmp_path):
    from transformers import AutoModelForZeroShotObjectDetection

    reference = tmp_path / "reference"
    result = run_train(reference, tiny_shards, **hf_overrides(tiny_models[kind], train__steps=40,
                                                              train__checkpoint_every=4))  # fmt: skip
    assert result.returncode == 0, describe(result)
    losses = [m["loss"] for m in metrics(reference)]
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10]), losses
    final = reference / "final"
    assert {"config.json", "model.safetensors", "model_spec.json"} <= {p.name for p in final.iterdir()}
    AutoModelForZeroShotObjectDetection.from_pretrained(final)  # a save_pretrained folder

    out = tmp_path / "train"
    process = start_train(out, tiny_shards, **hf_overrides(tiny_models[kind], train__steps=40,
                                                           train__checkpoint_every=4))  # fmt: skip
    wait_until(lambda: latest_tag(out) == "step-0000008", process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "final").exists()
    result = run_train(out, tiny_shards, **hf_overrides(tiny_models[kind], train__steps=40,
                                                        train__checkpoint_every=4))  # fmt: skip
    assert result.returncode == 0, describe(result)
    assert "resumed from" in result.stderr
    resumed, expected = final_weights(out), final_weights(reference)
    assert resumed.keys() == expected.keys()
    assert all(bool((resumed[k] == expected[k]).all()) for k in expected)
    assert [m["loss"] for m in metrics(out)] == losses


@pytest.mark.slow
# OWL-ViT shares OWLv2's wrapper; OWL in bf16 is about 3x slower than fp32 on this CPU, GD is not
@pytest.mark.parametrize(("kind", "precision"), [("owlv2", "fp32"), ("grounding-dino", "bf16")])
def test_hf_detector_trains_on_two_ranks_with_zero2_and_periodic_eval(kind, precision, tiny_shards, tiny_models,
                                                                      tmp_path):
    world = tiny_shards.parent / "world"
    out = tmp_path / "train"
    result = run_train(out, tiny_shards, "deepspeed", **hf_overrides(
        tiny_models[kind], train__zero_stage=2, train__precision=precision, loader__batch_size=2, eval__every=4,
        eval__gt=world / "eval.json", eval__image_root=world / "images", eval__vocab=world / "vocab.yaml",
        eval__max_images=4))  # fmt: skip
    assert result.returncode == 0, describe(result)
    logged = metrics(out)
    steps = [m for m in logged if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 9))
    assert all(m["nonfinite_total"] == 0 for m in steps)
    validations = [m for m in logged if "val/AP_all" in m]
    assert [m["step"] for m in validations] == [4, 8]
    assert all(0.0 <= m["val/AP_all"] <= 1.0 for m in validations)
    assert final_weights(out)


@pytest.mark.slow
def test_hf_detector_trains_with_zero3_and_exports_a_transformers_folder(tiny_shards, tiny_models, tmp_path):
    from transformers import AutoModelForZeroShotObjectDetection

    out = tmp_path / "train"
    result = run_train(out, tiny_shards, "deepspeed", **hf_overrides(tiny_models["owlv2"], train__zero_stage=3,
                                                                     train__steps=4, loader__batch_size=2))  # fmt: skip
    assert result.returncode == 0, describe(result)
    module = AutoModelForZeroShotObjectDetection.from_pretrained(out / "final")  # consolidated, not shards
    assert all(bool(p.isfinite().all()) for p in module.parameters())
    assert metrics(out)[-1]["step"] == 4
