"""DICOM files → a DICOMweb store (STOW-RS), idempotently, with rejects and counts that reconcile.

    match files → reshuffle → inspect headers ─┬─ refs → group by SOP Instance UID → choose one copy ─┐
                                               └─ rejects (not DICOM, truncated, no UIDs)            │
        ┌────────────────────────────────────────────────────────────────────────────────────────────┘
        └→ batch groups (hash of the SOP UID) → batches bounded by count and bytes → reshuffle
           → per batch: read files, ask the store which it has (QIDO-RS), STOW-RS the rest in one request
           → rows + rejects: WriteTables(dicom_import, rejects)

Only paths and a few UIDs travel through the shuffles; each file is read twice (its header when
inspected, all of it when sent), never carried as bytes between steps.

Idempotence ("already present"): a store may answer a STOW-RS of an instance it already holds with a
plain success (Orthanc does: status 200, the instance in ReferencedSOPSequence, nothing stored again),
with 409 and a failure reason (Azure, 0xB00E), or anything in between. So before each STOW-RS the batch's
SOP Instance UIDs are looked up with one QIDO-RS query (UID list matching); those found count as
"already present" and are not sent. A failure reason that means duplicate in the STOW-RS answer counts
the same way (the second line of defence, and the only one with ``check_existing=False``). Copies of one
instance among the input files are sent once (lossless and Part 10 copies preferred, then the smallest
path); the others share that copy's fate: already present (outcome ``duplicate_in_input``) if it made it
into the store, rejected with it if not.

Every input file ends in exactly one of: stored, already present (in the store, or a copy of an input
file that is), rejected: ``files_in == stored + already_present + duplicates + rejected_files``.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import apache_beam as beam
import pyarrow as pa
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import AsSingleton, TaggedOutput
from pydicom import uid as uids
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset

from medbeam.dicom.identity import is_lossy
from medbeam.dicom.reader import NotDicomError, has_dicm_prefix, read_dataset
from medbeam.io import dicomweb, files, tables
from medbeam.pipelines.common import counters_from, is_local_runner, local_beam_args
from medbeam.transforms.errors import REJECT_SCHEMA, REJECTS_TABLE, reject
from medbeam.transforms.progress import ProgressMonitor, ProgressTicker

logger = logging.getLogger(__name__)

NAMESPACE = "medbeam.dicom_import"
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
REJECTS = "rejects"
DEFAULT_BATCH_INSTANCES = 50
DEFAULT_PARQUET_DIR = "medbeam-import"
DEFAULT_BATCH_BYTES = 32 * 1024 * 1024
#: Batch groups hold about this many batches each: one partial batch per group at most.
BATCHES_PER_GROUP = 4
#: After this many batches in a row failed because of the server, a worker stops retrying (1 attempt each)
#: until a request succeeds again: a down server costs seconds, not the full backoff for every batch.
BREAKER_AFTER = 3
#: Local runs with at least this many batches send them from several threads at once.
AUTO_THREADS_MIN_BATCHES = 4
AUTO_THREADS = 4

_UNDEFINED_LENGTH = 0xFFFFFFFF
_USABLE_UID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")


# ---------------------------------------------------------------------------------------------------
# Configuration and counts


@dataclass
class ImportConfig:
    """Everything `medbeam dicom import` takes; usable from Python as a library call."""

    inputs: list[str]
    dicomweb: dicomweb.DicomwebSettings
    #: Where the dicom_import and rejects tables go (Parquet shards, any filesystem). Default: next to
    #: duckdb_path (`out/import.duckdb` → `out/import_parquet/`), else DEFAULT_PARQUET_DIR.
    parquet_dir: str | None = None
    duckdb_path: str | None = None
    max_batch_instances: int = DEFAULT_BATCH_INSTANCES
    max_batch_bytes: int = DEFAULT_BATCH_BYTES
    #: Ask the store which instances it has before sending (QIDO-RS); off: send all, trust its answer.
    check_existing: bool = True
    #: One QIDO-RS request before the pipeline: refused credentials stop the run at once.
    preflight: bool = True
    rows_per_shard: int = tables.DEFAULT_ROWS_PER_SHARD
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("give at least one input pattern")
        if self.max_batch_instances < 1:
            raise ValueError("a batch holds at least 1 instance")
        if self.max_batch_bytes < 1:
            raise ValueError("the batch byte limit must be positive")
        if self.duckdb_path is not None and files.has_scheme(self.duckdb_path):
            raise ValueError("--duckdb must be a local file; use --parquet-dir for gs:// or s3:// tables")
        if self.parquet_dir is None:
            self.parquet_dir = tables.default_parquet_dir(self.duckdb_path) if self.duckdb_path else DEFAULT_PARQUET_DIR
        if self.rows_per_shard < 1:
            raise ValueError("rows_per_shard must be at least 1")


@dataclass
class ImportCounts:
    files_in: int = 0
    stored: int = 0
    already_present: int = 0
    duplicates: int = 0
    rejected_files: int = 0
    #: rejected because of the server: no answer, 5xx/429 after the retries, credentials refused, or a
    #: request refused as a whole for a reason that is not the data (404, 405, 415, …)
    server_failures: int = 0
    batches: int = 0
    stow_requests: int = 0
    bytes_sent: int = 0

    @property
    def present(self) -> int:
        """Already present in the store, counting copies of an instance another input file carries."""
        return self.already_present + self.duplicates

    @property
    def failed(self) -> bool:
        """The run did not complete: some files could not be sent because of the server. Rerun to retry."""
        return self.server_failures > 0

    def summary(self) -> str:
        line = (
            f"{self.files_in} in, {self.stored} stored, {self.present} already present, {self.rejected_files} rejected"
        )
        extras = []
        if self.duplicates:
            extras.append(f"{self.duplicates} of the already present are copies of another input file")
        if self.server_failures:
            extras.append(f"{self.server_failures} rejected because of the server, not the data")
        return line + (f" ({'; '.join(extras)})" if extras else "")


# ---------------------------------------------------------------------------------------------------
# Pure logic: inspect a file, choose among copies, plan batches, send a batch


class FileRef(NamedTuple):
    """One input file that holds a sendable instance: where it is and which instance it holds."""

    path: str
    size: int
    study: str
    series: str
    sop: str
    part10: bool
    lossy: bool
    #: Other input files with the same SOP Instance UID: not sent, they share this file's fate.
    copies: tuple[str, ...] = ()


class IncompleteFileError(ValueError):
    """The file ends before the data its header announces (truncated copy)."""


class NotSendableError(ValueError):
    """A DICOM dataset a store cannot take: a UID that identifies it is missing or unusable."""


def check_complete(ds: Dataset, size: int) -> None:
    """Raise IncompleteFileError if a top-level value runs past the end of the file (`size` bytes).

    Works on a header-only read: values left on disk keep their offsets, so nothing large is loaded.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == uids.DeflatedExplicitVRLittleEndian:
        return  # offsets are in the inflated stream; a cut deflate stream fails to parse anyway
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields elements, and would read deferred values
        element = ds.get_item(tag, keep_deferred=True)
        if not isinstance(element, RawDataElement) or element.length == _UNDEFINED_LENGTH:
            continue
        if element.value is None:
            end = element.value_tell + element.length
            if end > size:
                raise IncompleteFileError(f"truncated: element {tag} needs bytes up to {end}, the file has {size}")
        elif isinstance(element.value, bytes) and len(element.value) < element.length:
            raise IncompleteFileError(
                f"truncated: element {tag} announces {element.length} bytes, the file holds {len(element.value)}"
            )


