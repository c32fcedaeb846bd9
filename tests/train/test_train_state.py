"""TrainState: the counters a checkpoint saves under ``train_state``, in the format every checkpoint
so far has used, so older checkpoints resume."""

from __future__ import annotations

import json

from ovdet import dist
from ovdet.train.state import TrainState

# train_state.json of a checkpoint written by the trainer before TrainState existed (a dict then).
OLD_TRAIN_STATE_JSON = '{"step": 4, "micro_step": 5, "nonfinite_total": 1, "dataloader": {"samples_consumed": 20}}'


def test_state_dict_keeps_the_checkpoint_keys():
    assert TrainState().state_dict() == {"step": 0, "micro_step": 0, "nonfinite_total": 0}


def test_state_round_trips_through_its_state_dict():
    state = TrainState(step=7, micro_step=14, nonfinite_total=2)
    restored = TrainState()
    restored.load_state_dict(json.loads(json.dumps(state.state_dict())))
    assert restored == state


def test_a_checkpoint_written_before_train_state_existed_loads():
    state = TrainState()
    state.load_state_dict(json.loads(OLD_TRAIN_STATE_JSON))
    assert state == TrainState(step=4, micro_step=5, nonfinite_total=1)


def test_sum_over_ranks_on_one_rank_is_the_values():
    assert dist.world_size() == 1
    assert dist.sum_over_ranks([1.5, 2]) == [1.5, 2.0]
