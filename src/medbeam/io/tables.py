"""Tables: deterministic Parquet shards on any filesystem, then DuckDB locally or BigQuery at scale.

Every table is written as ``{parquet_dir}/{table}/{table}-SSSSS-of-NNNNN.parquet`` plus a ``_manifest.json``
naming this run's shards; shards of earlier runs that are not in the manifest are deleted, so a rerun
replaces the table instead of appending to it. Shard membership is a hash of a key column and the shard
count follows the row count, so the same input always gives the same files.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import apache_beam as beam
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.pvalue import AsSingleton, PCollection

from medbeam.io import files

MANIFEST = "_manifest.json"
DEFAULT_ROWS_PER_SHARD = 50_000


def shard_path(table_dir: str, name: str, index: int, count: int) -> str:
    return files.join(table_dir, name, f"{name}-{index:05d}-of-{count:05d}.parquet")


def manifest_path(table_dir: str, name: str) -> str:
    return files.join(table_dir, name, MANIFEST)


def bigquery_schema_path(table_dir: str, name: str) -> str:
    return files.join(table_dir, f"{name}.bigquery-schema.json")


def stable_shard(key: str, num_shards: int) -> int:
    """Same key, same shard, on every worker and every run (unlike Python's salted hash()).

    A cryptographic digest, not crc32: CRC is linear, so keys that differ in one character (…/1.0.png,
    …/1.1.png) differ by a constant and often land in the same shard modulo a small count.
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


def parquet_bytes(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    table = pa.Table.from_pylist(rows, schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# BigQuery schema, from the same Arrow types the Parquet files carry


def _bigquery_field(name: str, arrow_type: pa.DataType, mode: str = "NULLABLE") -> dict[str, Any]:
    if pa.types.is_list(arrow_type):
        return _bigquery_field(name, arrow_type.value_type, "REPEATED")
    field: dict[str, Any] = {"name": name, "mode": mode}
    if pa.types.is_struct(arrow_type):
        field["type"] = "RECORD"
        field["fields"] = [_bigquery_field(f.name, f.type) for f in arrow_type]
    elif pa.types.is_integer(arrow_type):
        field["type"] = "INTEGER"
    elif pa.types.is_floating(arrow_type):
        field["type"] = "FLOAT"
    elif pa.types.is_boolean(arrow_type):
        field["type"] = "BOOLEAN"
    elif pa.types.is_date(arrow_type):
        field["type"] = "DATE"
    elif pa.types.is_time(arrow_type):
        field["type"] = "TIME"
    elif pa.types.is_timestamp(arrow_type):
        field["type"] = "TIMESTAMP"
    elif pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        field["type"] = "BYTES"
    elif pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        field["type"] = "STRING"
    else:
        raise TypeError(f"no BigQuery type for column {name!r} of Arrow type {arrow_type}")
    return field


def bigquery_schema(schema: pa.Schema) -> list[dict[str, Any]]:
    """The JSON that `bq load --source_format=PARQUET --schema=FILE` accepts for this Arrow schema."""
    return [_bigquery_field(f.name, f.type) for f in schema]


# ---------------------------------------------------------------------------------------------------
# Beam: rows → shards → manifest


class _AssignShard(beam.DoFn):
    def __init__(self, key_column: str, rows_per_shard: int):
        self._key_column = key_column
        self._rows_per_shard = rows_per_shard

    def process(self, row: dict[str, Any], row_count: int):
        num_shards = max(1, math.ceil(row_count / self._rows_per_shard))
        yield stable_shard(str(row.get(self._key_column)), num_shards), row


class _WriteShard(beam.DoFn):
    def __init__(
        self,
        table_dir: str,
        name: str,
        key_columns: tuple[str, ...],
        rows_per_shard: int,
        schema: pa.Schema | None,
    ):
        self._table_dir = table_dir
        self._name = name
        self._key_columns = key_columns
        self._rows_per_shard = rows_per_shard
        self._schema = schema

    def process(
        self, element: tuple[int, Iterable[dict[str, Any]]], row_count: int, schema: pa.Schema | None = None
    ):
        index, rows = element
        num_shards = max(1, math.ceil(row_count / self._rows_per_shard))
        ordered = sorted(rows, key=lambda r: tuple(str(r.get(c) or "") for c in self._key_columns))
        path = shard_path(self._table_dir, self._name, index, num_shards)
        files.write_bytes(path, parquet_bytes(ordered, schema if schema is not None else self._schema))
        yield path


class _FinishTable(beam.DoFn):
    """Write the manifest (and an empty shard for an empty table), drop stale shards, write the BQ schema."""

    def __init__(self, table_dir: str, name: str, schema: pa.Schema | None):
        self._table_dir = table_dir
        self._name = name
        self._schema = schema

    def process(self, _: Any, written: list[str], row_count: int, schema: pa.Schema | None = None):
        schema = schema if schema is not None else self._schema
        shards = sorted(written)
        if not shards:
            empty = shard_path(self._table_dir, self._name, 0, 1)
            files.write_bytes(empty, parquet_bytes([], schema))
            shards = [empty]
        manifest = {"table": self._name, "rows": row_count, "files": shards}
        files.write_bytes(
            manifest_path(self._table_dir, self._name),
            json.dumps(manifest, indent=2).encode(),
            "application/json",
        )
        existing = files.list_files(files.join(self._table_dir, self._name, "*.parquet"))
        files.delete_files([p for p in existing if p not in set(shards)])
        files.write_bytes(
            bigquery_schema_path(self._table_dir, self._name),
            json.dumps(bigquery_schema(schema), indent=2).encode(),
            "application/json",
        )
        yield manifest_path(self._table_dir, self._name)


class WriteTable(beam.PTransform):
    """Write dict rows as one Parquet table; `schema` is a pa.Schema or a PCollection of at most one.

    With a PCollection, `empty_schema` is the table's schema when that PCollection is empty (no rows).
    Few transforms on purpose: each one costs the DirectRunner milliseconds per run to build and run,
    which small runs (tests, a few files) feel. Global combines skip Beam's default-value machinery
    (`without_defaults`), and side-input defaults stand in for it.
    """

    def __init__(
        self,
        table_dir: str,
        name: str,
        schema: pa.Schema | PCollection,
        key_columns: tuple[str, ...],
        rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
        empty_schema: pa.Schema | None = None,
    ):
        super().__init__()
        self._table_dir = table_dir
        self._name = name
        self._schema = schema
        self._empty_schema = empty_schema if empty_schema is not None else pa.schema([])
        self._key_columns = key_columns
        self._rows_per_shard = rows_per_shard

    def expand(self, rows: PCollection) -> PCollection:
        if isinstance(self._schema, PCollection):
            static_schema = None
            schema_side = {"schema": AsSingleton(self._schema, default_value=self._empty_schema)}
        else:
            static_schema, schema_side = self._schema, {}
        count = rows | "Count" >> beam.CombineGlobally(beam.combiners.CountCombineFn()).without_defaults()
        count_view = AsSingleton(count, default_value=0)
        written = (
            rows
            | "Shard" >> beam.ParDo(_AssignShard(self._key_columns[0], self._rows_per_shard), count_view)
            | "Group" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(
                _WriteShard(self._table_dir, self._name, self._key_columns, self._rows_per_shard, static_schema),
                count_view,
                **schema_side,
            )
        )
        collected = written | "Collect" >> beam.CombineGlobally(beam.combiners.ToListCombineFn()).without_defaults()
        return (
            rows.pipeline
            | f"{self._name}: finish" >> beam.Impulse()
            | "Finish" >> beam.ParDo(
                _FinishTable(self._table_dir, self._name, static_schema),
                AsSingleton(collected, default_value=[]),
                count_view,
                **schema_side,
            )
        )


# ---------------------------------------------------------------------------------------------------
# DuckDB, the embedded default


def read_manifest(table_dir: str, name: str) -> dict[str, Any]:
    return json.loads(files.read_bytes(manifest_path(table_dir, name)))


def read_table(table_dir: str, name: str) -> pa.Table:
    """A whole table from its manifest's shards, on any filesystem."""
    shards = read_manifest(table_dir, name)["files"]
    return pa.concat_tables(pq.read_table(io.BytesIO(files.read_bytes(p))) for p in shards)


def default_parquet_dir(duckdb_path: str) -> str:
    """`out/medbeam.duckdb` keeps its Parquet shards in `out/medbeam_parquet/`."""
    path = Path(duckdb_path)
    return str(path.with_name(path.stem + "_parquet"))


def load_into_duckdb(duckdb_path: str, table_dir: str, names: list[str]) -> dict[str, int]:
    """(Re)create each table in the (local) DuckDB file from its Parquet shards; return row counts."""
    Path(duckdb_path).absolute().parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with duckdb.connect(duckdb_path) as con:
        for name in names:
            shards = read_manifest(table_dir, name)["files"]
            if all(not files.has_scheme(p) for p in shards):
                con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM read_parquet(?)', [shards])
            else:
                arrow_table = read_table(table_dir, name)  # noqa: F841 - read by DuckDB's replacement scan
                con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM arrow_table')
            counts[name] = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
    return counts