def _uid(ds: Dataset, keyword: str, fallback: Any = None) -> str:
    value = str(ds.get(keyword, "") or fallback or "").strip(" \x00")
    if not value:
        raise NotSendableError(f"no {keyword}: a DICOMweb store cannot take the instance")
    if not _USABLE_UID.match(value) or ".." in value:
        raise NotSendableError(f"{keyword} {value[:80]!r} is not a usable UID")
    return value


def inspect_file(fp: Any, path: str, size: int) -> FileRef:
    """Header-only look at an open file: is it a complete DICOM instance a store can take, and which?

    Raises NotDicomError, IncompleteFileError or NotSendableError.
    """
    head = fp.read(132)
    fp.seek(0)
    ds = read_dataset(fp)
    check_complete(ds, size)
    meta = getattr(ds, "file_meta", None)
    sop_class_fallback = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    _uid(ds, "SOPClassUID", sop_class_fallback)
    return FileRef(
        path=path,
        size=size,
        study=_uid(ds, "StudyInstanceUID"),
        series=_uid(ds, "SeriesInstanceUID"),
        sop=_uid(ds, "SOPInstanceUID"),
        part10=has_dicm_prefix(head),
        lossy=is_lossy(ds),
    )


def part10_bytes(data: bytes) -> bytes:
    """A bare dataset (no preamble, no file meta) wrapped as a Part 10 file, which STOW-RS requires.

    The dataset's encoding is kept; only the preamble and a file meta group are added.
    """
    ds = read_dataset(io.BytesIO(data), defer_size=None)
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        if implicit:
            meta.TransferSyntaxUID = uids.ImplicitVRLittleEndian
        else:
            meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian if little else uids.ExplicitVRBigEndian
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def choose_copy(refs: Iterable[FileRef]) -> tuple[FileRef, list[FileRef]]:
    """(the copy to send, the others): lossless first, then Part 10, then the smallest path."""
    ordered = sorted(set(refs), key=lambda r: (r.lossy, not r.part10, r.path))
    return ordered[0], ordered[1:]


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


