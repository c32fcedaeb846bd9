"""Evaluation: box AP for base/novel/all splits (``metrics``) and the report (``report``).

Import-light on purpose (no torch, nothing heavy at import): ``ovdet eval`` only needs numpy and
faster-coco-eval, which load when ``evaluate`` / ``evaluate_files`` is first used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate", "evaluate_files", "write_report"]


def __getattr__(name: str) -> Any:
    if name in ("evaluate", "evaluate_files"):
        from ovdet.eval import metrics

        return getattr(metrics, name)
    if name == "write_report":
        from ovdet.eval.report import write_report

        return write_report
    raise AttributeError(f"module 'ovdet.eval' has no attribute {name!r}")
