"""Compressed files (.gz, .bz2, .xz, .zst) → decompressed copies, named by a regex substitution.

    match each input → select by pattern → distinct → reshuffle → output path ──┐
                                            selected paths (keyed by path) ─────┴→ CoGroupByKey by path
        → one source per output path → decompress, streamed, bomb-guarded → rejects → WriteTable(rejects)

As in Google's decompress_gcs.py, the files under the input prefixes whose path matches
`path_sub_pattern` (re.search) are decompressed to `re.sub(path_sub_pattern, path_sub_repl, path)`;
with `output_dir`, that path's part below the input's base directory is placed under `output_dir`.
The format comes from the file's magic bytes, not its name. Before anything is written, output paths
are checked: the input itself, another input of this run, or an output two inputs want (the
alphabetically first input wins) are rejects.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from medbeam.io import archives, files, tables
from medbeam.pipelines import runner
from medbeam.transforms.errors import REJECT_SCHEMA, REJECTS_TABLE
from medbeam.transforms.files import (
    DECOMPRESS_NAMESPACE,
    REJECTS,
    WRITTEN,
    DecompressFn,
    PlanFn,
    ResolveFn,
    indexed_files,
)
from medbeam.transforms.outputs import (
    OUTPUTS_TABLE,
    ReplaceOutputs,
    outputs_table,
    own_dir,
)
from medbeam.transforms.progress import ProgressTicker

NAMESPACE = DECOMPRESS_NAMESPACE
DEFAULT_MAX_RATIO = archives.DEFAULT_MAX_RATIO
DEFAULT_PATTERN = r"(.*)\.(?:gz|bz2|xz|zst)$"
DEFAULT_REPL = r"\1"
DEFAULT_MAX_OUTPUT_BYTES = 64 << 30
#: How many listed files the driver checks before the run for outputs that would overwrite their input.
PREFLIGHT_FILES = 1000


@dataclass
class DecompressConfig:
    """Everything `medbeam files decompress` takes; usable from Python as a library call."""

    inputs: list[str]
    path_sub_pattern: str = DEFAULT_PATTERN
    path_sub_repl: str = DEFAULT_REPL
    output_dir: str | None = None
    rejects_dir: str | None = None
    duckdb_path: str | None = None
    max_ratio: float | None = DEFAULT_MAX_RATIO
    max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES
    rows_per_shard: int = tables.DEFAULT_ROWS_PER_SHARD
    #: Progress bars on local runs (on a terminal).
    progress: bool = True
    #: Also load the tables into BigQuery: a medbeam.io.bigquery.BigQueryTarget.
    bigquery: Any = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("give at least one input prefix, directory or glob")
        archives.check_substitution(self.path_sub_pattern, self.path_sub_repl)
        if self.output_dir is not None:
            self.output_dir = archives.normalize_dir(self.output_dir)
        if self.rejects_dir is None:
            self.rejects_dir = own_dir(self.output_dir or _input_dir(self.inputs[0]))
        self.rejects_dir = archives.normalize_dir(self.rejects_dir)
        runner.check_duckdb_path(self.duckdb_path)
        if self.rows_per_shard < 1:
            raise ValueError("rows_per_shard must be at least 1")
        self.limits  # noqa: B018 - validates the limits now, not on a worker

    @property
    def limits(self) -> archives.Limits:
        return archives.Limits(max_bytes=self.max_output_bytes, max_ratio=self.max_ratio)

    @property
    def patterns(self) -> list[str]:
        return [files.input_pattern(i, remote="prefix") for i in self.inputs]

    @property
    def bases(self) -> list[str]:
        return [archives.input_base(i) for i in self.inputs]


def _input_dir(path: str) -> str:
    """The input itself if it is a local directory, else the directory it is in (or its prefix starts in)."""
    if not files.has_scheme(path) and os.path.isdir(os.path.expanduser(path)):
        return os.path.abspath(os.path.expanduser(path))
    return archives.input_base(path).rstrip("/")


@dataclass
class DecompressCounts:
    files_in: int = 0
    written: int = 0
    rejected: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    stale_outputs_removed: int = 0
    rejected_by_stage: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        line = f"{self.files_in} files in, {self.written} written, {self.rejected} rejected"
        return line + runner.file_job_extras(self.rejected_by_stage, stale=self.stale_outputs_removed)


def build(p: beam.Pipeline, config: DecompressConfig, ticker: ProgressTicker | None = None) -> None:
    """Wire the decompress job into `p`."""
    regex = re.compile(config.path_sub_pattern)
    rejects_dir = config.rejects_dir
    matched = [
        p
        | f"Input {i}" >> beam.Create([pattern])
        | f"Match {i}" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
        | f"Files {i}" >> beam.FlatMap(indexed_files, i)
        for i, pattern in enumerate(config.patterns)
    ]
    selected = (
        matched
        | "All inputs" >> beam.Flatten()
        | "Not our tables" >> beam.Filter(lambda kv: not archives.is_under(kv[0], rejects_dir))
        | "Select by pattern" >> beam.Filter(lambda kv: regex.search(kv[0]) is not None)
        | "First input wins" >> beam.CombinePerKey(min)  # overlapping inputs: one plan per file
        | "Spread files" >> beam.Reshuffle()
    )
    planned = selected | "Output paths" >> beam.ParDo(
        PlanFn(config.path_sub_pattern, config.path_sub_repl, config.bases, config.output_dir)
    ).with_outputs(REJECTS, main="plans")
    input_paths = selected | "Input paths" >> beam.Map(lambda kv: (kv[0], None))
    resolved = (
        {"plans": planned.plans, "input": input_paths}
        | "By output path" >> beam.CoGroupByKey()
        | "One source per output" >> beam.ParDo(ResolveFn()).with_outputs(REJECTS, main="jobs")
    )
    decompressed = resolved.jobs | "Decompress" >> beam.ParDo(
        DecompressFn(config.limits, files.Storage(files.s3_options_of(p.options)), ticker)
    ).with_outputs(WRITTEN, main="failed")
    rows = {REJECTS_TABLE: [planned[REJECTS], resolved[REJECTS], decompressed.failed]}
    specs = [tables.TableSpec(REJECTS_TABLE, REJECT_SCHEMA, ("uri", "stage"))]
    if config.output_dir is not None:  # copies beside their inputs have no folder of their own to manifest
        rows[OUTPUTS_TABLE] = decompressed[WRITTEN] | "Output manifest" >> ReplaceOutputs(config.output_dir, NAMESPACE)
        specs.append(outputs_table(config.output_dir))
    manifests = rows | "Write tables" >> tables.WriteTables(rejects_dir, specs, config.rows_per_shard)
    if config.bigquery is not None:
        from medbeam.transforms.bigquery import load_into_bigquery

        load_into_bigquery(manifests, config.bigquery, [REJECTS_TABLE], NAMESPACE)


def preflight(config: DecompressConfig, limit: int = PREFLIGHT_FILES) -> None:
    """Stop before the run when the substitution maps a listed file onto itself (checks up to `limit`)."""
    regex = re.compile(config.path_sub_pattern)
    results = FileSystems.match(config.patterns, limits=[limit] * len(config.inputs))
    for index, result in enumerate(results):
        for m in result.metadata_list:
            if m.path.endswith("/") or archives.is_under(m.path, config.rejects_dir) or not regex.search(m.path):
                continue
            try:
                archives.decompressed_path(m.path, regex, config.path_sub_repl, config.bases[index], config.output_dir)
            except archives.SameAsInputError as exc:
                raise ValueError(str(exc)) from None
            except archives.OutputPathError:
                pass  # a per-file reject in the run


def run(config: DecompressConfig, beam_args: list[str] | None = None) -> DecompressCounts:
    """Run the decompress job to completion, load DuckDB if asked, and return the reconciled counts."""
    options = runner.pipeline_options(beam_args)
    preflight(config)
    files.check_inputs_exist(config.patterns)
    sizes = runner.listed_sizes(config.patterns, exclude_dir=config.rejects_dir)
    plan = runner.LocalPlan(lambda: runner.stream_job_seconds(sizes), workers=len(sizes))
    result = runner.run_job(
        lambda p, tickers: build(p, config, tickers["files"]),
        beam_args,
        plan,
        progress={"files": None},
        show_progress=config.progress,
        options=options,
    )
    values = runner.counters(result, NAMESPACE)
    counts = runner.counts_of(DecompressCounts, values, rejected_by_stage=runner.by_stage(values))
    runner.load_tables(config.duckdb_path, config.rejects_dir, [REJECTS_TABLE])
    return counts
