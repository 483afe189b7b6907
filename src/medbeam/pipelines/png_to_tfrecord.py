"""`medbeam dicom export` PNGs → TFRecord shards of tf.train.Example, as Google's png_to_tfrecord did.

    match {input}/** → reshuffle → parse path, read, check/resize PNG, Example ─┬─ WriteExamples
                                                                               ├─ rejects → WriteTable
                                                                               └─ counts → features.json

Input layout (what the export writes): ``{study}/{series}/{sop}.png`` for single-frame instances and
``{study}/{series}/{sop}/{frame:04d}.png`` (1-based) for multi-frame ones. Every record has
``study``, ``series``, ``instance`` (the SOPInstanceUID) and ``png_bytes`` like Google's records, plus
``frame`` (int64, 1-based; 1 for single-frame instances), so multi-frame instances stay joinable to the
metadata table by SOPInstanceUID. Outputs: ``{output}-SSSSS-of-NNNNN.tfrecord``,
``{output}.features.json``, and the rejects table under ``{output}_tables/rejects/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio

from medbeam.imaging.codec import DEFAULT_PNG_COMPRESSION, ImageShape
from medbeam.imaging.resize import check_resize_mode
from medbeam.io import files
from medbeam.io import tfrecord as tfr
from medbeam.io.examples import dicom_png_feature_specs, normalize_output
from medbeam.pipelines import runner
from medbeam.transforms.examples import (
    NAMESPACE,
    REJECTS,
    STATS,
    DicomPngToExampleFn,
    file_paths,
    write_outputs,
)
from medbeam.transforms.progress import ProgressTicker

JOB = "from-dicom-png"
#: Single-core cost per PNG (~12 ms measured, with resize), for the local runner's choice: from ~1,000 PNGs
#: on, worker processes (~5 CPU-seconds to start) repay themselves.
COST = runner.CostModel(seconds_per_file=0.010)


# ---------------------------------------------------------------------------------------------------
# Pure parts


def input_root(path: str) -> str:
    """The directory (local) or prefix (gs://, s3://) the PNG layout starts at, without a trailing slash."""
    if files.is_glob(path):
        raise ValueError(f"--input is the export's PNG directory, not a glob: {path!r}")
    if files.has_scheme(path):
        return path.rstrip("/")
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise ValueError(f"--input {path!r} is not a directory")
    return root


# ---------------------------------------------------------------------------------------------------
# Config, counts


@dataclass
class PngToTfrecordConfig:
    """Everything `medbeam tfrecord from-dicom-png` takes; usable from Python as a library call."""

    input: str
    output: str
    shape: ImageShape | None = None
    #: stretch, pad or crop: how an image of another aspect ratio reaches `shape` (medbeam.imaging.resize).
    resize_mode: str = "stretch"
    num_shards: int | None = None
    png_compression: int = DEFAULT_PNG_COMPRESSION
    verify: bool = True
    #: Progress bars on local runs (on a terminal).
    progress: bool = True
    target_shard_bytes: int = tfr.DEFAULT_SHARD_BYTES
    #: Also load the rejects table into BigQuery: a medbeam.io.bigquery.BigQueryTarget.
    bigquery: Any = None

    def __post_init__(self) -> None:
        self.input = input_root(self.input)
        self.output = normalize_output(self.output)
        if isinstance(self.shape, (tuple, list)):
            self.shape = ImageShape.parse(self.shape)
        check_resize_mode(self.resize_mode)
        if self.num_shards is not None and not 1 <= self.num_shards <= tfr.MAX_SHARDS:
            raise ValueError(f"--num-shards must be 1-{tfr.MAX_SHARDS}")
        if not 0 <= self.png_compression <= 9:
            raise ValueError("--png-compression must be 0-9")


COUNT_NAMES = ("files_matched", "files_skipped", "pngs_in", "records_written", "rejected")


@dataclass
class PngToTfrecordCounts:
    files_matched: int = 0
    files_skipped: int = 0
    pngs_in: int = 0
    records_written: int = 0
    rejected: int = 0
    shards: int = 0

    def summary(self) -> str:
        skipped = f"{self.files_skipped} non-PNG files skipped" if self.files_skipped else ""
        return runner.summary_line(f"{self.pngs_in} PNGs", f"{self.records_written} records", self.rejected, [skipped])


# ---------------------------------------------------------------------------------------------------
# Beam


def build(p: beam.Pipeline, config: PngToTfrecordConfig, ticker: ProgressTicker | None = None) -> None:
    """Wire from-dicom-png into `p`."""
    converted = (
        p
        | "Pattern" >> beam.Create([config.input + "/**"])
        | "Match" >> fileio.MatchAll()
        | "Files only" >> beam.FlatMap(file_paths)
        | "Distinct" >> beam.Distinct()
        | "Spread files" >> beam.Reshuffle()
        | "To Example"
        >> beam.ParDo(
            DicomPngToExampleFn(
                config.input, config.shape, config.png_compression, config.verify, config.resize_mode, ticker
            )
        ).with_outputs(REJECTS, STATS, main="records")
    )
    write_outputs(
        p,
        config.output,
        JOB,
        converted.records,
        converted[REJECTS],
        converted[STATS],
        dicom_png_feature_specs(config.shape, config.resize_mode),
        COUNT_NAMES,
        config.num_shards,
        config.target_shard_bytes,
        extra={"source": config.input},
        bigquery=config.bigquery,
    )


# ---------------------------------------------------------------------------------------------------
# Running


def run(config: PngToTfrecordConfig, beam_args: list[str] | None = None) -> PngToTfrecordCounts:
    """Run from-dicom-png to completion; counts from Beam Metrics, the shard count from features.json."""
    options = runner.pipeline_options(beam_args)
    files.check_inputs_exist([config.input + "/**"])
    listed = len(files.list_files(config.input + "/**")) if runner.is_local_runner(options) else None
    plan = runner.LocalPlan(lambda: COST.seconds(listed or 0))
    result = runner.run_job(
        lambda p, tickers: build(p, config, tickers["files"]),
        beam_args,
        plan,
        progress={"files": listed},
        show_progress=config.progress,
        options=options,
    )
    shards = len(tfr.read_description(config.output)["files"])
    return runner.counts_of(PngToTfrecordCounts, runner.counters(result, NAMESPACE), shards=shards)
