"""Label tables for image records: SQL result types → feature kinds, values → features (pure: no Beam).

The label query runs in DuckDB (files it names on gs:// or s3:// are staged locally first) or on BigQuery;
its ``path`` column joins the image URIs, every other column becomes one feature, typed from its SQL type.
"""

from __future__ import annotations

import decimal
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from medbeam.io import files
from medbeam.io import tfrecord as tfr

PATH_COLUMN = "path"
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

_SQL_STRING = re.compile(r"'((?:[^']|'')*)'")


_DESCRIBE_ROWS = 3


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


def describe_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    shown = sorted(repr(dict(r)) for r in rows)
    text = "; ".join(shown[:_DESCRIBE_ROWS])
    return text + (f"; … {len(shown) - _DESCRIBE_ROWS} more" if len(shown) > _DESCRIBE_ROWS else "")


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
