"""`medbeam dicom export` PNGs → TFRecord shards of tf.train.Example, as Google's png_to_tfrecord did.

    match {input}/** → reshuffle → parse path, read, check/resize PNG, Example ─┬─ WriteExamples
                                                                               ├─ rejects → WriteTable
                                                                               └─ counts → features.json

Input layout (what the export writes): ``{study}/{series}/{sop}.png`` for single-frame instances and
``{study}/{series}/{sop}/{frame:04d}.png`` (1-based) for multi-frame ones. Every record has
``study``, ``series``, ``instance`` (the SOPInstanceUID) and ``png_bytes`` like Google's records, plus
``frame`` (int64, 1-based; 1 for single-frame instances), so multi-frame instances stay joinable to the
metadata table by SOPInstanceUID. Outputs: ``{output}-SSSSS-of-NNNNN.tfrecord``,
``{output}.features.json``, and the rejects table under ``{output}_rejects/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import TaggedOutput

from medbeam.imaging.codec import (
    DEFAULT_PNG_COMPRESSION,
    PNG,
    FormatMismatchError,
    ImageDecodeError,
    ImageShape,
    transcode,
)
from medbeam.imaging.resize import check_resize_mode
from medbeam.io import files, tables
from medbeam.io import tfrecord as tfr
from medbeam.pipelines.common import is_local_runner, local_beam_args
from medbeam.transforms.errors import REJECT_SCHEMA, reject
from medbeam.transforms.outputs import own_dir

JOB = "from-dicom-png"
REJECTS, STATS = "rejects", "stats"
#: Local runs with at least this many files use every core (DirectRunner multi_processing). Higher than the
#: export's 200: an image here costs ~12 ms, and two worker processes cost ~5 CPU-seconds to start (measured).
AUTO_PARALLEL_MIN_FILES = 1000
_FRAME = re.compile(r"^(\d{1,9})\.png$", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------
# Pure parts


def dicom_png_example(study: str, series: str, instance: str, png_bytes: bytes, frame: int = 1) -> bytes:
    """One serialized tf.train.Example with Google's features (study, series, instance, png_bytes) + frame.

    `frame` is 1-based; single-frame instances are frame 1. The DICOM export's --tfrecord-prefix calls this.
    """
    return tfr.encode_example(
        {
            "study": tfr.bytes_feature(study),
            "series": tfr.bytes_feature(series),
            "instance": tfr.bytes_feature(instance),
            "frame": tfr.int64_feature(frame),
            "png_bytes": tfr.bytes_feature(png_bytes),
        }
    )


def dicom_png_feature_specs(shape: ImageShape | None, resize_mode: str = "stretch") -> list[tfr.FeatureSpec]:
    image = {"format": PNG, "height": None, "width": None, "channels": None}
    if shape is not None:
        image.update(height=shape.height, width=shape.width, channels=shape.channels, resize_mode=resize_mode)
    return [
        tfr.FeatureSpec("study", "string", description="StudyInstanceUID"),
        tfr.FeatureSpec("series", "string", description="SeriesInstanceUID"),
        tfr.FeatureSpec("instance", "string", description="SOPInstanceUID"),
        tfr.FeatureSpec("frame", "int64", description="1-based frame number (1 for single-frame instances)"),
        tfr.FeatureSpec("png_bytes", "string", description="PNG-encoded pixels", image=image),
    ]


class LayoutError(ValueError):
    """A file under the input that is not where `medbeam dicom export` puts its PNGs."""


def parse_png_path(relative: str) -> tuple[str, str, str, int]:
    """`study/series/sop.png` → (study, series, sop, 1); `study/series/sop/0007.png` → (…, sop, 7)."""
    parts = relative.split("/")
    if len(parts) == 3 and parts[2].lower().endswith(".png") and len(parts[2]) > 4:
        return parts[0], parts[1], parts[2][:-4], 1
    if len(parts) == 4:
        match = _FRAME.match(parts[3])
        if match and int(match.group(1)) >= 1:
            return parts[0], parts[1], parts[2], int(match.group(1))
    raise LayoutError(
        f"{relative!r} is not {{study}}/{{series}}/{{instance}}.png "
        "nor {study}/{series}/{instance}/{frame}.png"
    )


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


def normalize_output(prefix: str) -> str:
    tfr.check_prefix(prefix)
    return prefix if files.has_scheme(prefix) else os.path.abspath(os.path.expanduser(prefix))


def rejects_location(prefix: str) -> tuple[str, str]:
    """(table_dir, table name) of a dataset's rejects table: ``{prefix}_rejects/``."""
    directory, _, base = prefix.rpartition("/")
    return (directory or "."), f"{base}_rejects"