# ---------------------------------------------------------------------------------------------------
# Beam


class InspectFileFn(beam.DoFn):
    """(path, size) → FileRef keyed by SOP Instance UID, or a reject (not DICOM, truncated, no UIDs)."""

    def __init__(self, ticker: ProgressTicker):
        self._ticker = ticker
        self._files_in = Metrics.counter(NAMESPACE, "files_in")
        self._rejected = Metrics.counter(NAMESPACE, "rejected_files")

    def process(self, file: tuple[str, int]) -> Iterator[Any]:
        path, size = file
        self._files_in.inc()
        try:
            with files.open_for_read(path) as fp:
                ref = inspect_file(fp, path, size)
        except Exception as exc:  # noqa: BLE001 - any failure is this file's reject, the run goes on
            self._rejected.inc()
            stage = "parse" if isinstance(exc, (NotDicomError, IncompleteFileError, NotSendableError)) else "read"
            yield TaggedOutput(REJECTS, reject(path, stage, exc))
        else:
            yield ref.sop, ref
        finally:
            self._ticker.tick()


class ChooseCopyFn(beam.DoFn):
    """One file per SOP Instance UID is sent; it carries the paths of the other copies along."""

    def process(self, element: tuple[str, Iterable[FileRef]]) -> Iterator[FileRef]:
        _, refs = element
        chosen, others = choose_copy(refs)
        yield chosen._replace(copies=tuple(o.path for o in others))


class StowBatchFn(beam.DoFn):
    """A batch of FileRefs → rows for the dicom_import table, and rejects. The client is made in setup()."""

    def __init__(self, settings: dicomweb.DicomwebSettings, check_existing: bool, ticker: ProgressTicker):
        self._settings = settings
        self._check_existing = check_existing
        self._ticker = ticker
        self._client = self._fail_fast_client = None
        self._failed_batches = 0
        self._counters = {
            name: Metrics.counter(NAMESPACE, name)
            for name in (
                "stored",
                "already_present",
                "duplicates",
                "rejected_files",
                "server_failures",
                "batches",
                "stow_requests",
                "bytes_sent",
            )
        }

    def setup(self) -> None:
        self._client = self._settings.make_client()
        one_try = dataclasses.replace(self._settings.retry, attempts=1)
        self._fail_fast_client = dataclasses.replace(self._settings, retry=one_try).make_client()
        self._failed_batches = 0

    def teardown(self) -> None:
        for client in (self._client, self._fail_fast_client):
            if client is not None:
                client.session.close()

    def process(self, batch: list[FileRef]) -> Iterator[Any]:
        fail_fast = self._failed_batches >= BREAKER_AFTER
        client = self._fail_fast_client if fail_fast else self._client
        report = send_batch(client, batch, check_existing=self._check_existing)
        self._failed_batches = self._failed_batches + 1 if report.all_server_failures else 0
        counters = self._counters
        counters["batches"].inc()
        counters["stow_requests"].inc(report.stow_requests)
        counters["bytes_sent"].inc(report.bytes_sent)
        for outcome in report.outcomes:
            for one in (outcome, *copy_outcomes(outcome)):
                if one.rejected:
                    counters["rejected_files"].inc()
                    if one.server_failure:
                        counters["server_failures"].inc()
                    yield TaggedOutput(REJECTS, one.reject_row())
                else:
                    counters["duplicates" if one.outcome == DUPLICATE_IN_INPUT else one.outcome].inc()
                    yield one.row()
                self._ticker.tick()


class _KeyForBatching(beam.DoFn):
    def __init__(self, max_instances: int):
        self._max_instances = max_instances

    def process(self, ref: FileRef, instance_count: int) -> Iterator[tuple[int, FileRef]]:
        yield tables.stable_shard(ref.sop, batch_groups(instance_count, self._max_instances)), ref


class _PlanBatches(beam.DoFn):
    def __init__(self, max_instances: int, max_bytes: int):
        self._max_instances = max_instances
        self._max_bytes = max_bytes

    def process(self, element: tuple[int, Iterable[FileRef]]) -> Iterator[list[FileRef]]:
        _, refs = element
        ordered = sorted(refs, key=lambda r: r.path)
        yield from plan_batches(ordered, self._max_instances, self._max_bytes)


def _path_and_size(match: FileMetadata) -> Iterator[tuple[str, int]]:
    if not match.path.endswith("/"):
        yield match.path, match.size_in_bytes


