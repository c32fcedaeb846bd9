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
@pytest.mark.parametrize("kind", KINDS)
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
@pytest.mark.parametrize("kind", ["owlv2", "grounding-dino"])  # OWL-ViT shares OWLv2's wrapper
def test_hf_detector_trains_on_two_deepspeed_ranks_with_zero2(kind, tiny_shards, tiny_models, tmp_path):
    out = tmp_path / "train"
    result = run_train(out, tiny_shards, "deepspeed", **hf_overrides(tiny_models[kind], train__zero_stage=2,
                                                                     loader__batch_size=2))  # fmt: skip
    assert result.returncode == 0, describe(result)
    logged = metrics(out)
    assert [m["step"] for m in logged] == list(range(1, 9))
    assert all(m["nonfinite_total"] == 0 for m in logged)
    assert final_weights(out)
