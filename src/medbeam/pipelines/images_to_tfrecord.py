"""Labelled JPG/PNG images → TFRecord shards of tf.train.Example, as Google's images_to_tfrecord did.

    prefixes → MatchAll → distinct → path regex → (path, ·) ──────────────────────┐
    label query: DuckDB in the driver → {output}.labels.parquet → ReadFromParquet ├ CoGroupByKey → exactly
                 or BigQuery → ReadFromBigQuery → (path, row) ────────────────────┘   one label row?
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

import decimal
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.pvalue import TaggedOutput

from medbeam.imaging.codec import (
    DEFAULT_JPEG_QUALITY,
    DEFAULT_PNG_COMPRESSION,
    JPG,
    ImageShape,
    normalize_format,
    transcode,
)
from medbeam.imaging.resize import check_resize_mode
from medbeam.io import files
from medbeam.io import tfrecord as tfr
from medbeam.pipelines.png_to_tfrecord import (
    REJECTS,
    STATS,
    file_paths,
    normalize_output,
    pipeline_options,
    record_stats,
    run_pipeline,
    transcode_stage,
    write_outputs,
)
from medbeam.transforms.errors import reject

JOB = "from-images"
PATH_COLUMN = "path"
IMAGE_FEATURES = {JPG: "jpg_bytes", "png": "png_bytes"}
DEFAULT_PATH_REGEX = {JPG: r"(?i).*\.jpe?g", "png": r"(?i).*\.png"}
_DESCRIBE_ROWS = 3


# ---------------------------------------------------------------------------------------------------
# Label columns: SQL types → feature kinds, values → FeatureValues (pure)


class LabelSchemaError(ValueError):
    """The label query's columns cannot become features."""


@dataclass(frozen=True)
class LabelColumn:
    name: str
    kind: str  # tfrecord.BYTES / FLOAT / INT64
    varlen: bool = False
    source_type: str = ""

    def spec(self) -> tfr.FeatureSpec:
        return tfr.FeatureSpec(
            self.name,
            tfr.KIND_DTYPES[self.kind],
            shape=None if self.varlen else [],
            varlen=self.varlen,
            source_type=self.source_type,
        )


def _arrow_kind(name: str, arrow_type: pa.DataType) -> str:
    if pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        return tfr.INT64
    if pa.types.is_decimal(arrow_type):
        return tfr.INT64 if arrow_type.scale == 0 else tfr.FLOAT
    if pa.types.is_floating(arrow_type):
        return tfr.FLOAT
    if (
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_string_view(arrow_type)
    ):
        return tfr.BYTES
    if (
        pa.types.is_binary(arrow_type)
        or pa.types.is_large_binary(arrow_type)
        or pa.types.is_fixed_size_binary(arrow_type)
    ):
        return tfr.BYTES
    if pa.types.is_null(arrow_type):
        raise LabelSchemaError(f"label column {name!r} has no type (only NULLs): CAST it in the query")
    raise LabelSchemaError(
        f"label column {name!r} has type {arrow_type}, which has no tf.train.Feature kind: "
        "CAST it in the query (to VARCHAR, BIGINT or DOUBLE)"
    )


def _check_names(names: Sequence[str], image_feature: str) -> None:
    if PATH_COLUMN not in names:
        raise LabelSchemaError(f"the label query must return a {PATH_COLUMN!r} column (the image's full URI)")
    seen = set()
    for name in names:
        if name in seen:
            raise LabelSchemaError(f"the label query returns column {name!r} twice")
        seen.add(name)
        if name == image_feature:
            raise LabelSchemaError(
                f"label column {name!r} collides with the image feature; rename it in the query"
            )


def label_columns_from_arrow(schema: pa.Schema, image_feature: str) -> list[LabelColumn]:
    """The label features of a DuckDB result (its Arrow schema), `path` excluded."""
    _check_names(schema.names, image_feature)
    path_type = schema.field(PATH_COLUMN).type
    if not (
        pa.types.is_string(path_type) or pa.types.is_large_string(path_type) or pa.types.is_string_view(path_type)
    ):
        raise LabelSchemaError(f"the {PATH_COLUMN!r} column must be text, got {path_type}")
    columns = []
    for f in schema:
        if f.name == PATH_COLUMN:
            continue
        arrow_type, varlen = f.type, False
        if (
            pa.types.is_list(arrow_type)
            or pa.types.is_large_list(arrow_type)
            or pa.types.is_fixed_size_list(arrow_type)
        ):
            arrow_type, varlen = arrow_type.value_type, True
        columns.append(LabelColumn(f.name, _arrow_kind(f.name, arrow_type), varlen, str(f.type)))
    return columns


