"""DICOM files → de-identified copies (Part 10 files and/or a DICOMweb store) + deid_audit + rejects.

    match files → reshuffle → header: original SOP Instance UID ─┬─ group by it → one copy each ─┐
                                                                 └─ rejects (not DICOM, no UID)   │
        ┌────────────────────────────────────────────────────────────────────────────────────────┘
        └→ read in full → [burned-in text: OCR, fill, re-encode] → profile (keyed UIDs, pseudonyms,
           shifted dates) → {out}/{new study}/{new series}/{new instance}.dcm  ─→ ReplaceOutputs
                                                                 └→ batches → STOW-RS (as `dicom import`)
           → WriteTables(deid_audit, rejects[, deid_stow][, deid_mapping under --mapping-out])

Consistency without shared state: every replacement is a keyed hash of the original value
(medbeam.dicom.deidentify), so any worker, any run, gives the same output for the same input and key.
Only paths and the original SOP UIDs travel through the first shuffle; each file is read twice (header,
then in full), never carried as bytes, except the de-identified bytes on their way to STOW-RS.

Every input file ends in exactly one of: de-identified, rejected: ``files_in == deidentified + rejected``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam

from medbeam.dicom import burned_in
from medbeam.dicom.deidentify import DeidOptions
from medbeam.io import files, tables
from medbeam.io.stow import IMPORT_SCHEMA
from medbeam.pipelines import runner
from medbeam.transforms.deidentify import (
    AUDIT_SCHEMA,
    AUDIT_TABLE,
    MAPPING,
    MAPPING_SCHEMA,
    MAPPING_TABLE,
    NAMESPACE,
    REJECTS,
    STOW,
    STOW_TABLE,
    WRITTEN,
    ChooseCopyFn,
    DeidentifyFn,
    KeyByInstanceFn,
    KeySource,
    StowFn,
    mapping_row,
)
from medbeam.transforms.errors import REJECT_SCHEMA, REJECTS_TABLE
from medbeam.transforms.inputs import MatchFiles
from medbeam.transforms.outputs import OUTPUTS_TABLE, ReplaceOutputs, outputs_table
from medbeam.transforms.progress import ProgressTicker

#: Measured single-core cost without OCR (header read, full read, profile, write); OCR adds ~0.3 s an image.
COST = runner.CostModel(seconds_per_file=0.01, seconds_per_byte=3.0e-9)
DEFAULT_STOW_BATCH = 50


@dataclass
class DeidentifyConfig:
    """Everything `medbeam dicom deidentify` takes; usable from Python as a library call."""

    inputs: list[str]
    key: KeySource
    output_dir: str | None = None
    #: STOW-RS the de-identified instances into this store: a medbeam.io.dicomweb.DicomwebSettings.
    dicomweb: Any = None
    options: DeidOptions = field(default_factory=DeidOptions)
    redact_burned_in: str = burned_in.FLAGGED
    parquet_dir: str | None = None
    duckdb_path: str | None = None
    #: Also write the original → pseudonym table here (PHI itself: keep it with the originals).
    mapping_out: str | None = None
    stow_batch_instances: int = DEFAULT_STOW_BATCH
    rows_per_shard: int = tables.DEFAULT_ROWS_PER_SHARD
    progress: bool = True
    #: Also load deid_audit and rejects into BigQuery: a medbeam.io.bigquery.BigQueryTarget (never the mapping).
    bigquery: Any = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("give at least one --input")
        if self.output_dir is None and self.dicomweb is None:
            raise ValueError("nothing to write: give --output-dir and/or --dicomweb")
        if self.redact_burned_in not in burned_in.MODES:
            raise ValueError(f"--redact-burned-in must be one of {', '.join(burned_in.MODES)}")
        runner.check_duckdb_path(self.duckdb_path)
        if self.parquet_dir is None and self.duckdb_path is not None:
            self.parquet_dir = tables.default_parquet_dir(self.duckdb_path)
        if self.parquet_dir is None:
            raise ValueError(
                "give --duckdb or --parquet-dir: the deid_audit and rejects tables need a home (not inside "
                "--output-dir, since they name the source files)"
            )
        if self.stow_batch_instances < 1 or self.rows_per_shard < 1:
            raise ValueError("batch sizes and rows_per_shard must be at least 1")

    def check(self) -> None:
        """Before any work: the key can be read, OCR is there if needed, outputs can be written."""
        self.key.keys()
        problem = burned_in.ocr_problem() if self.redact_burned_in != burned_in.NONE else None
        if problem:
            raise ValueError(
                f"--redact-burned-in {self.redact_burned_in} needs OCR: {problem} (scripts/ensure-tesseract.sh, "
                "or apt-get install tesseract-ocr tesseract-ocr-eng); or pass --redact-burned-in none"
            )
        for option, location in (
            ("--output-dir", self.output_dir),
            ("--parquet-dir", self.parquet_dir),
            ("--mapping-out", self.mapping_out),
        ):
            if location is not None:
                files.check_writable_dir(location, option)


@dataclass
class DeidentifyCounts:
    files_in: int = 0
    deidentified: int = 0
    rejected_files: int = 0
    burned_in_checked: int = 0
    pixels_redacted: int = 0
    text_boxes: int = 0
    stored: int = 0
    already_present: int = 0
    store_failures: int = 0
    stale_outputs_removed: int = 0
    rejected_by_stage: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """De-identified instances the store did not take: the run did not do all its job (exit 1)."""
        return self.store_failures > 0

    def summary(self) -> str:
        extras = []
        if self.rejected_by_stage:
            extras.append(", ".join(f"{n} {stage}" for stage, n in sorted(self.rejected_by_stage.items())))
        if self.burned_in_checked:
            extras.append(
                f"{self.burned_in_checked} checked for burned-in text, {self.pixels_redacted} redacted "
                f"({self.text_boxes} boxes)"
            )
        if self.stored or self.already_present or self.store_failures:
            extras.append(
                f"DICOMweb: {self.stored} stored, {self.already_present} already present, "
                f"{self.store_failures} not stored (rejects, stage store)"
            )
        if self.stale_outputs_removed:
            extras.append(f"{self.stale_outputs_removed} files of the previous run removed")
        return runner.summary_line(
            f"{self.files_in} files", f"{self.deidentified} de-identified instances", self.rejected_files, extras
        )


def build(p: beam.Pipeline, config: DeidentifyConfig, *, ticker: ProgressTicker | None = None) -> None:
    """Wire the de-identification into `p`."""
    storage = files.Storage(files.s3_options_of(p.options))
    patterns = [files.input_pattern(i) for i in config.inputs]
    matched = p | "Match" >> MatchFiles(patterns)
    if len(set(patterns)) > 1:
        matched = matched | "Distinct" >> beam.Distinct()
    if not runner.runs_in_one_local_worker(p.options):
        matched = matched | "Spread files" >> beam.Reshuffle()
    keyed = matched | "Header" >> beam.ParDo(KeyByInstanceFn(ticker or ProgressTicker(None), storage)).with_outputs(
        REJECTS, main="keyed"
    )
    chosen = (
        keyed.keyed
        | "By SOP instance" >> beam.GroupByKey()  # also the fan-out of the de-identification work
        | "Choose copy" >> beam.ParDo(ChooseCopyFn()).with_outputs(REJECTS, main="chosen")
    )
    done = chosen.chosen | "De-identify" >> beam.ParDo(
        DeidentifyFn(
            config.key,
            config.options,
            config.redact_burned_in,
            config.output_dir,
            config.dicomweb is not None,
            config.mapping_out is not None,
            ProgressTicker(None),
            storage,
        )
    ).with_outputs(REJECTS, WRITTEN, STOW, MAPPING, main="audit")
    rejects = [keyed[REJECTS], chosen[REJECTS], done[REJECTS]]
    specs = [
        tables.TableSpec(AUDIT_TABLE, AUDIT_SCHEMA, ("sop_instance_uid",)),
        tables.TableSpec(REJECTS_TABLE, REJECT_SCHEMA, ("uri", "stage")),
    ]
    rows: dict[str, Any] = {AUDIT_TABLE: done.audit}
    if config.dicomweb is not None:
        stowed = (
            done[STOW]
            | "STOW batches" >> beam.BatchElements(min_batch_size=1, max_batch_size=config.stow_batch_instances)
            | "STOW-RS" >> beam.ParDo(StowFn(config.dicomweb)).with_outputs(REJECTS, main="rows")
        )
        rejects.append(stowed[REJECTS])
        rows[STOW_TABLE] = stowed.rows
        specs.append(tables.TableSpec(STOW_TABLE, IMPORT_SCHEMA, ("sop_instance_uid",)))
    if config.output_dir is not None:
        rows[OUTPUTS_TABLE] = done[WRITTEN] | "Output manifest" >> ReplaceOutputs(config.output_dir, NAMESPACE)
        specs.append(outputs_table(config.output_dir))
    if config.mapping_out is not None:
        rows[MAPPING_TABLE] = (
            done[MAPPING] | "Distinct pairs" >> beam.Distinct() | "Mapping rows" >> beam.Map(mapping_row)
        )
        specs.append(
            tables.TableSpec(MAPPING_TABLE, MAPPING_SCHEMA, ("kind", "original"), table_dir=config.mapping_out)
        )
    rows[REJECTS_TABLE] = rejects
    manifests = rows | "Write tables" >> tables.WriteTables(config.parquet_dir, specs, config.rows_per_shard)
    if config.bigquery is not None:
        from medbeam.transforms.bigquery import load_into_bigquery

        load_into_bigquery(manifests, config.bigquery, [AUDIT_TABLE, REJECTS_TABLE], NAMESPACE)



def run(config: DeidentifyConfig, beam_args: list[str] | None = None) -> DeidentifyCounts:
    """Run the de-identification to completion, load DuckDB if asked, and return the reconciled counts."""
    options = runner.pipeline_options(beam_args)
    files.check_inputs_exist([files.input_pattern(i) for i in config.inputs])
    config.check()
    if config.dicomweb is not None:  # secrets, credentials and URL checked once, before the run
        from medbeam.io.dicomweb import check_connection

        config.dicomweb.check()
        client = config.dicomweb.make_client()
        try:
            check_connection(client)
        finally:
            client.session.close()
    matches: set[tuple[str, int]] = set()
    if runner.is_local_runner(options):
        matches = {m for i in config.inputs for m in files.list_files_with_sizes(files.input_pattern(i))}
    total = len(matches) if matches else None
    plan = runner.LocalPlan(lambda: COST.seconds(len(matches), sum(size for _, size in matches)))
    with element_logs_off():
        result = runner.run_job(
            lambda p, tickers: build(p, config, ticker=tickers["files"]),
            beam_args,
            plan,
            progress={"files": total},
            show_progress=config.progress,
            options=options,
        )
    values = runner.counters(result, NAMESPACE)
    counts = runner.counts_of(DeidentifyCounts, values, rejected_by_stage=runner.by_stage(values))
    names = [AUDIT_TABLE, REJECTS_TABLE] + ([STOW_TABLE] if config.dicomweb is not None else [])
    runner.load_tables(config.duckdb_path, config.parquet_dir, names)
    return counts


#: Beam loggers that print every element they process at DEBUG (the mapping rows are PHI).
ELEMENT_LOGGERS = ("apache_beam.runners.worker.operations", "apache_beam.runners.worker.bundle_processor")


@contextlib.contextmanager
def element_logs_off() -> Iterator[None]:
    """For the run only: Beam's per-element DEBUG lines off, so a debug log never holds an original value
    (the --mapping-out rows travel as elements). Restored afterwards; importing medbeam changes nothing."""
    loggers = [logging.getLogger(name) for name in ELEMENT_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        if lg.getEffectiveLevel() < logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