def record_stats(features: dict[str, Any]) -> dict[str, int]:
    stats = {"records_written": 1}
    stats.update({tfr.present_key(name): 1 for name, value in features.items() if value is not None})
    return stats


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
    target_shard_bytes: int = tfr.DEFAULT_SHARD_BYTES

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

    @classmethod
    def from_description(cls, doc: dict[str, Any]) -> PngToTfrecordCounts:
        return cls(**{k: int(doc["counts"].get(k, 0)) for k in COUNT_NAMES}, shards=len(doc["files"]))

    def summary(self) -> str:
        line = f"{self.pngs_in} PNGs in, {self.records_written} records written, {self.rejected} rejected"
        if self.files_skipped:
            line += f" ({self.files_skipped} non-PNG files skipped)"
        return line


# ---------------------------------------------------------------------------------------------------
# Beam


def transcode_stage(exc: Exception) -> str:
    return "decode" if isinstance(exc, (ImageDecodeError, FormatMismatchError)) else "resize"


class DicomPngToExampleFn(beam.DoFn):
    """PNG path → (relative path, Example bytes); files elsewhere in the tree → rejects; non-PNGs skipped."""

    def __init__(
        self, root: str, shape: ImageShape | None, png_compression: int, verify: bool, resize_mode: str = "stretch"
    ):
        self._root = root
        self._own_dir = own_dir(root).rstrip("/") + "/"
        self._shape = shape
        self._resize_mode = resize_mode
        self._png_compression = png_compression
        self._verify = verify

    def process(self, path: str) -> Iterator[Any]:
        if path.startswith(self._own_dir):
            return  # the export's manifest of the PNG tree: not an input, not a skipped file either
        if not path.lower().endswith(".png"):
            yield TaggedOutput(STATS, {"files_matched": 1, "files_skipped": 1})
            return
        yield TaggedOutput(STATS, {"files_matched": 1, "pngs_in": 1})
        relative = path[len(self._root) + 1 :] if path.startswith(self._root + "/") else path
        stage = "path"
        try:
            study, series, instance, frame = parse_png_path(relative)
            stage = "read"
            data = files.read_bytes(path)
            stage = "decode"
            png = transcode(
                data,
                PNG,
                self._shape,
                png_compression=self._png_compression,
                verify=self._verify,
                resize_mode=self._resize_mode,
            )
        except Exception as exc:  # noqa: BLE001 - any failure is this file's reject, the run goes on
            if stage == "decode":
                stage = transcode_stage(exc)
            yield TaggedOutput(STATS, {"rejected": 1})
            yield TaggedOutput(REJECTS, reject(path, stage, exc))
            return
        yield relative, dicom_png_example(study, series, instance, png, frame)
        yield TaggedOutput(
            STATS, record_stats({"study": 1, "series": 1, "instance": 1, "frame": 1, "png_bytes": 1})
        )


def file_paths(match: FileMetadata) -> Iterator[str]:
    if not match.path.endswith("/"):
        yield match.path


def write_outputs(
    p: beam.Pipeline,
    prefix: str,
    job: str,
    records: beam.PCollection,
    rejects: beam.PCollection,
    stats: beam.PCollection,
    specs: list[tfr.FeatureSpec],
    count_names: tuple[str, ...],
    num_shards: int | None,
    target_shard_bytes: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Shards, rejects table and features.json: the sinks both TFRecord jobs share."""
    shards = records | "Write TFRecords" >> tfr.WriteExamples(prefix, num_shards, target_shard_bytes)
    table_dir, table = rejects_location(prefix)
    rejects_manifest = rejects | "Write rejects" >> tables.WriteTable(
        table_dir, table, REJECT_SCHEMA, ("uri", "stage")
    )
    _ = p | "Describe" >> tfr.DescribeDataset(
        prefix, job, specs, stats, shards, rejects_manifest, count_names, extra
    )


def build(p: beam.Pipeline, config: PngToTfrecordConfig) -> None:
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
            DicomPngToExampleFn(config.input, config.shape, config.png_compression, config.verify, config.resize_mode)
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
    )


# ---------------------------------------------------------------------------------------------------
# Running (shared with images_to_tfrecord)


def pipeline_options(beam_args: list[str] | None, count_files) -> PipelineOptions:
    """Beam options from pass-through args; local runs over many files use every core.

    `count_files` is called (driver-side listing) only for local runners.
    """
    beam_args = list(beam_args or [])
    options = PipelineOptions(beam_args)
    FileSystems.set_options(options)
    if is_local_runner(options):
        options = PipelineOptions(local_beam_args(beam_args, count_files() >= AUTO_PARALLEL_MIN_FILES))
    return options


def run_pipeline(options: PipelineOptions, build_fn) -> None:
    pipeline = beam.Pipeline(options=options)
    build_fn(pipeline)
    pipeline.run().wait_until_finish()


def run(config: PngToTfrecordConfig, beam_args: list[str] | None = None) -> PngToTfrecordCounts:
    """Run from-dicom-png to completion; the counts come back from ``{output}.features.json``."""
    options = pipeline_options(beam_args, lambda: len(files.list_files(config.input + "/**")))
    run_pipeline(options, lambda p: build(p, config))
    return PngToTfrecordCounts.from_description(tfr.read_description(config.output))
