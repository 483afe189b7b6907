"""Tar archives (plain, .gz, .bz2, .xz, .zst) → their members as files under one output directory.

    match archives → distinct → reshuffle → untar, streamed ─┬─ rejects ──────────────────────┐
                                                             └─ written (output path, member) │
        written + the archive paths → CoGroupByKey by output path → collisions ───────────────┴→ WriteTable(rejects)

Each archive is read as one stream by one worker (tar has no index), archives in parallel. A member
`a/b.png` of `x.tar.gz` is written to `{output_dir}/a/b.png` (as `tar -x` and Google's untar_gcs.py do),
or to `{output_dir}/x/a/b.png` with `archive_subdir`. Unsafe members are refused and recorded in the
rejects table (`uri` = `archive!member`), directories are skipped, a corrupt archive is one reject and the
run goes on. Output paths written more than once (the same member path in two archives, or twice in
one) are reported in the rejects table with stage `collision`; they are not counted as rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam

from medbeam.io import archives, files, tables
from medbeam.pipelines import runner
from medbeam.transforms.errors import REJECT_SCHEMA, REJECTS_TABLE
from medbeam.transforms.files import (
    REJECTS,
    UNTAR_NAMESPACE,
    WRITTEN,
    ReportCollisionsFn,
    UntarFn,
    match_inputs,
)
from medbeam.transforms.outputs import (
    OUTPUTS_TABLE,
    ReplaceOutputs,
    outputs_table,
    own_dir,
)
from medbeam.transforms.progress import ProgressTicker

NAMESPACE = UNTAR_NAMESPACE
DEFAULT_MAX_RATIO = archives.DEFAULT_MAX_RATIO


@dataclass
class UntarConfig:
    """Everything `medbeam files untar` takes; usable from Python as a library call."""

    inputs: list[str]
    output_dir: str
    archive_subdir: bool = False
    rejects_dir: str | None = None
    duckdb_path: str | None = None
    max_ratio: float | None = DEFAULT_MAX_RATIO
    max_archive_bytes: int | None = None
    rows_per_shard: int = tables.DEFAULT_ROWS_PER_SHARD
    #: Progress bars on local runs (on a terminal).
    progress: bool = True
    #: Also load the tables into BigQuery: a medbeam.io.bigquery.BigQueryTarget.
    bigquery: Any = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("give at least one input archive, glob or directory")
        if not self.output_dir:
            raise ValueError("give --output-dir")
        self.output_dir = archives.normalize_dir(self.output_dir)
        self.rejects_dir = archives.normalize_dir(self.rejects_dir or own_dir(self.output_dir))
        runner.check_duckdb_path(self.duckdb_path)
        if self.rows_per_shard < 1:
            raise ValueError("rows_per_shard must be at least 1")
        self.limits  # noqa: B018 - validates the limits now, not on a worker

    @property
    def limits(self) -> archives.Limits:
        return archives.Limits(max_bytes=self.max_archive_bytes, max_ratio=self.max_ratio)


@dataclass
class UntarCounts:
    archives_in: int = 0
    archives_rejected: int = 0
    members_written: int = 0
    members_rejected: int = 0
    dirs_skipped: int = 0
    bytes_written: int = 0
    collisions: int = 0
    stale_outputs_removed: int = 0
    rejected_by_stage: dict[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        """Rows of the rejects table other than collision notices: refused members + failed archives."""
        return self.members_rejected + self.archives_rejected

    def summary(self) -> str:
        line = f"{self.archives_in} archives in, {self.members_written} members written, {self.rejected} rejected"
        return line + runner.file_job_extras(
            self.rejected_by_stage, self.dirs_skipped, self.collisions, self.stale_outputs_removed
        )


def build(p: beam.Pipeline, config: UntarConfig, ticker: ProgressTicker | None = None) -> None:
    """Wire the untar job into `p`."""
    patterns = [files.input_pattern(i) for i in config.inputs]
    matched = match_inputs(p, patterns, config.rejects_dir)
    untarred = (
        matched
        | "Spread archives" >> beam.Reshuffle()
        | "Untar"
        >> beam.ParDo(
            UntarFn(
                config.output_dir,
                config.archive_subdir,
                config.limits,
                config.rejects_dir,
                files.Storage(files.s3_options_of(p.options)),
                ticker,
            )
        ).with_outputs(REJECTS, main=WRITTEN)
    )
    input_paths = matched | "Archive paths" >> beam.Map(lambda kv: (kv[0], None))
    collisions = (
        {"written": untarred[WRITTEN], "archive": input_paths}
        | "By output path" >> beam.CoGroupByKey()
        | "Collisions" >> beam.ParDo(ReportCollisionsFn())
    )
    manifest = (
        untarred[WRITTEN]
        | "Written paths" >> beam.Map(lambda written: written[0])
        | "Output manifest" >> ReplaceOutputs(config.output_dir, NAMESPACE)
    )
    manifests = {
        REJECTS_TABLE: [untarred[REJECTS], collisions],
        OUTPUTS_TABLE: manifest,
    } | "Write tables" >> tables.WriteTables(
        config.rejects_dir,
        [tables.TableSpec(REJECTS_TABLE, REJECT_SCHEMA, ("uri", "stage")), outputs_table(config.output_dir)],
        config.rows_per_shard,
    )
    if config.bigquery is not None:
        from medbeam.transforms.bigquery import load_into_bigquery

        load_into_bigquery(manifests, config.bigquery, [REJECTS_TABLE], NAMESPACE)


# ---------------------------------------------------------------------------------------------------
# Running


def run(config: UntarConfig, beam_args: list[str] | None = None) -> UntarCounts:
    """Run the untar job to completion, load DuckDB if asked, and return the reconciled counts."""
    patterns = [files.input_pattern(i) for i in config.inputs]
    options = runner.pipeline_options(beam_args)
    files.check_inputs_exist(patterns)
    sizes = runner.listed_sizes(patterns, exclude_dir=config.rejects_dir)
    plan = runner.LocalPlan(lambda: runner.stream_job_seconds(sizes), workers=len(sizes))
    result = runner.run_job(
        lambda p, tickers: build(p, config, tickers["archives"]),
        beam_args,
        plan,
        progress={"archives": len(sizes)},
        show_progress=config.progress,
        options=options,
    )
    values = runner.counters(result, NAMESPACE)
    counts = runner.counts_of(UntarCounts, values, rejected_by_stage=runner.by_stage(values))
    runner.load_tables(config.duckdb_path, config.rejects_dir, [REJECTS_TABLE])
    return counts
