"""Batch-prediction JSON lines → a table (`predictions load`): Google's load_feature_vectors.py, typed from
every line instead of the first, with rejects instead of crashes, into DuckDB, Parquet and BigQuery.

    files (one, a folder, a glob of shards; gzip/bzip2/xz/zstd by magic bytes) → lines → parsed values
        ─┬→ observations → CombineGlobally: the agreed layout (medbeam.io.predictions.agree) ──┐ side input
         └→ each line against the layout → row ─────────────────────────────────────────────────┴→ {table}
    every line or file refused → rejects (uri `file#line N`, stage read/parse/schema, reason)

Two passes over the lines (the layout needs all of them before any row is made); the parsed lines are
what Beam keeps between them, not the files. Rows are keyed (source, line) and sorted so by WriteTables,
spread over the shards by both. Counts: `N lines in, M rows written, K rejected (F files in; …)`, N = M + K
(blank lines are skipped, not counted as lines in; an unreadable file is counted apart, its lines read
before the point where it broke are kept).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.pvalue import AsSingleton

from medbeam.io import archives, files, tables
from medbeam.io import predictions as pred
from medbeam.io.sharded import SummaryPart
from medbeam.pipelines import runner
from medbeam.transforms.errors import REJECT_SCHEMA, REJECTS_TABLE
from medbeam.transforms.predictions import (
    NAMESPACE,
    REJECTS,
    AgreeLayoutFn,
    ReadLinesFn,
    ToRowFn,
    observations,
    table_schema,
)
from medbeam.transforms.progress import ProgressTicker

JOB = "predictions load"
DEFAULT_TABLE = "predictions"
DEFAULT_PARQUET_DIR = "medbeam-predictions"
#: Rows per Parquet shard: a row can be a 2048-float vector (~64 KB as Python objects while a shard is
#: sorted and written), so fewer than the other tables' 50,000.
DEFAULT_ROWS_PER_SHARD = 5_000
#: One core's cost per input byte (read, JSON parse, type checks, row, Parquet: ~10 MB/s of 2048-float
#: lines measured on the 2-core machine), for the local choice.
COST = runner.CostModel(seconds_per_file=0.0, seconds_per_byte=1 / (10 << 20))
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,1023}$")


@dataclass
class PredictionsLoadConfig:
    """Everything `medbeam predictions load` takes; usable from Python as a library call."""

    inputs: list[str]
    table: str = DEFAULT_TABLE
    #: Google's column rule: one scalar column per tensor element (`feature_vector_0000` …).
    flatten: bool = False
    #: Typed-list mode: lists may differ in length from line to line (only their rank is agreed).
    ragged: bool = False
    parquet_dir: str | None = None
    duckdb_path: str | None = None
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    progress: bool = True
    #: Also load the tables into BigQuery: a medbeam.io.bigquery.BigQueryTarget.
    bigquery: Any = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("give at least one --input: a file, a directory or a glob of shards")
        if not _TABLE_NAME.match(self.table):
            raise ValueError(f"--table must be letters, digits and _ (not starting with a digit), got {self.table!r}")
        if self.table.casefold() == REJECTS_TABLE:
            raise ValueError(f"--table {self.table!r} is the rejects table's name: choose another")
        if self.flatten and self.ragged:
            raise ValueError("--ragged needs typed-list columns: it cannot go with --flatten")
        if self.rows_per_shard < 1:
            raise ValueError("rows_per_shard must be at least 1")
        runner.check_duckdb_path(self.duckdb_path)
        if self.duckdb_path is None and self.parquet_dir is None and self.bigquery is None:
            raise ValueError("nothing to write: give --duckdb, --parquet-dir and/or --bigquery-dataset")
        if self.parquet_dir is None:
            self.parquet_dir = (
                tables.default_parquet_dir(self.duckdb_path) if self.duckdb_path else DEFAULT_PARQUET_DIR
            )
        self.parquet_dir = archives.normalize_dir(self.parquet_dir)

    @property
    def patterns(self) -> list[str]:
        return [files.input_pattern(i) for i in self.inputs]

    @property
    def excluded(self) -> list[str]:
        """What the inputs may list but are this job's own outputs (an input folder holding them)."""
        own = [self.parquet_dir]
        if self.duckdb_path is not None:
            duckdb = os.path.abspath(os.path.expanduser(self.duckdb_path))
            own += [duckdb, duckdb + ".wal"]
        return own