def build(
    p: beam.Pipeline,
    config: ImportConfig,
    *,
    inspect_ticker: ProgressTicker | None = None,
    store_ticker: ProgressTicker | None = None,
) -> None:
    """Wire the import into `p`."""
    patterns = [files.normalize_input_pattern(i) for i in config.inputs]
    matched = (
        p
        | "Patterns" >> beam.Create(patterns)
        | "Match" >> fileio.MatchAll()
        | "Files only" >> beam.FlatMap(_path_and_size)
        | "Distinct" >> beam.Distinct()
        | "Spread files" >> beam.Reshuffle()
    )
    inspected = matched | "Inspect" >> beam.ParDo(InspectFileFn(inspect_ticker or ProgressTicker(None))).with_outputs(
        REJECTS, main="refs"
    )
    chosen = inspected.refs | "By SOP instance" >> beam.GroupByKey() | "Choose copy" >> beam.ParDo(ChooseCopyFn())
    instance_count = AsSingleton(chosen | "Count instances" >> beam.combiners.Count.Globally())
    batches = (
        chosen
        | "Key for batching" >> beam.ParDo(_KeyForBatching(config.max_batch_instances), instance_count)
        | "Batch groups" >> beam.GroupByKey()
        | "Plan batches" >> beam.ParDo(_PlanBatches(config.max_batch_instances, config.max_batch_bytes))
        | "Spread batches" >> beam.Reshuffle()
    )
    sent = batches | "STOW-RS" >> beam.ParDo(
        StowBatchFn(config.dicomweb, config.check_existing, store_ticker or ProgressTicker(None))
    ).with_outputs(REJECTS, main="rows")
    specs = [
        tables.TableSpec(IMPORT_TABLE, IMPORT_SCHEMA, ("uri",)),
        tables.TableSpec(REJECTS_TABLE, REJECT_SCHEMA, ("uri", "stage")),
    ]
    _ = {
        IMPORT_TABLE: sent.rows,
        REJECTS_TABLE: [inspected[REJECTS], sent[REJECTS]] | "All rejects" >> beam.Flatten(),
    } | "Write tables" >> tables.WriteTables(config.parquet_dir, specs, config.rows_per_shard)


# ---------------------------------------------------------------------------------------------------
# Running


def _counts_from(result: beam.runners.runner.PipelineResult) -> ImportCounts:
    values = counters_from(result, NAMESPACE)
    return ImportCounts(**{k: v for k, v in values.items() if k in ImportCounts.__dataclass_fields__})


def preflight(settings: dicomweb.DicomwebSettings) -> str | None:
    """Check secrets, credentials and URL before a run: raises DicomwebConfigError, or DicomwebError when
    the server refuses the credentials or the request (a URL that is no DICOMweb endpoint answers 404). A
    server that cannot be reached or fails (5xx) is only reported (returned): the workers may reach it when
    this machine cannot, and if they cannot either, every file goes to the rejects with the reason."""
    settings.check()
    client = settings.make_client()
    try:
        dicomweb.check_connection(client)
    except dicomweb.DicomwebError as exc:
        if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (408, 429):
            raise  # credentials refused (401/403), or not a DICOMweb endpoint (404, 405, …)
        return str(exc)
    finally:
        client.session.close()
    return None


def run(config: ImportConfig, beam_args: list[str] | None = None) -> ImportCounts:
    """Run the import to completion, load DuckDB if asked, and return the reconciled counts."""
    beam_args = list(beam_args or [])
    if config.preflight:
        problem = preflight(config.dicomweb)
        if problem:
            logger.warning("DICOMweb store %s: %s", config.dicomweb.url, problem)
    options = PipelineOptions(beam_args)
    FileSystems.set_options(options)
    local = is_local_runner(options)
    total = None
    if local:
        # Several batches are sent from AUTO_THREADS threads: the work is waiting on the server.
        total = sum(len(files.list_files(files.normalize_input_pattern(i))) for i in config.inputs)
        several_batches = total >= AUTO_THREADS_MIN_BATCHES * config.max_batch_instances
        options = PipelineOptions(local_beam_args(beam_args, several_batches, AUTO_THREADS, "multi_threading"))
    with tempfile.TemporaryDirectory(prefix="medbeam-progress-") as progress_dir:
        stages = {"inspected": total, "sent": None}
        with ProgressMonitor(progress_dir, stages, enabled=config.progress and local) as monitor:
            pipeline = beam.Pipeline(options=options)
            build(
                pipeline,
                config,
                inspect_ticker=monitor.ticker("inspected"),
                store_ticker=monitor.ticker("sent"),
            )
            result = pipeline.run()
            result.wait_until_finish()
    counts = _counts_from(result)
    if config.duckdb_path is not None:
        tables.load_into_duckdb(config.duckdb_path, config.parquet_dir, [IMPORT_TABLE, REJECTS_TABLE])
    return counts