_BIGQUERY_KINDS = {
    "INTEGER": tfr.INT64,
    "INT64": tfr.INT64,
    "BOOLEAN": tfr.INT64,
    "BOOL": tfr.INT64,
    "FLOAT": tfr.FLOAT,
    "FLOAT64": tfr.FLOAT,
    "NUMERIC": tfr.FLOAT,
    "BIGNUMERIC": tfr.FLOAT,
    "DECIMAL": tfr.FLOAT,
    "BIGDECIMAL": tfr.FLOAT,
    "STRING": tfr.BYTES,
    "BYTES": tfr.BYTES,
}


def label_columns_from_bigquery(fields: Iterable[Any], image_feature: str) -> list[LabelColumn]:
    """The label features of a BigQuery result schema (SchemaField objects or {name, type, mode} dicts)."""
    rows = []
    for f in fields:
        if isinstance(f, Mapping):
            rows.append(
                (
                    f["name"],
                    str(f.get("type") or f.get("field_type")).upper(),
                    str(f.get("mode") or "NULLABLE").upper(),
                )
            )
        else:
            rows.append((f.name, str(f.field_type).upper(), str(f.mode or "NULLABLE").upper()))
    _check_names([r[0] for r in rows], image_feature)
    columns = []
    for name, bq_type, mode in rows:
        if name == PATH_COLUMN:
            if bq_type != "STRING" or mode == "REPEATED":
                raise LabelSchemaError(f"the {PATH_COLUMN!r} column must be a STRING, got {mode} {bq_type}")
            continue
        if bq_type not in _BIGQUERY_KINDS:
            raise LabelSchemaError(
                f"label column {name!r} has BigQuery type {bq_type}, which has no tf.train.Feature kind: "
                "CAST it in the query (to STRING, INT64 or FLOAT64)"
            )
        varlen = mode == "REPEATED"
        columns.append(
            LabelColumn(
                name,
                _BIGQUERY_KINDS[bq_type],
                varlen,
                f"{'ARRAY<' if varlen else ''}{bq_type}{'>' if varlen else ''}",
            )
        )
    return columns


