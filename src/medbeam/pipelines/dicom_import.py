"""DICOM files → a DICOMweb store (STOW-RS), idempotently, with rejects and counts that reconcile.

    match files → reshuffle → inspect headers ─┬─ refs → group by SOP Instance UID → choose one copy ─┐
                                               └─ rejects (not DICOM, truncated, no UIDs)            │
        ┌────────────────────────────────────────────────────────────────────────────────────────────┘
        └→ batch groups (hash of the SOP UID) → batches bounded by count and bytes → reshuffle
           → per batch: read files, ask the store which it has (QIDO-RS), STOW-RS the rest in one request
           → rows + rejects: WriteTables(dicom_import, rejects)

Only paths and a few UIDs travel through the shuffles; each file is read twice (its header when
inspected, all of it when sent), never carried as bytes between steps.

Already present: before each STOW-RS the batch's SOP Instance UIDs are looked up with one QIDO-RS query,
and a duplicate failure reason in the answer counts the same way (medbeam.io.stow says why both). Copies of
one instance among the input files are sent once (lossless and Part 10 copies preferred, then the smallest
path); the others share that copy's fate.

Layers: medbeam.dicom.part10 (inspection) and medbeam.io.stow (batches, outcomes) hold the logic,
medbeam.transforms.dicom_import the DoFns; here are the configuration, the wiring and the run.

Every input file ends in exactly one of: stored, already present (in the store, or a copy of an input
file that is), rejected: ``files_in == stored + already_present + duplicates + rejected_files``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from medbeam.io import dicomweb, files, tables
from medbeam.io.stow import IMPORT_SCHEMA, IMPORT_TABLE
from medbeam.pipelines import runner
from medbeam.transforms.dicom_import import (
    NAMESPACE,
    REJECTS,
    ChooseCopyFn,
    InspectFileFn,
    KeyForBatching,
    PlanBatchesFn,
    StowBatchFn,
)
from medbeam.transforms.errors import REJECT_SCHEMA, REJECTS_TABLE
from medbeam.transforms.inputs import MatchFiles
from medbeam.transforms.progress import ProgressTicker

logger = logging.getLogger(__name__)

DEFAULT_BATCH_INSTANCES = 50
DEFAULT_PARQUET_DIR = "medbeam-import"
DEFAULT_BATCH_BYTES = 32 * 1024 * 1024
#: Local runs with at least this many batches send them from several threads at once.
AUTO_THREADS_MIN_BATCHES = 4
AUTO_THREADS = 4


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
    #: Also load the tables into BigQuery: a medbeam.io.bigquery.BigQueryTarget.
    bigquery: Any = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("give at least one input pattern")
        if self.max_batch_instances < 1:
            raise ValueError("a batch holds at least 1 instance")
        if self.max_batch_bytes < 1:
            raise ValueError("the batch byte limit must be positive")
        runner.check_duckdb_path(self.duckdb_path)
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
# Beam


def build(
    p: beam.Pipeline,
    config: ImportConfig,
    *,
    inspect_ticker: ProgressTicker | None = None,
    store_ticker: ProgressTicker | None = None,
) -> None:
    """Wire the import into `p`."""
    patterns = [files.input_pattern(i) for i in config.inputs]
    matched = (
        p
        | "Match" >> MatchFiles(patterns)
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
        | "Key for batching" >> beam.ParDo(KeyForBatching(config.max_batch_instances), instance_count)
        | "Batch groups" >> beam.GroupByKey()
        | "Plan batches" >> beam.ParDo(PlanBatchesFn(config.max_batch_instances, config.max_batch_bytes))
        | "Spread batches" >> beam.Reshuffle()
    )
    sent = batches | "STOW-RS" >> beam.ParDo(
        StowBatchFn(config.dicomweb, config.check_existing, store_ticker or ProgressTicker(None))
    ).with_outputs(REJECTS, main="rows")
    specs = [
        tables.TableSpec(IMPORT_TABLE, IMPORT_SCHEMA, ("uri",)),
        tables.TableSpec(REJECTS_TABLE, REJECT_SCHEMA, ("uri", "stage")),
    ]
    manifests = {
        IMPORT_TABLE: sent.rows,
        REJECTS_TABLE: [inspected[REJECTS], sent[REJECTS]],
    } | "Write tables" >> tables.WriteTables(config.parquet_dir, specs, config.rows_per_shard)
    if config.bigquery is not None:
        from medbeam.transforms.bigquery import load_into_bigquery

        load_into_bigquery(manifests, config.bigquery, [IMPORT_TABLE, REJECTS_TABLE], NAMESPACE)


# ---------------------------------------------------------------------------------------------------
# Running


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
    options = runner.pipeline_options(beam_args)
    files.check_inputs_exist([files.input_pattern(i) for i in config.inputs])
    if config.preflight:
        problem = preflight(config.dicomweb)
        if problem:
            logger.warning("DICOMweb store %s: %s", config.dicomweb.url, problem)
    total = None
    if runner.is_local_runner(options):  # only local runs count files in the driver
        total = sum(len(files.list_files(files.input_pattern(i))) for i in config.inputs)

    def estimate() -> float:
        # Several batches are sent from AUTO_THREADS threads (the work waits on the server, not the CPU):
        # the estimate reaches the runner's threshold exactly when the files fill AUTO_THREADS_MIN_BATCHES
        # batches of max_batch_instances.
        several_batches = total is not None and total >= AUTO_THREADS_MIN_BATCHES * config.max_batch_instances
        return runner.AUTO_PARALLEL_MIN_SECONDS if several_batches else 0.0

    def build_job(p: beam.Pipeline, tickers: dict[str, ProgressTicker]) -> None:
        build(p, config, inspect_ticker=tickers["inspected"], store_ticker=tickers["sent"])

    result = runner.run_job(
        build_job,
        beam_args,
        runner.LocalPlan(estimate, AUTO_THREADS, "multi_threading"),
        progress={"inspected": total, "sent": None},
        show_progress=config.progress,
        options=options,
    )
    counts = runner.counts_of(ImportCounts, runner.counters(result, NAMESPACE))
    runner.load_tables(config.duckdb_path, config.parquet_dir, [IMPORT_TABLE, REJECTS_TABLE])
    return counts