@dataclass
class PredictionsCounts:
    files_in: int = 0
    lines_in: int = 0
    rows_written: int = 0
    rejected: int = 0
    files_rejected: int = 0
    blank_lines: int = 0
    columns: int = 0
    rejected_by_stage: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        extras = [f"{self.files_in} file{'' if self.files_in == 1 else 's'} in, {self.columns} columns"]
        if self.rejected_by_stage:
            extras.append(", ".join(f"{n} {stage}" for stage, n in sorted(self.rejected_by_stage.items())))
        if self.files_rejected:
            extras.append(
                f"{self.files_rejected} file{'' if self.files_rejected == 1 else 's'} unreadable (rejects, stage read)"
            )
        if self.blank_lines:
            extras.append(f"{self.blank_lines} blank line{'' if self.blank_lines == 1 else 's'} skipped")
        return runner.summary_line(f"{self.lines_in} lines", f"{self.rows_written} rows", self.rejected, extras)


def _not_ours(path: str, excluded: list[str]) -> bool:
    return not any(archives.is_under(path, own) for own in excluded)


def build(p: beam.Pipeline, config: PredictionsLoadConfig, ticker: ProgressTicker | None = None) -> None:
    """Wire `predictions load` into `p`."""
    excluded = config.excluded
    matched = (
        p
        | "Patterns" >> beam.Create(config.patterns)
        | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
        | "Files only" >> beam.FlatMap(lambda m: [(m.path, m.size_in_bytes)] if not m.path.endswith("/") else [])
        | "Not our outputs" >> beam.Filter(lambda kv: _not_ours(kv[0], excluded))
        | "Distinct" >> beam.Distinct()
    )
    if not runner.runs_in_one_local_worker(p.options):
        matched = matched | "Spread files" >> beam.Reshuffle()
    storage = files.Storage(files.s3_options_of(p.options))
    read = matched | "Read lines" >> beam.ParDo(ReadLinesFn(archives.Limits(), storage, ticker)).with_outputs(
        REJECTS, main="lines"
    )
    layout = (
        read.lines
        | "Observe" >> beam.Map(observations)
        | "Agree layout" >> beam.CombineGlobally(AgreeLayoutFn(config.flatten, config.ragged))
    )
    converted = read.lines | "Rows" >> beam.ParDo(ToRowFn(), AsSingleton(layout)).with_outputs(REJECTS, main="rows")
    schema = layout | "Schema" >> beam.Map(table_schema)
    empty = pred.agree(pred.Tally()).schema()
    specs = [
        tables.TableSpec(
            config.table,
            tables.ComputedSchema(tables.TheOneSchema()),
            (pred.SOURCE, pred.LINE),
            empty,
            shard_columns=(pred.SOURCE, pred.LINE),
        ),
        tables.TableSpec(REJECTS_TABLE, REJECT_SCHEMA, ("uri", "stage")),
    ]
    rows = {
        config.table: [converted.rows, schema | "Schema part" >> beam.Map(SummaryPart)],
        REJECTS_TABLE: [read[REJECTS], converted[REJECTS]],
    }
    manifests = rows | "Write tables" >> tables.WriteTables(config.parquet_dir, specs, config.rows_per_shard)
    if config.bigquery is not None:
        from medbeam.transforms.bigquery import load_into_bigquery

        load_into_bigquery(manifests, config.bigquery, [config.table, REJECTS_TABLE], NAMESPACE)


def run(config: PredictionsLoadConfig, beam_args: list[str] | None = None) -> PredictionsCounts:
    """Run the job to completion, load DuckDB if asked, and return the reconciled counts."""
    options = runner.pipeline_options(beam_args)
    files.check_inputs_exist(config.patterns)
    files.check_writable_dir(config.parquet_dir, "--parquet-dir")
    sizes = runner.listed_sizes(config.patterns)
    sizes = {path: size for path, size in sizes.items() if _not_ours(path, config.excluded)}
    plan = runner.LocalPlan(lambda: COST.seconds(len(sizes), sum(sizes.values())), workers=len(sizes))
    result = runner.run_job(
        lambda p, tickers: build(p, config, tickers["files"]),
        beam_args,
        plan,
        progress={"files": len(sizes) if runner.is_local_runner(options) else None},
        show_progress=config.progress,
        options=options,
    )
    values = runner.counters(result, NAMESPACE)
    counts = runner.counts_of(PredictionsCounts, values, rejected_by_stage=runner.by_stage(values))
    runner.load_tables(config.duckdb_path, config.parquet_dir, [config.table, REJECTS_TABLE])
    return counts
