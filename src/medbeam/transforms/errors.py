"""Reject records: what did not make it into the outputs, where it came from, and why."""

from __future__ import annotations

import pyarrow as pa

REJECTS_TABLE = "rejects"
REJECT_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)
_MESSAGE_LIMIT = 2000


def reject(uri: str, stage: str, error: BaseException | str, error_type: str | None = None) -> dict[str, str]:
    """One rejects-table row. `stage` names the step that refused the input (read, parse, pixels, duplicate)."""
    if isinstance(error, BaseException):
        error_type = error_type or type(error).__name__
        message = str(error) or repr(error)
    else:
        message = error
    return {
        "uri": uri,
        "stage": stage,
        "error_type": error_type or "Error",
        "message": message[:_MESSAGE_LIMIT],
    }