def _convert(value: Any, kind: str) -> Any:
    if kind == tfr.INT64:
        if isinstance(value, float) or (isinstance(value, decimal.Decimal) and value != value.to_integral_value()):
            raise ValueError(f"{value!r} is not an integer")
        return int(value)
    if kind == tfr.FLOAT:
        return float(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise ValueError(f"{type(value).__name__} value {value!r} in a text column")


def label_feature_values(
    row: Mapping[str, Any], columns: Sequence[LabelColumn]
) -> dict[str, tfr.FeatureValue | None]:
    """One label row → {column: FeatureValue}, None (feature left out) for NULL. ValueError for bad values."""
    result: dict[str, tfr.FeatureValue | None] = {}
    for column in columns:
        value = row.get(column.name)
        if value is None:
            result[column.name] = None
            continue
        values = list(value) if column.varlen else [value]
        if any(v is None for v in values):
            raise ValueError(f"label column {column.name!r} holds a NULL inside its list: a list cannot carry it")
        try:
            result[column.name] = tfr.FeatureValue(column.kind, tuple(_convert(v, column.kind) for v in values))
        except (TypeError, ValueError, decimal.InvalidOperation) as exc:
            raise ValueError(f"label column {column.name!r}: {exc}") from exc
    return result


def _describe_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    shown = sorted(repr(dict(r)) for r in rows)
    text = "; ".join(shown[:_DESCRIBE_ROWS])
    return text + (f"; … {len(shown) - _DESCRIBE_ROWS} more" if len(shown) > _DESCRIBE_ROWS else "")


# ---------------------------------------------------------------------------------------------------
# The label query: DuckDB in the driver, or BigQuery


_SQL_STRING = re.compile(r"'((?:[^']|'')*)'")


def stage_remote_files(sql: str, workdir: str) -> str:
    """Copy files that string literals in `sql` name on gs:// or s3:// (globs too) into `workdir`.

    DuckDB reads local files natively but needs network extensions for cloud storage; this reads them
    through Beam's FileSystems instead (same credentials and endpoints as the pipeline) and rewrites the
    literals to the local copies.
    """

    def replace(match: re.Match) -> str:
        uri = match.group(1).replace("''", "'")
        if not uri.startswith(("gs://", "s3://")):
            return match.group(0)
        target = os.path.join(workdir, str(len(os.listdir(workdir))))
        os.makedirs(target)
        if files.is_glob(uri):
            first_glob = min(uri.index(c) for c in "*?[" if c in uri)
            base = uri[: uri.rindex("/", 0, first_glob) + 1]
            for path in files.list_files(uri):
                local = os.path.join(target, path[len(base) :])
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with open(local, "wb") as f:
                    f.write(files.read_bytes(path))
            local_literal = os.path.join(target, uri[len(base) :])
        else:
            local_literal = os.path.join(target, uri.rsplit("/", 1)[-1])
            with open(local_literal, "wb") as f:
                f.write(files.read_bytes(uri))
        return "'" + local_literal.replace("'", "''") + "'"

    return _SQL_STRING.sub(replace, sql)


def query_duckdb(sql: str, database: str | None = None) -> pa.Table:
    """Run the label query in DuckDB (in memory, or read-only over `database`); gs:// and s3:// files work."""
    with tempfile.TemporaryDirectory(prefix="medbeam-labels-") as workdir:
        local_sql = stage_remote_files(sql, workdir)
        with duckdb.connect(database or ":memory:", read_only=database is not None) as con:
            relation = con.sql(local_sql)
            if relation is None:
                raise LabelSchemaError("the label SQL must be a query that returns rows (SELECT …)")
            return relation.to_arrow_table()


def normalize_label_table(table: pa.Table, columns: Sequence[LabelColumn]) -> pa.Table:
    """Cast each column to the Arrow type its feature reads best from Parquet: int64, float64, string/binary."""
    kinds = {c.name: c for c in columns}
    fields = []
    for f in table.schema:
        if f.name == PATH_COLUMN:
            fields.append(pa.field(f.name, pa.string()))
            continue
        column = kinds[f.name]
        if column.kind == tfr.BYTES:
            value_type = f.type.value_type if column.varlen else f.type
            base = (
                pa.binary()
                if (
                    pa.types.is_binary(value_type)
                    or pa.types.is_large_binary(value_type)
                    or pa.types.is_fixed_size_binary(value_type)
                )
                else pa.string()
            )
        else:
            base = pa.int64() if column.kind == tfr.INT64 else pa.float64()
        fields.append(pa.field(f.name, pa.list_(base) if column.varlen else base))
    try:
        return table.cast(pa.schema(fields))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise LabelSchemaError(f"label values do not fit their feature types: {exc}") from exc


def bigquery_result_schema(sql: str, project: str | None, client: Any = None) -> list[Any]:
    """The result schema of a BigQuery query, from a dry run in the driver (no bytes billed)."""
    from google.cloud import bigquery

    client = client or bigquery.Client(project=project)
    job = client.query(sql, job_config=bigquery.QueryJobConfig(dry_run=True, use_query_cache=False))
    return list(job.schema)


# ---------------------------------------------------------------------------------------------------
# Config, labels, counts


@dataclass
class LabelSource:
    """Where the pipeline reads label rows from, and their columns (resolved in the driver)."""

    columns: list[LabelColumn]
    parquet_path: str | None = None  # DuckDB result, staged as {output}.labels.parquet
    bigquery_sql: str | None = None


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
    duckdb_path: str | None = None
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    png_compression: int = DEFAULT_PNG_COMPRESSION
    num_shards: int | None = None
    verify: bool = True
    target_shard_bytes: int = tfr.DEFAULT_SHARD_BYTES

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
        return [input_pattern(i) for i in self.inputs]


def input_pattern(value: str) -> str:
    """A glob stays; a local directory or a gs:// / s3:// prefix means everything under it, recursively."""
    if files.is_glob(value):
        return value if files.has_scheme(value) else os.path.abspath(os.path.expanduser(value))
    if files.has_scheme(value):
        return value.rstrip("/") + "/**"
    return files.normalize_input_pattern(value)


def labels_parquet_path(prefix: str) -> str:
    return f"{prefix}.labels.parquet"


def resolve_labels(
    config: ImagesToTfrecordConfig, project: str | None = None, bigquery_client: Any = None
) -> LabelSource | None:
    """Driver side: run the DuckDB query and stage its rows, or dry-run the BigQuery one for its schema."""
    if config.labels_sql is not None:
        table = query_duckdb(config.labels_sql, config.duckdb_path)
        columns = label_columns_from_arrow(table.schema, config.image_feature)
        table = normalize_label_table(table, columns)
        path = labels_parquet_path(config.output)
        files.write_bytes(path, _parquet_bytes(table))
        return LabelSource(columns, parquet_path=path)
    if config.bigquery_sql is not None:
        schema = bigquery_result_schema(config.bigquery_sql, project, bigquery_client)
        return LabelSource(
            label_columns_from_bigquery(schema, config.image_feature), bigquery_sql=config.bigquery_sql
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

    @classmethod
    def from_description(cls, doc: dict[str, Any]) -> ImagesToTfrecordCounts:
        counts = {k: int(doc["counts"].get(k, 0)) for k in COUNT_NAMES}
        return cls(**counts, shards=len(doc["files"]), labelled=bool(doc.get("labels")))

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
        return line


# ---------------------------------------------------------------------------------------------------
# Beam


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
            yield TaggedOutput(STATS, {"files_matched": 1, "images_in": 1})
        else:
            yield TaggedOutput(STATS, {"files_matched": 1, "files_skipped": 1})


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
                    f"{len(rows)} label row(s) {where}: {_describe_rows(rows)}",
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
                    path, "join", f"{len(rows)} label rows for one image: {_describe_rows(rows)}", "DuplicateLabel"
                ),
            )
        else:
            stats["label_rows_matched"] = 1
            yield path, rows[0]
        yield TaggedOutput(STATS, stats)


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
    ):
        self._format = image_format
        self._feature = IMAGE_FEATURES[image_format]
        self._shape = shape
        self._quality = jpeg_quality
        self._compression = png_compression
        self._verify = verify
        self._columns = list(columns)
        self._resize_mode = resize_mode

    def process(self, element: tuple[str, dict[str, Any] | None]) -> Iterator[Any]:
        path, row = element
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
            yield TaggedOutput(STATS, {"rejected": 1, "images_failed": 1})
            yield TaggedOutput(REJECTS, reject(path, stage, exc))
            return
        features = {PATH_COLUMN: tfr.bytes_feature(path), self._feature: tfr.bytes_feature(image), **labels}
        yield path, tfr.encode_example(features)
        yield TaggedOutput(STATS, record_stats(features))


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
        return p | "Read labels (BigQuery)" >> beam.io.ReadFromBigQuery(
            query=labels.bigquery_sql, use_standard_sql=True
        )
    return p | "Read labels" >> beam.io.ReadFromParquet(labels.parquet_path)


def build(p: beam.Pipeline, config: ImagesToTfrecordConfig, labels: LabelSource | None) -> None:
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
    )


def run(
    config: ImagesToTfrecordConfig, beam_args: list[str] | None = None, *, bigquery_client: Any = None
) -> ImagesToTfrecordCounts:
    """Run from-images to completion; the counts come back from ``{output}.features.json``."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    options = pipeline_options(
        beam_args, lambda: sum(len(files.list_files(pattern)) for pattern in sorted(set(config.patterns)))
    )
    labels = resolve_labels(config, options.view_as(GoogleCloudOptions).project, bigquery_client)
    run_pipeline(options, lambda p: build(p, config, labels))
    return ImagesToTfrecordCounts.from_description(tfr.read_description(config.output))
