"""Tables: deterministic Parquet shards on any filesystem, then DuckDB locally or BigQuery at scale.

Every table is written as ``{parquet_dir}/{table}/{table}-SSSSS-of-NNNNN.parquet`` plus a ``_manifest.json``
naming this run's shards; shards of earlier runs that are not in the manifest are deleted, so a rerun
replaces the table instead of appending to it. Shard membership is a hash of a key column and the shard
count follows the row count, so the same input always gives the same files.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.pvalue import PCollection

from medbeam.io import files
from medbeam.io.sharded import SUMMARY, ShardedWrite, ShardFormat, TakesListsOfInputs, split_items

MANIFEST = "_manifest.json"
DEFAULT_ROWS_PER_SHARD = 50_000


def shard_path(table_dir: str, name: str, index: int, count: int) -> str:
    return files.join(table_dir, name, f"{name}-{index:05d}-of-{count:05d}.parquet")


def manifest_path(table_dir: str, name: str) -> str:
    return files.join(table_dir, name, MANIFEST)


def bigquery_schema_path(table_dir: str, name: str) -> str:
    return files.join(table_dir, f"{name}.bigquery-schema.json")


def parquet_bytes(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    return _parquet_bytes(pa.Table.from_pylist(rows, schema=schema))


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


#: Rows travel in chunks whose row pickles are compressed together (see _ParquetTables): a CT header pickled
#: is ~1.7 KB, mostly column names and values that its neighbours repeat, and 256 slices of one series
#: compress ~44× with zstd level 1 in ~1 µs a row (pydicom's 141 mixed test files: 3.2 KB → 321 B, 10×).
#: Every copy a runner makes of a chunk (its buffers, the data plane, the shuffle) shrinks as much: a
#: 4,000-slice export's post-parse stages grew its memory by ~100 MB before, ~10 MB now.
_CHUNK_CODEC = "zstd"
_CHUNK_LEVEL = 1


@dataclass(frozen=True)
class RowChunk:
    """Rows of one table as they travel to their shard: each row's shard key and sort key, and the rows'
    pickles compressed together (`blob`, `size` bytes once decompressed)."""

    keys: tuple[str, ...]
    sort_keys: tuple[Any, ...]
    size: int
    blob: bytes

    @classmethod
    def of(cls, packed: list[tuple[str, Any, bytes]]) -> RowChunk:
        """Packed rows (shard key, sort key, row pickle) → one chunk."""
        raw = pickle.dumps([p[2] for p in packed], protocol=pickle.HIGHEST_PROTOCOL)
        blob = pa.Codec(_CHUNK_CODEC, compression_level=_CHUNK_LEVEL).compress(raw, asbytes=True)
        return cls(tuple(p[0] for p in packed), tuple(p[1] for p in packed), len(raw), blob)

    def packed(self) -> list[tuple[str, Any, bytes]]:
        """The packed rows again, in their order."""
        raw = pa.Codec(_CHUNK_CODEC).decompress(self.blob, decompressed_size=self.size, asbytes=True)
        return list(zip(self.keys, self.sort_keys, pickle.loads(raw)))

    def table(self, schema: pa.Schema) -> pa.Table:
        return pa.Table.from_pylist([pickle.loads(p[2]) for p in self.packed()], schema=schema)


def _chunks_parquet_bytes(chunks: Iterable[RowChunk], schema: pa.Schema) -> bytes:
    """The Parquet file of every row in `chunks`, sorted by sort key (stable, in arrival order): the same
    bytes as parquet_bytes on the sorted rows. Each chunk becomes Arrow on arrival, so a shard is never
    held as Python rows, only as Arrow (a CT header: ~0.9 KB a row) and its compressed chunks."""
    parts: list[pa.Table] = []
    sort_keys: list[Any] = []
    for chunk in chunks:
        parts.append(chunk.table(schema))
        sort_keys.extend(chunk.sort_keys)
    if not parts:
        return parquet_bytes([], schema)
    order = sorted(range(len(sort_keys)), key=sort_keys.__getitem__)
    # One chunk per column, as from_pylist on all rows gives: the same Parquet pages, byte for byte.
    return _parquet_bytes(pa.concat_tables(parts).take(order).combine_chunks())


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


@dataclass(frozen=True)
class ComputedSchema:
    """A schema worked out from the data: `combine` (a CombineFn whose output is a pa.Schema) over the values
    of the io.sharded.SummaryPart elements among the table's rows (the metadata table's: each parse bundle's
    column types, from the parse step itself; or a PCollection of them given as one more source of the
    table's rows). Merged where the rows are assigned to shards (io.sharded's summaries): no combining
    step, stage or side input of its own."""

    combine: beam.CombineFn


class TheOneSchema(beam.CombineFn):
    """ComputedSchema's combine where the parts are one pa.Schema, worked out by a combine the job needs anyway
    (`predictions load`'s agreed layout, sent among the rows as a SummaryPart): the table's schema is it."""

    def create_accumulator(self) -> pa.Schema | None:
        return None

    def add_input(self, found: pa.Schema | None, schema: pa.Schema) -> pa.Schema:
        return schema if found is None else found

    def merge_accumulators(self, found: Iterable[pa.Schema | None]) -> pa.Schema | None:
        return next((schema for schema in found if schema is not None), None)

    def extract_output(self, found: pa.Schema | None) -> pa.Schema:
        return found if found is not None else pa.schema([])


@dataclass(frozen=True)
class TableSpec:
    """One table of a WriteTables: its name, its schema and the columns its rows are ordered by.

    `schema` is a pa.Schema or a ComputedSchema; when a table has no rows, nothing is computed and
    `empty_schema` is its schema (by default, `combine` of no parts). `table_dir` places this table in a folder of
    its own instead of the WriteTables one (an output folder's manifest), still sharing its steps. A row's
    shard is a hash of its first key column, or of `shard_columns` when given (rows keyed by (file, line)
    then spread over every shard instead of one shard per file).
    """

    name: str
    schema: pa.Schema | ComputedSchema
    key_columns: tuple[str, ...]
    empty_schema: pa.Schema | None = None
    table_dir: str | None = None
    shard_columns: tuple[str, ...] = ()


def _sortable(value: Any) -> tuple[int, Any]:
    """A key column's value in sort order: numbers as numbers (line 2 before line 10), anything else as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value or ""))


def _num_shards(row_count: int, rows_per_shard: int) -> int:
    return max(1, math.ceil(row_count / rows_per_shard))


def _table_schema(name: str, static: dict[str, pa.Schema], side: dict[str, Any]) -> pa.Schema:
    """The computed schema where the table has one (io.sharded's SUMMARY), else its static or empty one."""
    computed = side.get(SUMMARY)
    return computed if computed is not None else static[name]


class _ParquetTables(ShardFormat):
    """Rows → `{dir}/{table}/{table}-SSSSS-of-NNNNN.parquet`, sorted by the key columns; shard count follows
    the row count; finishing writes the manifest (an empty shard for an empty table), drops stale shards
    and writes the BigQuery schema.

    Rows travel packed, as (shard key, sort key, pickled row), and a full chunk of them as one RowChunk,
    their pickles compressed together: a metadata row as Python objects takes ~10 KB (a CT header's 50
    columns of dicts, dates and lists), pickled ~1.7 KB, in a compressed chunk ~40 bytes (a series'
    slices) to ~300 (unrelated files). Writing a shard turns each chunk into Arrow as it arrives, then sorts.
    """

    def pack(self, name: str, row: dict[str, Any]) -> tuple[str, Any, bytes]:
        return self._key(name, row), self._sort_key(name, row), pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL)

    def __init__(
        self, table_dirs: dict[str, str], specs: list[TableSpec], static: dict[str, pa.Schema], rows_per_shard: int
    ):
        self._table_dirs = table_dirs
        self._key_columns = {spec.name: spec.key_columns for spec in specs}
        self._shard_columns = {spec.name: spec.shard_columns or spec.key_columns[:1] for spec in specs}
        self._static = static
        self._rows_per_shard = rows_per_shard

    def measure(self, row: dict[str, Any]) -> int:
        return 1

    def chunk_bytes(self, packed: tuple[str, Any, bytes]) -> int:
        return len(packed[2])

    def shard_count(self, name: str, size: int) -> int:
        return _num_shards(size, self._rows_per_shard)

    def _key(self, name: str, row: dict[str, Any]) -> str:
        return "\x1f".join(str(row.get(c)) for c in self._shard_columns[name])

    def _sort_key(self, name: str, row: dict[str, Any]) -> tuple[tuple[int, Any], ...]:
        return tuple(_sortable(row.get(c)) for c in self._key_columns[name])

    def key(self, name: str, packed: tuple[str, Any, bytes]) -> str:
        return packed[0]

    def sort_key(self, name: str, packed: tuple[str, Any, bytes]) -> Any:
        return packed[1]

    def pack_chunk(self, name: str, packed: list[tuple[str, Any, bytes]]) -> RowChunk:
        return RowChunk.of(packed)

    def chunk_size(self, chunk: RowChunk) -> int:
        return len(chunk.keys)

    def split_chunk(self, name: str, chunk: RowChunk, count: int) -> Iterator[tuple[int, RowChunk]]:
        for index, packed in split_items(self, name, chunk.packed(), count):
            yield index, RowChunk.of(packed)

    def write_chunks(self, name: str, index: int, count: int, chunks: Iterable[RowChunk], side: dict[str, Any]) -> str:
        path = shard_path(self._table_dirs[name], name, index, count)
        schema = _table_schema(name, self._static, side)
        files.write_bytes(path, _chunks_parquet_bytes(chunks, schema))
        return path

    def finish(self, name: str, shards: list[str], row_count: int, side: dict[str, Any]) -> str:
        schema = _table_schema(name, self._static, side)
        table_dir = self._table_dirs[name]
        if not shards:
            empty = shard_path(table_dir, name, 0, 1)
            files.write_bytes(empty, parquet_bytes([], schema))
            shards = [empty]
        manifest = {"table": name, "rows": row_count, "files": shards}
        files.write_bytes(
            manifest_path(table_dir, name), json.dumps(manifest, indent=2).encode(), "application/json"
        )
        existing = files.list_files(files.join(table_dir, name, "*.parquet"))
        files.delete_files([p for p in existing if p not in set(shards)])
        files.write_bytes(
            bigquery_schema_path(table_dir, name),
            json.dumps(bigquery_schema(schema), indent=2).encode(),
            "application/json",
        )
        return manifest_path(table_dir, name)


class WriteTables(TakesListsOfInputs, beam.PTransform):
    """Write dict rows as Parquet tables under one directory: `{name: rows} | WriteTables(dir, specs)`, where
    `rows` is a PCollection or a list of them (a job's rejects from each of its steps: no Flatten needed).

    The tables share one count, one shuffle and one finishing step (io.sharded.ShardedWrite), on purpose:
    every transform costs the DirectRunner ~20 ms per run to build and execute (measured on the 2-core
    machine), which small runs (tests, a few files) feel; two tables written apart took 26 leaf
    transforms, together 14. Outputs the manifest path of every table.
    """

    def __init__(self, table_dir: str, specs: list[TableSpec], rows_per_shard: int = DEFAULT_ROWS_PER_SHARD):
        super().__init__()
        if len({spec.name for spec in specs}) != len(specs) or not specs:
            raise ValueError("WriteTables needs one or more tables with distinct names")
        self._table_dirs = {spec.name: spec.table_dir or table_dir for spec in specs}
        self._specs = list(specs)
        self._rows_per_shard = rows_per_shard

    def expand(self, rows_by_table: Any) -> PCollection:  # a dict[str, PCollection]; Beam warns on that hint
        names = [spec.name for spec in self._specs]
        if set(rows_by_table) != set(names):
            raise ValueError(f"WriteTables got rows for {sorted(rows_by_table)}, specs for {sorted(names)}")
        # Static schemas, and for computed ones the schema of a table without rows (nothing computed).
        static: dict[str, pa.Schema] = {}
        summaries: dict[str, beam.CombineFn] = {}
        for spec in self._specs:
            if isinstance(spec.schema, ComputedSchema):
                combine = summaries[spec.name] = spec.schema.combine
                static[spec.name] = spec.empty_schema or combine.extract_output(combine.create_accumulator())
            else:
                static[spec.name] = spec.schema
        fmt = _ParquetTables(self._table_dirs, self._specs, static, self._rows_per_shard)
        rows = {name: rows_by_table[name] for name in names}
        return rows | "Shards" >> ShardedWrite(fmt, summaries=summaries)


class WriteTable(beam.PTransform):
    """One table: `rows | WriteTable(dir, name, schema, key_columns)`; see WriteTables."""

    def __init__(
        self,
        table_dir: str,
        name: str,
        schema: pa.Schema | ComputedSchema,
        key_columns: tuple[str, ...],
        rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
        empty_schema: pa.Schema | None = None,
    ):
        super().__init__()
        self._table_dir = table_dir
        self._spec = TableSpec(name, schema, key_columns, empty_schema)
        self._rows_per_shard = rows_per_shard

    def expand(self, rows: PCollection) -> PCollection:
        return {self._spec.name: rows} | WriteTables(self._table_dir, [self._spec], self._rows_per_shard)


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
    import duckdb  # only runs that load DuckDB pay for importing it (~0.1 s)

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
