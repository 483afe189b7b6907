"""Labelled JPG/PNG images → TFRecord shards of tf.train.Example, as Google's images_to_tfrecord did.

    prefixes → MatchAll → distinct → path regex → (path, ·) ──────────────────────┐
    label query: DuckDB in the driver → {output}.labels.parquet → ReadFromParquet ├ CoGroupByKey → exactly
                 or BigQuery (dry run in the driver) → QueryRowsFn → (path, row) ─┘   one label row?
        → reshuffle → read, check/resize/re-encode image, build Example ─┬─ WriteExamples
                                                                          ├─ rejects → WriteTable
                                                                          └─ counts → features.json

Records: ``path`` (the image's full URI), ``jpg_bytes`` or ``png_bytes``, and one feature per other column
of the label query, typed from its SQL type (integers and booleans → int64_list, floating and decimal →
float_list, text and blobs → bytes_list, lists of those → variable-length lists; NULL → feature absent).
The join is on the full URI: the query's ``path`` must equal what the file listing returns
(``gs://bucket/jpgs/a.jpg``, ``s3://…``, or an absolute local path).

Images without a label row, images with several, and label rows without an image are counted and listed
in the rejects table (one row per path), never silently dropped and never multiplied.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio

from medbeam.imaging.codec import (
    DEFAULT_JPEG_QUALITY,
    DEFAULT_PNG_COMPRESSION,
    JPG,
    ImageShape,
    normalize_format,
)
from medbeam.imaging.resize import check_resize_mode
from medbeam.io import files, tables
from medbeam.io import tfrecord as tfr
from medbeam.io.examples import IMAGE_FEATURES, normalize_output, rejects_location
from medbeam.io.labels import (
    PATH_COLUMN,
    LabelColumn,
    label_columns_from_arrow,
    label_columns_from_bigquery,
    normalize_label_table,
    query_duckdb,
)
from medbeam.pipelines import runner
from medbeam.transforms.examples import (
    NAMESPACE,
    REJECTS,
    STATS,
    FilterPathsFn,
    ImageToExampleFn,
    JoinLabelsFn,
    file_paths,
    key_label_row,
    write_outputs,
)
from medbeam.transforms.progress import ProgressTicker

JOB = "from-images"
DEFAULT_PATH_REGEX = {JPG: r"(?i).*\.jpe?g", "png": r"(?i).*\.png"}
#: Single-core cost per image, for the local runner's choice (as from-dicom-png).
COST = runner.CostModel(seconds_per_file=0.010)


# ---------------------------------------------------------------------------------------------------
# Config, labels, counts


@dataclass
class LabelSource:
    """Where the pipeline reads label rows from, and their columns (resolved in the driver)."""

    columns: list[LabelColumn]
    parquet_path: str | None = None  # DuckDB result, staged as {output}.labels.parquet
    bigquery_sql: str | None = None
    #: The project the BigQuery query runs (and is billed) in, and an emulator endpoint.
    bigquery_project: str | None = None
    bigquery_endpoint: str | None = None


@dataclass
class ImagesToTfrecordConfig:
    """Everything `medbeam tfrecord from-images` takes; usable from Python as a library call."""

    inputs: list[str]
    output: str
    image_format: str = JPG
    path_regex: str | None = None
    shape: ImageShape | None = None
    #: stretch, pad or crop: how an image of another aspect ratio reaches `shape` (medbeam.imaging.resize).
    resize_mode: str = "stretch"
    labels_sql: str | None = None
    bigquery_sql: str | None = None
    #: Emulator endpoint for --bigquery-sql (else BIGQUERY_EMULATOR_HOST, else Google's API).
    bigquery_endpoint: str | None = None
    duckdb_path: str | None = None
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    png_compression: int = DEFAULT_PNG_COMPRESSION
    num_shards: int | None = None
    verify: bool = True
    #: Progress bars on local runs (on a terminal).
    progress: bool = True
    target_shard_bytes: int = tfr.DEFAULT_SHARD_BYTES
    #: Also load the rejects table into BigQuery: a medbeam.io.bigquery.BigQueryTarget.
    bigquery: Any = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("give at least one --input prefix, directory or glob")
        for value in self.inputs:
            if not files.has_scheme(value) and not files.is_glob(value) and not os.path.exists(value):
                raise ValueError(f"--input {value!r} does not exist")
        self.output = normalize_output(self.output)
        self.image_format = normalize_format(self.image_format)
        if self.path_regex is None:
            self.path_regex = DEFAULT_PATH_REGEX[self.image_format]
        try:
            re.compile(self.path_regex)
        except re.error as exc:
            raise ValueError(f"--path-regex {self.path_regex!r} is not a valid regular expression: {exc}") from exc
        if isinstance(self.shape, (tuple, list)):
            self.shape = ImageShape.parse(self.shape)
        check_resize_mode(self.resize_mode)
        if self.labels_sql is not None and self.bigquery_sql is not None:
            raise ValueError("give --labels-sql (DuckDB) or --bigquery-sql, not both")
        if self.duckdb_path is not None and self.labels_sql is None:
            raise ValueError("--duckdb is the database --labels-sql runs in; give --labels-sql")
        if self.duckdb_path is not None and files.has_scheme(self.duckdb_path):
            raise ValueError("--duckdb must be a local file")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("--jpeg-quality must be 1-100")
        if not 0 <= self.png_compression <= 9:
            raise ValueError("--png-compression must be 0-9")
        if self.num_shards is not None and not 1 <= self.num_shards <= tfr.MAX_SHARDS:
            raise ValueError(f"--num-shards must be 1-{tfr.MAX_SHARDS}")

    @property
    def image_feature(self) -> str:
        return IMAGE_FEATURES[self.image_format]

    @property
    def has_labels(self) -> bool:
        return self.labels_sql is not None or self.bigquery_sql is not None

    @property
    def patterns(self) -> list[str]:
        return [files.input_pattern(i, remote="folder") for i in self.inputs]


def labels_parquet_path(prefix: str) -> str:
    return f"{prefix}.labels.parquet"


def resolve_labels(
    config: ImagesToTfrecordConfig, project: str | None = None, bigquery_client: Any = None
) -> LabelSource | None:
    """Driver side: run the DuckDB query and stage its rows, or dry-run the BigQuery one for its schema.

    The BigQuery query runs in `project` (Beam's --project), else in the project of --bigquery-dataset,
    else in the application-default credentials' project."""
    if config.labels_sql is not None:
        table = query_duckdb(config.labels_sql, config.duckdb_path)
        columns = label_columns_from_arrow(table.schema, config.image_feature)
        table = normalize_label_table(table, columns)
        path = labels_parquet_path(config.output)
        files.write_bytes(path, _parquet_bytes(table))
        return LabelSource(columns, parquet_path=path)
    if config.bigquery_sql is not None:
        from medbeam.io.bigquery import make_client, query_schema

        project = project or (config.bigquery.project if config.bigquery is not None else None)
        client = bigquery_client or make_client(project, config.bigquery_endpoint)
        try:
            schema = query_schema(client, config.bigquery_sql)
        finally:
            if bigquery_client is None:
                client.close()
        return LabelSource(
            label_columns_from_bigquery(schema, config.image_feature),
            bigquery_sql=config.bigquery_sql,
            bigquery_project=project or client.project,
            bigquery_endpoint=config.bigquery_endpoint,
        )
    return None


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


COUNT_NAMES = (
    "files_matched",
    "files_skipped",
    "images_in",
    "records_written",
    "rejected",
    "images_unlabeled",
    "images_duplicate_labels",
    "images_failed",
    "label_rows_in",
    "label_rows_matched",
    "duplicate_label_rows",
    "orphan_label_rows",
)


@dataclass
class ImagesToTfrecordCounts:
    files_matched: int = 0
    files_skipped: int = 0
    images_in: int = 0
    records_written: int = 0
    rejected: int = 0
    images_unlabeled: int = 0
    images_duplicate_labels: int = 0
    images_failed: int = 0
    label_rows_in: int = 0
    label_rows_matched: int = 0
    duplicate_label_rows: int = 0
    orphan_label_rows: int = 0
    shards: int = 0
    labelled: bool = field(default=False, repr=False)
    #: When no label row found its image: one label path next to one image path (set by run()).
    join_hint: str = field(default="", repr=False, compare=False)

    def summary(self) -> str:
        line = f"{self.images_in} images in, {self.records_written} records written, {self.rejected} rejected"
        details = []
        if self.images_unlabeled:
            details.append(f"{self.images_unlabeled} without a label row")
        if self.images_duplicate_labels:
            details.append(f"{self.images_duplicate_labels} with several label rows")
        if self.images_failed:
            details.append(f"{self.images_failed} unreadable or undecodable")
        if details:
            line += f" ({', '.join(details)})"
        if self.labelled:
            line += f"; {self.label_rows_in} label rows, {self.orphan_label_rows} without an image" + (
                f", {self.duplicate_label_rows} in duplicate groups" if self.duplicate_label_rows else ""
            )
        if self.join_hint:
            line += "\n" + self.join_hint
        return line


def join_hint(counts: ImagesToTfrecordCounts, rejects: pa.Table) -> str:
    """Why nothing joined, shown by example: label paths must equal the image URIs, character for character."""
    if not counts.labelled or counts.label_rows_matched or not counts.label_rows_in:
        return ""
    rows = rejects.to_pylist()
    label = next((r["uri"] for r in rows if r["error_type"] == "NoImage"), None)
    image = next((r["uri"] for r in rows if r["error_type"] == "NoLabel"), None)
    if label is None or image is None:
        return ""
    return (
        f"none of the {counts.label_rows_in} label paths matched an image: a label path is {label!r}, an image "
        f"path is {image!r}; the query's path column must hold the full image URI (absolute local path, gs://…)"
    )


# ---------------------------------------------------------------------------------------------------
# Beam


def feature_specs(config: ImagesToTfrecordConfig, labels: LabelSource | None) -> list[tfr.FeatureSpec]:
    image = {"format": config.image_format, "height": None, "width": None, "channels": None}
    if config.shape is not None:
        image.update(height=config.shape.height, width=config.shape.width, channels=config.shape.channels)
        image["resize_mode"] = config.resize_mode
        if config.image_format == JPG:
            image["jpeg_quality"] = config.jpeg_quality
    specs = [
        tfr.FeatureSpec(PATH_COLUMN, "string", description="the source image's full URI"),
        tfr.FeatureSpec(
            config.image_feature, "string", description=f"{config.image_format.upper()}-encoded image", image=image
        ),
    ]
    return specs + [c.spec() for c in (labels.columns if labels else [])]


def read_label_rows(p: beam.Pipeline, labels: LabelSource) -> beam.PCollection:
    if labels.bigquery_sql is not None:
        from medbeam.transforms.bigquery import QueryRowsFn

        return (
            p
            | "Label query" >> beam.Create([labels.bigquery_sql])
            | "Read labels (BigQuery)" >> beam.ParDo(QueryRowsFn(labels.bigquery_project, labels.bigquery_endpoint))
        )
    return p | "Read labels" >> beam.io.ReadFromParquet(labels.parquet_path)


def build(
    p: beam.Pipeline, config: ImagesToTfrecordConfig, labels: LabelSource | None, ticker: ProgressTicker | None = None
) -> None:
    """Wire from-images into `p`; `labels` comes from resolve_labels() (None: no label join)."""
    if config.has_labels and labels is None:
        raise ValueError("the config has a label query: pass the LabelSource that resolve_labels() returns")
    images = (
        p
        | "Patterns" >> beam.Create(sorted(set(config.patterns)))
        | "Match" >> fileio.MatchAll()
        | "Files only" >> beam.FlatMap(file_paths)
        | "Distinct" >> beam.Distinct()  # overlapping prefixes must not duplicate records
        | "Path regex" >> beam.ParDo(FilterPathsFn(config.path_regex)).with_outputs(STATS, main="paths")
    )
    stats = [images[STATS]]
    rejects = []
    if labels is not None:
        keyed_labels = read_label_rows(p, labels) | "Key labels" >> beam.Map(key_label_row)
        joined = (
            {"images": images.paths | "Key images" >> beam.Map(lambda path: (path, None)), "labels": keyed_labels}
            | "Join labels" >> beam.CoGroupByKey()
            | "One label row" >> beam.ParDo(JoinLabelsFn()).with_outputs(REJECTS, STATS, main="labelled")
        )
        to_convert = joined.labelled
        stats.append(joined[STATS])
        rejects.append(joined[REJECTS])
    else:
        to_convert = images.paths | "No labels" >> beam.Map(lambda path: (path, None))
    converted = (
        to_convert
        | "Spread images" >> beam.Reshuffle()
        | "To Example"
        >> beam.ParDo(
            ImageToExampleFn(
                config.image_format,
                config.shape,
                config.jpeg_quality,
                config.png_compression,
                config.verify,
                labels.columns if labels else [],
                config.resize_mode,
                ticker,
            )
        ).with_outputs(REJECTS, STATS, main="records")
    )
    stats.append(converted[STATS])
    rejects.append(converted[REJECTS])
    extra: dict[str, Any] = {"inputs": list(config.inputs), "path_regex": config.path_regex}
    if labels is not None:
        extra["labels"] = (
            {"bigquery_sql": labels.bigquery_sql}
            if labels.bigquery_sql is not None
            else {"sql": config.labels_sql, "rows": labels.parquet_path.rsplit("/", 1)[-1]}
        )
    write_outputs(
        p,
        config.output,
        JOB,
        converted.records,
        rejects | "All rejects" >> beam.Flatten(),
        stats | "All stats" >> beam.Flatten(),
        feature_specs(config, labels),
        COUNT_NAMES,
        config.num_shards,
        config.target_shard_bytes,
        extra=extra,
        bigquery=config.bigquery,
    )


def run(
    config: ImagesToTfrecordConfig, beam_args: list[str] | None = None, *, bigquery_client: Any = None
) -> ImagesToTfrecordCounts:
    """Run from-images to completion; counts from Beam Metrics, the shard count from features.json."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    options = runner.pipeline_options(beam_args)
    files.check_inputs_exist(sorted(set(config.patterns)))
    labels = resolve_labels(config, options.view_as(GoogleCloudOptions).project, bigquery_client)
    patterns = sorted(set(config.patterns))
    plan = runner.LocalPlan(lambda: COST.seconds(sum(len(files.list_files(pattern)) for pattern in patterns)))
    result = runner.run_job(
        lambda p, tickers: build(p, config, labels, tickers["images"]),
        beam_args,
        plan,
        progress={"images": None},
        show_progress=config.progress,
        options=options,
    )
    shards = len(tfr.read_description(config.output)["files"])
    values = runner.counters(result, NAMESPACE)
    counts = runner.counts_of(ImagesToTfrecordCounts, values, shards=shards, labelled=labels is not None)
    if counts.labelled and not counts.label_rows_matched:
        counts.join_hint = join_hint(counts, tables.read_table(*rejects_location(config.output)))
    return counts
