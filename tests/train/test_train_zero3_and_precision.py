"""ZeRO-3 trains on 2 ranks, exports consolidated weights that load back; fp16 on a CPU is a
one-line user error (DeepSpeed's CPU accelerator has fp32 and bf16 only)."""

import pytest
import torch
from train_runs import describe, metrics, run_train

from ovdet.infer import Detector


@pytest.mark.slow
def test_zero3_two_ranks_export_loadable_weights(tiny_shards, tmp_path):
    out = tmp_path / "train"
    result = run_train(out, tiny_shards, "deepspeed", train__zero_stage=3, train__steps=4)
    assert result.returncode == 0, describe(result)
    assert metrics(out)[-1]["step"] == 4
    detector = Detector.from_pretrained(out / "final")
    assert all(torch.isfinite(p).all() for p in detector.model.parameters())


def test_fp16_on_cpu_is_a_user_error(tiny_shards, tmp_path):
    result = run_train(tmp_path / "train", tiny_shards, train__precision="fp16")
    assert result.returncode == 2
    assert "fp16 needs a GPU" in result.stderr and "Traceback" not in result.stderr
