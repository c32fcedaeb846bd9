"""The training loop's counters (torchtitan's ``TrainState``): saved in every checkpoint under
``train_state`` (and readable in ``train_state.json``), restored on resume."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class TrainState:
    """What a resumed run needs to continue where the saved one stopped, and nothing else."""

    step: int = 0  # optimizer steps taken
    micro_step: int = 0  # forward/backward passes taken (skipped non-finite ones not counted)
    nonfinite_total: int = 0  # micro-steps skipped for a non-finite loss

    def state_dict(self) -> dict[str, int]:
        return {field_.name: getattr(self, field_.name) for field_ in fields(self)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore from ``state_dict()``'s keys (every checkpoint so far has written these three);
        a key a checkpoint lacks keeps its default, a key this class does not know is ignored."""
        for field_ in fields(self):
            setattr(self, field_.name, int(saved.get(field_.name, field_.default)))
