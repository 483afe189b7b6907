"""STOW-RS batches, without Beam: plan them, send one, and say what happened to each of its files.

Why our own STOW-RS rather than dicomweb-client's ``store_instances`` (which takes pydicom datasets and
writes them again): the files' bytes are sent as read (bare datasets only get a preamble and file meta),
batches are bounded by count *and* bytes (`plan_batches`), a batch the server refuses as a whole is
halved to find the file it chokes on, and every file ends in exactly one Outcome, whatever the answer.

Idempotence ("already present"): a store may answer a STOW-RS of an instance it already holds with a
plain success (Orthanc does: status 200, the instance in ReferencedSOPSequence, nothing stored again),
with 409 and a failure reason (Azure, 0xB00E), or anything in between. So before each STOW-RS the batch's
SOP Instance UIDs are looked up with one QIDO-RS query (UID list matching); those found count as
"already present" and are not sent. A failure reason that means duplicate in the STOW-RS answer counts
the same way (the second line of defence, and the only one with ``check_existing=False``). Copies of one
instance among the input files are sent once; the others share that copy's fate (`copy_outcomes`):
already present (outcome ``duplicate_in_input``) if it made it into the store, rejected with it if not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from medbeam.dicom.part10 import FileRef, part10_bytes
from medbeam.io import dicomweb, files
from medbeam.transforms.errors import reject

logger = logging.getLogger(__name__)

IMPORT_TABLE = "dicom_import"
IMPORT_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("study_instance_uid", pa.string()),
        ("series_instance_uid", pa.string()),
        ("sop_instance_uid", pa.string()),
        ("outcome", pa.string()),
        ("detail", pa.string()),
    ]
)
STORED, ALREADY_PRESENT, DUPLICATE_IN_INPUT = "stored", "already_present", "duplicate_in_input"
#: Batch groups hold about this many batches each: one partial batch per group at most.
BATCHES_PER_GROUP = 4


def plan_batches(refs: Iterable[FileRef], max_instances: int, max_bytes: int) -> Iterator[list[FileRef]]:
    """Consecutive batches of at most `max_instances` files and `max_bytes` bytes (a larger file goes alone).

    Streams: never holds more than one batch.
    """
    batch: list[FileRef] = []
    total = 0
    for ref in refs:
        if batch and (len(batch) >= max_instances or total + ref.size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(ref)
        total += ref.size
    if batch:
        yield batch


def batch_groups(instance_count: int, max_instances: int) -> int:
    return max(1, math.ceil(instance_count / (max_instances * BATCHES_PER_GROUP)))


@dataclass
class Outcome:
    """What happened to one file of a batch."""

    ref: FileRef
    outcome: str  # STORED, ALREADY_PRESENT or "rejected"
    detail: str = ""
    stage: str = ""
    error_type: str = ""
    #: the server, not the data, is why: a rerun may succeed
    server_failure: bool = False

    @property
    def rejected(self) -> bool:
        return self.outcome == "rejected"

    def row(self) -> dict[str, str]:
        return import_row(self.ref, self.outcome, self.detail)

    def reject_row(self) -> dict[str, str]:
        return reject(self.ref.path, self.stage, self.detail, self.error_type)


def import_row(ref: FileRef, outcome: str, detail: str = "") -> dict[str, str]:
    return {
        "uri": ref.path,
        "study_instance_uid": ref.study,
        "series_instance_uid": ref.series,
        "sop_instance_uid": ref.sop,
        "outcome": outcome,
        "detail": detail,
    }


@dataclass
class BatchReport:
    outcomes: list[Outcome] = field(default_factory=list)
    stow_requests: int = 0
    bytes_sent: int = 0

    @property
    def all_server_failures(self) -> bool:
        return bool(self.outcomes) and all(o.server_failure for o in self.outcomes)


#: Statuses of a whole STOW-RS/QIDO-RS request refused because of what was sent (the data), not the server.
DATA_STATUSES = frozenset({400, 409, 413, 422})


def is_server_failure(error: dicomweb.DicomwebError) -> bool:
    """The server, not the data, is why the request failed: no answer, 5xx/408/429 after the retries,
    credentials refused, or a refusal like 404/405/415 that says the URL is not a STOW-RS endpoint."""
    return error.unreachable or (error.status is not None and error.status not in DATA_STATUSES)


def _rejected(ref: FileRef, stage: str, error: BaseException | str, error_type: str | None = None) -> Outcome:
    if isinstance(error, dicomweb.DicomwebError):
        return Outcome(ref, "rejected", str(error), stage, error.error_type, is_server_failure(error))
    if isinstance(error, dicomweb.DicomwebConfigError):  # e.g. the token file vanished mid-run
        return Outcome(ref, "rejected", str(error), stage, type(error).__name__, True)
    if isinstance(error, BaseException):
        return Outcome(ref, "rejected", str(error) or repr(error), stage, error_type or type(error).__name__)
    return Outcome(ref, "rejected", error, stage, error_type or "Error")


def copy_outcomes(outcome: Outcome) -> list[Outcome]:
    """The outcomes of the copies a sent file stood for: present if it made it, rejected with it if not."""
    chosen = outcome.ref
    result = []
    for path in chosen.copies:
        copy = chosen._replace(path=path, copies=())
        if outcome.rejected:
            detail = f"a copy of {chosen.path}, which was not sent: {outcome.detail}"
            result.append(Outcome(copy, "rejected", detail, outcome.stage, outcome.error_type, outcome.server_failure))
        else:
            detail = f"same SOP instance as {chosen.path}, which is the copy sent"
            result.append(Outcome(copy, DUPLICATE_IN_INPUT, detail))
    return result


def send_batch(
    client: Any,
    batch: Sequence[FileRef],
    *,
    check_existing: bool = True,
    read: Callable[[str], bytes] = files.read_bytes,
) -> BatchReport:
    """Skip the files whose instance the store has, read the others, STOW-RS them in one request (halved
    on 400/413). Never raises: every file gets exactly one Outcome.
    """
    report = BatchReport()
    to_send = list(batch)
    if to_send and check_existing:
        try:
            existing = dicomweb.find_existing_instances(client, [ref.sop for ref in to_send])
        except dicomweb.DicomwebConfigError as exc:
            report.outcomes += [_rejected(ref, "store", exc) for ref in to_send]
            return report
        except dicomweb.DicomwebError as exc:
            if is_server_failure(exc):
                report.outcomes += [_rejected(ref, "store", exc) for ref in to_send]
                return report
            logger.warning("could not ask the store which instances it has (%s); sending them all", exc)
            existing = set()
        for ref in to_send:
            if ref.sop in existing:
                report.outcomes.append(Outcome(ref, ALREADY_PRESENT, "the store had it (QIDO-RS)"))
        to_send = [ref for ref in to_send if ref.sop not in existing]
    ready: list[tuple[FileRef, bytes]] = []
    for ref in to_send:
        try:
            data = read(ref.path)
        except Exception as exc:  # noqa: BLE001 - this file's reject
            report.outcomes.append(_rejected(ref, "read", exc))
            continue
        if not ref.part10:
            try:
                data = part10_bytes(data)
            except Exception as exc:  # noqa: BLE001
                report.outcomes.append(_rejected(ref, "parse", exc))
                continue
        ready.append((ref, data))
    if ready:
        _stow(client, ready, report)
    return report


def _stow(client: Any, ready: list[tuple[FileRef, bytes]], report: BatchReport) -> None:
    report.stow_requests += 1
    report.bytes_sent += sum(len(data) for _, data in ready)
    try:
        result = dicomweb.store_instances_bytes(client, [data for _, data in ready])
    except dicomweb.DicomwebError as exc:
        if exc.status in (400, 413) and len(ready) > 1:  # find the file the server chokes on
            half = len(ready) // 2
            _stow(client, ready[:half], report)
            _stow(client, ready[half:], report)
        else:
            report.outcomes += [_rejected(ref, "store", exc) for ref, _ in ready]
        return
    except Exception as exc:  # noqa: BLE001 - e.g. a secret that vanished mid-run: the batch's rejects
        report.outcomes += [_rejected(ref, "store", exc) for ref, _ in ready]
        return
    for ref, _ in ready:
        if ref.sop in result.stored:
            warning = result.stored[ref.sop]
            report.outcomes.append(Outcome(ref, STORED, f"stored with {warning}" if warning else ""))
        elif ref.sop in result.failed:
            reason = result.failed[ref.sop]
            text = dicomweb.failure_reason_text(reason)
            if reason in dicomweb.DUPLICATE_FAILURE_REASONS:
                report.outcomes.append(Outcome(ref, ALREADY_PRESENT, f"the store had it ({text})"))
            else:
                report.outcomes.append(
                    _rejected(
                        ref, "store", f"HTTP {result.status}: the server refused the instance: {text}", "StowFailure"
                    )
                )
        elif result.status == 200:  # all stored, even if the answer does not list them
            report.outcomes.append(Outcome(ref, STORED))
        else:
            report.outcomes.append(
                _rejected(
                    ref, "store", f"HTTP {result.status}: the answer does not mention this instance", "StowFailure"
                )
            )
