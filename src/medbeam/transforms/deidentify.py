"""Thin Beam wrappers for `dicom deidentify`: key files by SOP instance, de-identify one copy each, STOW-RS.

The logic is in medbeam.dicom.deidentify (the profile, keyed replacements), medbeam.dicom.burned_in (OCR
and redaction) and medbeam.io.stow (STOW-RS batches, reused from `dicom import`). Rejects never quote a
value from the file: messages are medbeam's own (which attribute, which step), or just an error type.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from medbeam.dicom import burned_in
from medbeam.dicom.deidentify import (
    CLEANED,
    DATE_SHIFTED,
    DUMMIED,
    EMPTIED,
    KEPT,
    PRIVATE_KEPT,
    PRIVATE_REMOVED,
    PSEUDONYMIZED,
    REMOVED,
    UID_REPLACED,
    DeidError,
    DeidOptions,
    Keys,
    deidentify,
    new_identity,
)
from medbeam.dicom.part10 import FileRef, IncompleteFileError, check_complete
from medbeam.dicom.reader import NotDicomError, read_dataset
from medbeam.io import dicomweb, files
from medbeam.io.stow import copy_outcomes, send_batch
from medbeam.transforms.errors import reject
from medbeam.transforms.progress import ProgressTicker
from medbeam.worker import quiet_pydicom, tune_allocator_for_large_images

NAMESPACE = "medbeam.dicom_deidentify"
REJECTS, WRITTEN, STOW, MAPPING = "rejects", "written", "stow", "mapping"
AUDIT_TABLE, MAPPING_TABLE, STOW_TABLE = "deid_audit", "deid_mapping", "deid_stow"
_COUNT_COLUMNS = (REMOVED, EMPTIED, DUMMIED, UID_REPLACED, PSEUDONYMIZED, DATE_SHIFTED, CLEANED, KEPT)
AUDIT_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("output_uri", pa.string()),
        ("study_instance_uid", pa.string()),
        ("series_instance_uid", pa.string()),
        ("sop_instance_uid", pa.string()),
        ("sop_class_uid", pa.string()),
        ("modality", pa.string()),
        *[(name, pa.int64()) for name in _COUNT_COLUMNS],
        ("private_removed", pa.int64()),
        ("private_kept", pa.int64()),
        ("burned_in_checked", pa.bool_()),
        ("pixels_redacted", pa.bool_()),
        ("text_boxes", pa.int64()),
        ("removed_attributes", pa.list_(pa.string())),
        ("emptied_attributes", pa.list_(pa.string())),
        ("replaced_attributes", pa.list_(pa.string())),
        ("kept_attributes", pa.list_(pa.string())),
        ("method", pa.string()),
    ]
)
MAPPING_SCHEMA = pa.schema([("kind", pa.string()), ("original", pa.string()), ("pseudonym", pa.string())])


@dataclass(frozen=True)
class KeySource:
    """Where the secret is: the *name* of an environment variable or a file path (any filesystem).

    Picklable and secret-free like DicomwebSettings: each worker reads the secret in setup(); on a
    cluster the variable or file must exist there too (a gs:// file with restricted access is simplest).
    """

    env: str | None = None
    file: str | None = None

    def __post_init__(self) -> None:
        if (self.env is None) == (self.file is None):
            raise ValueError("give the key as --key-env VAR or --key-file PATH, exactly one of the two")

    def read(self) -> bytes:
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ValueError(f"environment variable {self.env} (--key-env) is not set or empty")
            return value.encode()
        try:
            return files.read_bytes(self.file).strip()
        except Exception as exc:  # noqa: BLE001 - one line for the user, no key material involved
            raise ValueError(f"cannot read --key-file {self.file} ({type(exc).__name__})") from None

    def keys(self) -> Keys:
        secret = self.read()
        try:
            return Keys(secret)
        except ValueError:
            where = f"${self.env}" if self.env else self.file
            raise ValueError(f"the key in {where} is shorter than 16 bytes; use a long random secret") from None


def safe_message(exc: BaseException) -> str:
    """A reject message that cannot carry a value from the file: medbeam's own messages are written
    without values; anything else (pydicom, numpy, …) is named by its type only."""
    if isinstance(exc, (NotDicomError, IncompleteFileError, DeidError, burned_in.RedactionError)):
        return str(exc)
    return f"{type(exc).__name__} (details withheld: they may quote values from the file)"


def _reject(path: str, stage: str, exc: BaseException) -> dict[str, str]:
    return reject(path, stage, safe_message(exc), type(exc).__name__)


def _uid(ds: Any, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip(" \x00")


class KeyByInstanceFn(beam.DoFn):
    """(path, size) → (original SOP Instance UID, (path, size)) from a header read, or a reject."""

    def __init__(self, ticker: ProgressTicker, storage: files.Storage | None = None):
        self._ticker = ticker
        self._storage = storage or files.Storage()
        self._files_in = Metrics.counter(NAMESPACE, "files_in")
        self._rejected = Metrics.counter(NAMESPACE, "rejected_files")

    def setup(self) -> None:
        quiet_pydicom()

    def process(self, file: tuple[str, int]) -> Iterator[Any]:
        path, size = file
        self._files_in.inc()
        self._ticker.tick()
        try:
            with self._storage.open(path) as fp:
                ds = read_dataset(fp)
                check_complete(ds, size)
                sop = str(ds.get("SOPInstanceUID", "") or "").strip(" \x00")
        except Exception as exc:  # noqa: BLE001 - any failure is this file's reject
            self._rejected.inc()
            Metrics.counter(NAMESPACE, "rejected.parse").inc()
            yield TaggedOutput(REJECTS, _reject(path, "parse", exc))
            return
        missing = [k for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if not _uid(ds, k)]
        if missing:
            self._rejected.inc()
            Metrics.counter(NAMESPACE, "rejected.identity").inc()
            message = f"no {missing[0]}: the de-identified copy could not be placed or referenced"
            yield TaggedOutput(REJECTS, reject(path, "identity", message, "DeidError"))
            return
        yield sop, (path, size)


class ChooseCopyFn(beam.DoFn):
    """Copies of one instance: the first path is de-identified, the others are `duplicate` rejects."""

    def process(self, element: tuple[str, Iterable[tuple[str, int]]]) -> Iterator[Any]:
        _, copies = element
        ordered = sorted(set(copies))
        yield ordered[0]
        for path, _ in ordered[1:]:
            Metrics.counter(NAMESPACE, "rejected_files").inc()
            Metrics.counter(NAMESPACE, "rejected.duplicate").inc()
            yield TaggedOutput(
                REJECTS,
                reject(
                    path,
                    "duplicate",
                    f"same SOP instance as {ordered[0][0]}, which is the copy de-identified",
                    "Duplicate",
                ),
            )


class DeidentifyFn(beam.DoFn):
    """(path, size) → an audit row; the de-identified Part 10 file written under `output_dir` (WRITTEN: its
    path), and/or handed on for STOW-RS (STOW: (FileRef, bytes)); mapping rows (MAPPING) when asked."""

    def __init__(
        self,
        key: KeySource,
        options: DeidOptions,
        redact_mode: str,
        output_dir: str | None,
        to_store: bool,
        mapping: bool,
        ticker: ProgressTicker,
        storage: files.Storage | None = None,
    ):
        self._storage = storage or files.Storage()
        self._key = key
        self._options = options
        self._redact_mode = redact_mode
        self._output_dir = output_dir
        self._to_store = to_store
        self._mapping = mapping
        self._ticker = ticker
        self._keys: Keys | None = None
        self._counters = {
            name: Metrics.counter(NAMESPACE, name)
            for name in ("deidentified", "rejected_files", "pixels_redacted", "text_boxes", "burned_in_checked")
        }

    def setup(self) -> None:
        quiet_pydicom()
        tune_allocator_for_large_images()  # 10 MB pixel buffers reused, not mapped afresh per file
        self._keys = self._key.keys()

    def _fail(self, path: str, stage: str, exc: BaseException) -> Any:
        self._counters["rejected_files"].inc()
        Metrics.counter(NAMESPACE, f"rejected.{stage}").inc()
        return TaggedOutput(REJECTS, _reject(path, stage, exc))

    def process(self, file: tuple[str, int]) -> Iterator[Any]:
        path, size = file
        self._ticker.tick()
        try:
            with self._storage.open(path) as fp:
                ds = read_dataset(fp, defer_size=None)
        except Exception as exc:  # noqa: BLE001
            yield self._fail(path, "parse", exc)
            return
        if burned_in.is_document(ds):
            yield self._fail(path, "pixels", DeidError("an encapsulated document: its content cannot be checked"))
            return
        checked = burned_in.needs_check(ds, self._redact_mode)
        boxes = 0
        if checked:
            try:
                boxes = burned_in.redact(ds)
            except Exception as exc:  # noqa: BLE001 - unchecked pixels are never passed through
                yield self._fail(path, "pixels", exc)
                return
        try:
            result = deidentify(ds, self._keys, self._options, pixels_cleaned=boxes > 0)
            data = None
            if self._to_store:  # the bytes are needed for STOW-RS; a file alone is written as a stream
                buffer = io.BytesIO()
                ds.save_as(buffer, enforce_file_format=True)
                data = buffer.getvalue()
        except Exception as exc:  # noqa: BLE001
            yield self._fail(path, "deidentify", exc)
            return
        study, series, sop = new_identity(ds)
        output_uri = ""
        if self._output_dir is not None:
            output_uri = files.join(self._output_dir, study, series, f"{sop}.dcm")
            try:
                with self._storage.create(output_uri) as out:
                    if data is None:
                        ds.save_as(out, enforce_file_format=True)
                    else:
                        out.write(data)
            except Exception as exc:  # noqa: BLE001
                yield self._fail(path, "write", exc)
                return
            yield TaggedOutput(WRITTEN, output_uri)
        counters = self._counters
        counters["deidentified"].inc()
        if checked:
            counters["burned_in_checked"].inc()
        if boxes:
            counters["pixels_redacted"].inc()
            counters["text_boxes"].inc(boxes)
        if self._to_store:
            ref = FileRef(output_uri or f"{path}#deidentified", len(data), study, series, sop, True, False)
            yield TaggedOutput(STOW, (ref, data))
        if self._mapping:
            for kind, original, pseudonym in sorted(result.mapping):
                yield TaggedOutput(MAPPING, (kind, original, pseudonym))
        attrs = result.attributes
        replaced = set().union(
            *(attrs.get(a, set()) for a in (DUMMIED, UID_REPLACED, PSEUDONYMIZED, DATE_SHIFTED, CLEANED))
        )
        yield {
            "source_uri": path,
            "output_uri": output_uri,
            "study_instance_uid": study,
            "series_instance_uid": series,
            "sop_instance_uid": sop,
            "sop_class_uid": str(ds.get("SOPClassUID", "")),
            "modality": str(ds.get("Modality", "")),
            **{name: result.actions.get(name, 0) for name in _COUNT_COLUMNS},
            "private_removed": result.actions.get(PRIVATE_REMOVED, 0),
            "private_kept": result.actions.get(PRIVATE_KEPT, 0),
            "burned_in_checked": checked,
            "pixels_redacted": boxes > 0,
            "text_boxes": boxes,
            "removed_attributes": sorted(attrs.get(REMOVED, ())),
            "emptied_attributes": sorted(attrs.get(EMPTIED, ())),
            "replaced_attributes": sorted(replaced),
            "kept_attributes": sorted(attrs.get(KEPT, ())),
            "method": self._options.describe(),
        }


def mapping_row(element: tuple[str, str, str]) -> dict[str, str]:
    kind, original, pseudonym = element
    return {"kind": kind, "original": original, "pseudonym": pseudonym}


class StowFn(beam.DoFn):
    """A batch of (FileRef, bytes) → STOW-RS (medbeam.io.stow.send_batch, as `dicom import` sends):
    rows for the deid_stow table, rejects (stage store) for what the store did not take."""

    def __init__(self, settings: dicomweb.DicomwebSettings):
        self._settings = settings
        self._client = None
        self._counters = {
            name: Metrics.counter(NAMESPACE, name) for name in ("stored", "already_present", "store_failures")
        }

    def setup(self) -> None:
        self._client = self._settings.make_client()

    def teardown(self) -> None:
        if self._client is not None:
            self._client.session.close()

    def process(self, batch: list[tuple[FileRef, bytes]]) -> Iterator[Any]:
        data = {ref.path: payload for ref, payload in batch}
        report = send_batch(self._client, [ref for ref, _ in batch], read=data.__getitem__)
        for outcome in report.outcomes:
            for one in (outcome, *copy_outcomes(outcome)):
                if one.rejected:
                    self._counters["store_failures"].inc()
                    yield TaggedOutput(REJECTS, one.reject_row())
                else:
                    self._counters["stored" if one.outcome == "stored" else "already_present"].inc()
                    yield one.row()
