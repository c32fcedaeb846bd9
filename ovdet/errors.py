"""User-facing errors.

A user error (bad input file, bad config, bad record) is an ``OvdetError`` whose message names
the file or record and the reason. The CLI prints it in one line and exits 2. Anything else is
a bug and keeps its traceback.
"""


class OvdetError(Exception):
    """An error caused by the user's input, with file/record context in the message."""


class RecordError(OvdetError):
    """One bad record: the stage rejects it (rejected.jsonl) and goes on.

    ``boxes`` is how many annotated boxes are lost with it (the box-level counts balance too).
    """

    def __init__(self, record_id: str, reason: str, boxes: int = 0):
        super().__init__(f"{record_id}: {reason}")
        self.record_id = record_id
        self.reason = reason
        self.boxes = boxes


class AnnotationError(RecordError):
    """One bad annotation (box, region) of a record that is otherwise kept: the box is dropped and
    reported; ``record_id`` is the record's key, ``annotation_id`` names the annotation in it."""

    def __init__(self, record_id: str, annotation_id: str, reason: str, boxes: int = 1):
        super().__init__(record_id, reason, boxes=boxes)
        self.annotation_id = annotation_id
