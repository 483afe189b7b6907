"""Beam steps of the TFRecord jobs: images → tf.train.Example records, label join, and the dataset sinks.

Each DoFn calls pure functions (medbeam.imaging.codec, medbeam.io.examples, medbeam.io.labels). Counts
go to Beam Metrics (`count`), which every runner reports, and the same figures, per feature, to the
dataset description (features.json) through the STATS output.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import FileMetadata
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from medbeam.imaging.codec import PNG, ImageShape, transcode
from medbeam.io import files, tables
from medbeam.io import tfrecord as tfr
from medbeam.io.examples import (
    IMAGE_FEATURES,
    dicom_png_example,
    parse_png_path,
    record_stats,
    rejects_location,
    transcode_stage,
)
from medbeam.io.labels import (
    PATH_COLUMN,
    LabelColumn,
    describe_rows,
    label_feature_values,
)
from medbeam.transforms.errors import REJECT_SCHEMA, reject
from medbeam.transforms.outputs import own_dir
from medbeam.transforms.progress import ProgressTicker

NAMESPACE = "medbeam.tfrecord"
REJECTS, STATS = "rejects", "stats"


def count(stats: dict[str, int]) -> TaggedOutput:
    """The stats of one element: to Beam Metrics (the run's counts) and to STATS (the dataset description)."""
    for name, value in stats.items():
        Metrics.counter(NAMESPACE, name).inc(value)
    return TaggedOutput(STATS, stats)


class DicomPngToExampleFn(beam.DoFn):
    """PNG path → (relative path, Example bytes); files elsewhere in the tree → rejects; non-PNGs skipped."""

    def __init__(
        self,
        root: str,
        shape: ImageShape | None,
        png_compression: int,
        verify: bool,
        resize_mode: str = "stretch",
        ticker: ProgressTicker | None = None,
    ):
        self._ticker = ticker or ProgressTicker(None)
        self._root = root
        self._own_dir = own_dir(root).rstrip("/") + "/"
        self._shape = shape
        self._resize_mode = resize_mode
        self._png_compression = png_compression
        self._verify = verify

    def process(self, path: str) -> Iterator[Any]:
        if path.startswith(self._own_dir):
            return  # the export's manifest of the PNG tree: not an input, not a skipped file either
        yield from self._convert(path)
        self._ticker.tick()

    def _convert(self, path: str) -> Iterator[Any]:
        if not path.lower().endswith(".png"):
            yield count({"files_matched": 1, "files_skipped": 1})
            return
        yield count({"files_matched": 1, "pngs_in": 1})
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
            yield count({"rejected": 1})
            yield TaggedOutput(REJECTS, reject(path, stage, exc))
            return
        yield relative, dicom_png_example(study, series, instance, png, frame)
        yield count(record_stats({"study": 1, "series": 1, "instance": 1, "frame": 1, "png_bytes": 1}))


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
    bigquery: Any = None,
) -> None:
    """Shards, rejects table and features.json: the sinks both TFRecord jobs share; the rejects table
    also loaded into BigQuery when `bigquery` (a BigQueryTarget) is given."""
    shards = records | "Write TFRecords" >> tfr.WriteExamples(prefix, num_shards, target_shard_bytes)
    table_dir, table = rejects_location(prefix)
    rejects_manifest = rejects | "Write rejects" >> tables.WriteTable(
        table_dir, table, REJECT_SCHEMA, ("uri", "stage")
    )
    _ = p | "Describe" >> tfr.DescribeDataset(
        prefix, job, specs, stats, shards, rejects_manifest, count_names, extra
    )
    if bigquery is not None:
        from medbeam.transforms.bigquery import load_into_bigquery

        load_into_bigquery(rejects_manifest, bigquery, [table], NAMESPACE)


class FilterPathsFn(beam.DoFn):
    """Keep paths the regex fully matches; count the others as skipped."""

    def __init__(self, regex: str):
        self._regex = regex
        self._compiled: re.Pattern | None = None

    def setup(self) -> None:
        self._compiled = re.compile(self._regex)

    def process(self, path: str) -> Iterator[Any]:
        if self._compiled.fullmatch(path):
            yield path
            yield count({"files_matched": 1, "images_in": 1})
        else:
            yield count({"files_matched": 1, "files_skipped": 1})


def key_label_row(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Label row → (path, row); a NULL path becomes "", which no image has (so it is reported, once)."""
    path = row.get(PATH_COLUMN)
    return ("" if path is None else str(path)), row


class JoinLabelsFn(beam.DoFn):
    """(path, {images, labels}) → (path, row) for exactly one label row; every other case a counted reject."""

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        path, groups = element
        has_image = any(True for _ in groups["images"])
        rows = list(groups["labels"])
        stats = {"label_rows_in": len(rows)}
        if not has_image:
            stats["orphan_label_rows"] = len(rows)
            where = (
                "with an empty or NULL path"
                if path == ""
                else ("with no image at this path among the inputs matching the path regex")
            )
            yield TaggedOutput(
                REJECTS,
                reject(
                    path,
                    "join",
                    f"{len(rows)} label row(s) {where}: {describe_rows(rows)}",
                    "NullPath" if path == "" else "NoImage",
                ),
            )
        elif not rows:
            stats.update(rejected=1, images_unlabeled=1)
            yield TaggedOutput(REJECTS, reject(path, "join", "no label row for this image", "NoLabel"))
        elif len(rows) > 1:
            stats.update(rejected=1, images_duplicate_labels=1, duplicate_label_rows=len(rows))
            yield TaggedOutput(
                REJECTS,
                reject(
                    path, "join", f"{len(rows)} label rows for one image: {describe_rows(rows)}", "DuplicateLabel"
                ),
            )
        else:
            stats["label_rows_matched"] = 1
            yield path, rows[0]
        yield count(stats)


class ImageToExampleFn(beam.DoFn):
    """(path, label row or None) → (path, Example bytes): read, check/resize/re-encode, add the labels."""

    def __init__(
        self,
        image_format: str,
        shape: ImageShape | None,
        jpeg_quality: int,
        png_compression: int,
        verify: bool,
        columns: Sequence[LabelColumn],
        resize_mode: str = "stretch",
        ticker: ProgressTicker | None = None,
    ):
        self._ticker = ticker or ProgressTicker(None)
        self._format = image_format
        self._feature = IMAGE_FEATURES[image_format]
        self._shape = shape
        self._quality = jpeg_quality
        self._compression = png_compression
        self._verify = verify
        self._columns = list(columns)
        self._resize_mode = resize_mode

    def process(self, element: tuple[str, dict[str, Any] | None]) -> Iterator[Any]:
        yield from self._convert(*element)
        self._ticker.tick()

    def _convert(self, path: str, row: dict[str, Any] | None) -> Iterator[Any]:
        stage = "labels"
        try:
            labels = label_feature_values(row, self._columns) if row is not None else {}
            stage = "read"
            data = files.read_bytes(path)
            stage = "decode"
            image = transcode(
                data,
                self._format,
                self._shape,
                jpeg_quality=self._quality,
                png_compression=self._compression,
                verify=self._verify,
                resize_mode=self._resize_mode,
            )
        except Exception as exc:  # noqa: BLE001 - any failure is this image's reject, the run goes on
            if stage == "decode":
                stage = transcode_stage(exc)
            yield count({"rejected": 1, "images_failed": 1})
            yield TaggedOutput(REJECTS, reject(path, stage, exc))
            return
        features = {PATH_COLUMN: tfr.bytes_feature(path), self._feature: tfr.bytes_feature(image), **labels}
        yield path, tfr.encode_example(features)
        yield count(record_stats(features))
