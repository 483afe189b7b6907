"""Thin Beam wrappers for the DICOMweb import: inspect files, choose one copy, plan and send STOW-RS batches.

The logic is in medbeam.dicom.part10 (inspection, choice of copy) and medbeam.io.stow (batches, outcomes);
the DoFns here count into Beam Metrics (namespace NAMESPACE), route rejects and tick progress.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from medbeam.dicom.part10 import (
    FileRef,
    IncompleteFileError,
    NotSendableError,
    choose_copy,
    inspect_file,
)
from medbeam.dicom.reader import NotDicomError
from medbeam.io import dicomweb, files
from medbeam.io.sharded import stable_shard
from medbeam.io.stow import (
    DUPLICATE_IN_INPUT,
    batch_groups,
    copy_outcomes,
    plan_batches,
    send_batch,
)
from medbeam.transforms.errors import reject
from medbeam.transforms.progress import ProgressTicker
from medbeam.worker import quiet_pydicom

NAMESPACE = "medbeam.dicom_import"
REJECTS = "rejects"
#: After this many batches in a row failed because of the server, a worker stops retrying (1 attempt each)
#: until a request succeeds again: a down server costs seconds, not the full backoff for every batch.
BREAKER_AFTER = 3


class InspectFileFn(beam.DoFn):
    """(path, size) → FileRef keyed by SOP Instance UID, or a reject (not DICOM, truncated, no UIDs)."""

    def __init__(self, ticker: ProgressTicker):
        self._ticker = ticker
        self._files_in = Metrics.counter(NAMESPACE, "files_in")
        self._rejected = Metrics.counter(NAMESPACE, "rejected_files")

    def setup(self) -> None:
        quiet_pydicom()

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


class KeyForBatching(beam.DoFn):
    """A chosen file → (its batch group, it): a stable hash of the SOP UID over batch_groups(instances)."""

    def __init__(self, max_instances: int):
        self._max_instances = max_instances

    def process(self, ref: FileRef, instance_count: int) -> Iterator[tuple[int, FileRef]]:
        yield stable_shard(ref.sop, batch_groups(instance_count, self._max_instances)), ref


class PlanBatchesFn(beam.DoFn):
    """A batch group → its batches (files in path order, bounded by count and bytes)."""

    def __init__(self, max_instances: int, max_bytes: int):
        self._max_instances = max_instances
        self._max_bytes = max_bytes

    def process(self, element: tuple[int, Iterable[FileRef]]) -> Iterator[list[FileRef]]:
        _, refs = element
        ordered = sorted(refs, key=lambda r: r.path)
        yield from plan_batches(ordered, self._max_instances, self._max_bytes)
