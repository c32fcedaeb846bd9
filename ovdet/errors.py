"""User-facing errors.

A user error (bad input file, bad config, bad record) is an ``OvdetError`` whose message names
the file or record and the reason. The CLI prints it in one line and exits 2. Anything else is
a bug and keeps its traceback.
"""


class OvdetError(Exception):
    """An error caused by the user's input, with file/record context in the message."""


class RecordError(OvdetError):
    """One bad record: the stage rejects it (rejected.jsonl) and goes on."""

    def __init__(self, record_id: str, reason: str):
        super().__init__(f"{record_id}: {reason}")
        self.record_id = record_id
        self.reason = reason
