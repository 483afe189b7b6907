"""WriteTables: several Parquet tables in one pass, deterministic shards, empty tables, computed schemas."""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from medbeam.io import tables
from medbeam.io.sharded import SummaryPart
from tests.helpers import transform_labels

STATIC = pa.schema([("uri", pa.string()), ("n", pa.int64())])
COMPUTED = pa.schema([("path", pa.string()), ("size", pa.int64())])
EMPTY_FALLBACK = pa.schema([("path", pa.string())])


class _UnionOfColumns(beam.CombineFn):
    """Column types (dicts) → the schema of their union, in COMPUTED's column order."""

    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, acc: dict, types: dict) -> dict:
        return {**acc, **types}

    def merge_accumulators(self, accs) -> dict:
        return {k: v for acc in accs for k, v in acc.items()}

    def extract_output(self, acc: dict) -> pa.Schema:
        return pa.schema([f for f in COMPUTED if f.name in acc])


def _types_part(row: dict) -> SummaryPart:
    return SummaryPart({name: COMPUTED.field(name).type for name in row})


def _write(out: Path, static_rows: list[dict], computed_rows: list[dict], rows_per_shard: int) -> None:
    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=FnApiRunner"])) as p:
        computed = p | "Computed" >> beam.Create(computed_rows)
        specs = [
            tables.TableSpec("static", STATIC, ("uri",)),
            tables.TableSpec("computed", tables.ComputedSchema(_UnionOfColumns()), ("path",), EMPTY_FALLBACK),
        ]
        _ = {
            "static": p | "Static" >> beam.Create(static_rows),
            "computed": [computed, computed | "Types" >> beam.Map(_types_part)],
        } | tables.WriteTables(str(out), specs, rows_per_shard)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}


def test_two_tables_shard_by_row_count_and_rerun_identically(tmp_path):
    static_rows = [{"uri": f"u{i:03d}", "n": i} for i in range(25)]
    computed_rows = [{"path": f"p{i}", "size": i} for i in range(3)]
    _write(tmp_path, static_rows, computed_rows, rows_per_shard=10)

    manifest = tables.read_manifest(str(tmp_path), "static")
    assert manifest["rows"] == 25 and len(manifest["files"]) <= 3
    assert all(f.endswith("-of-00003.parquet") for f in manifest["files"])
    table = tables.read_table(str(tmp_path), "static")
    assert table.schema == STATIC and sorted(table.column("n").to_pylist()) == list(range(25))
    for shard in manifest["files"]:  # each shard sorted by its key column
        uris = pq.read_table(shard).column("uri").to_pylist()
        assert uris == sorted(uris)
    computed = tables.read_table(str(tmp_path), "computed")
    assert computed.schema == COMPUTED and computed.num_rows == 3
    assert json.loads(Path(tables.bigquery_schema_path(str(tmp_path), "computed")).read_text())[1]["type"] == "INTEGER"

    before = _snapshot(tmp_path)
    _write(tmp_path, static_rows, computed_rows, rows_per_shard=10)
    assert _snapshot(tmp_path) == before


def test_empty_tables_get_an_empty_shard_and_stale_shards_go(tmp_path):
    _write(tmp_path, [{"uri": f"u{i}", "n": i} for i in range(30)], [{"path": "p", "size": 1}], rows_per_shard=10)
    _write(tmp_path, [], [], rows_per_shard=10)
    for name, schema in (("static", STATIC), ("computed", EMPTY_FALLBACK)):
        manifest = tables.read_manifest(str(tmp_path), name)
        assert manifest["rows"] == 0 and len(manifest["files"]) == 1
        assert sorted((tmp_path / name).glob("*.parquet")) == [Path(manifest["files"][0])]
        table = tables.read_table(str(tmp_path), name)
        assert table.num_rows == 0 and table.schema == schema


def test_packed_rows_give_the_same_parquet_bytes_as_the_rows(tmp_path):
    """Rows travel packed in compressed chunks and each chunk becomes Arrow as it arrives: the file must not
    change, whatever the chunks and their order."""
    schema = pa.schema(
        [
            ("path", pa.string()),
            ("n", pa.int64()),
            ("names", pa.list_(pa.string())),
            ("person", pa.struct([("Alphabetic", pa.string()), ("Ideographic", pa.string())])),
        ]
    )
    rows = [
        {
            "path": f"/data/{i:06d}.dcm",
            "n": None if i % 7 == 0 else i * 3,
            "names": [f"x{j}" for j in range(i % 5)] or None,
            "person": {"Alphabetic": f"Doe^{i % 13}", "Ideographic": None} if i % 3 else None,
        }
        for i in range(2 * 1024 + 517)
    ]
    spec = tables.TableSpec("t", schema, ("path",))
    fmt = tables._ParquetTables({"t": str(tmp_path)}, [spec], {"t": schema}, 10)  # noqa: SLF001 - the format itself
    packed = [fmt.pack("t", row) for row in reversed(rows)]  # arrival order is not sort order
    chunks = [fmt.pack_chunk("t", packed[i : i + size]) for i, size in ((0, 1), (1, 256), (257, 1000), (1257, 1308))]
    assert sum(fmt.chunk_size(c) for c in chunks) == len(rows)
    write = tables._chunks_parquet_bytes  # noqa: SLF001 - what a shard's write does
    assert write(chunks, schema) == tables.parquet_bytes(rows, schema)
    assert write(reversed(chunks), schema) == tables.parquet_bytes(rows, schema)
    assert write([], schema) == tables.parquet_bytes([], schema)
    split = dict(fmt.split_chunk("t", chunks[2], 3))
    assert sorted(split) == [0, 1, 2] and sum(len(c.keys) for c in split.values()) == 1000
    assert sorted(p[2] for c in split.values() for p in c.packed()) == sorted(p[2] for p in packed[257:1257])


def test_rows_travel_in_chunks_and_land_in_the_same_shards_as_one_by_one(tmp_path, monkeypatch):
    """Chunks (io.sharded) are split by shard before the shuffle: the files are those of item-by-item
    travel, whether chunks are full (items or bytes) or flushed at the bundle's end."""
    from medbeam.io import sharded

    static_rows = [{"uri": f"u{i:03d}", "n": i} for i in range(200)]
    computed_rows = [{"path": f"p{i}", "size": i} for i in range(7)]
    snapshots = []
    big = sharded.CHUNK_BYTES
    for items, limit in ((1, big), (13, big), (10_000, big), (10_000, 64)):
        monkeypatch.setattr(sharded, "CHUNK_ITEMS", items)
        monkeypatch.setattr(sharded, "CHUNK_BYTES", limit)
        out = tmp_path / f"{items}-{limit}"
        _write(out, static_rows, computed_rows, rows_per_shard=30)
        assert tables.read_manifest(str(out), "static")["rows"] == 200
        assert sorted(tables.read_table(str(out), "static").column("n").to_pylist()) == list(range(200))
        snapshots.append({name: data.replace(str(out).encode(), b"OUT") for name, data in _snapshot(out).items()})
    assert len(snapshots[0]) > 3 and all(s == snapshots[0] for s in snapshots[1:])


def test_a_table_fed_by_several_steps_writes_what_one_step_would(tmp_path):
    """Rows of one table from a list of PCollections (a job's rejects from each of its steps) are chunked
    where they are made, without a Flatten: same shards, same bytes, same manifest as from one PCollection.
    The list reaches the transform as its inputs, not as a value for Beam to Create."""
    rows = [{"uri": f"u{i:03d}", "n": i} for i in range(40)]
    specs = [tables.TableSpec("static", STATIC, ("uri",))]
    options = beam.options.pipeline_options.PipelineOptions(["--runner=FnApiRunner"])

    with beam.Pipeline(options=options) as p:
        _ = {"static": p | beam.Create(rows)} | tables.WriteTables(str(tmp_path / "one"), specs, 12)
    with beam.Pipeline(options=options) as p:
        parts = [p | f"Part {k}" >> beam.Create(rows[k::3]) for k in range(3)]
        _ = {"static": parts} | "Write" >> tables.WriteTables(str(tmp_path / "three"), specs, 12)
        labels = transform_labels(p)
    assert {"Write/Shards/Chunk static 0", "Write/Shards/Chunk static 2"} <= labels
    assert not any("CreatePInput" in label for label in labels)

    def normalised(out: Path) -> dict[str, bytes]:
        return {name: data.replace(str(out).encode(), b"OUT") for name, data in _snapshot(out).items()}

    one = normalised(tmp_path / "one")
    assert tables.read_manifest(str(tmp_path / "three"), "static")["rows"] == 40
    assert len([n for n in one if n.endswith(".parquet")]) == 4
    assert normalised(tmp_path / "three") == one


def test_the_export_writes_its_tables_without_a_flatten_of_rejects_or_a_measuring_step(tmp_path):
    """Each such step was a stage of its own on the local runner (~1.5 ms a run each)."""
    from medbeam.pipelines.dicom_export import ExportConfig, build
    from tests.helpers import TEST_FILES

    config = ExportConfig(
        inputs=[str(TEST_FILES / "CT_small.dcm")], png_dir=str(tmp_path / "png"), parquet_dir=str(tmp_path / "t")
    )
    pipeline = beam.Pipeline()
    build(pipeline, config)
    labels = transform_labels(pipeline)
    assert {"Write tables/Shards/Chunk rejects 0", "Write tables/Shards/Chunk rejects 1"} <= labels
    assert not any(label.startswith(("All rejects", "Write tables/Shards/Measure")) for label in labels)
    assert not any("Merge schema" in label or "schema" in label.split("/")[-1] for label in labels)


def test_a_computed_schema_is_the_union_of_its_parts_and_every_shard_has_it(tmp_path, monkeypatch):
    """The parts (SummaryPart elements among the rows, from any of their steps) are not rows: they are merged
    where rows get their shards and reach each shard's writer with its first chunk from a bundle. Every shard
    (small chunks, several shards) and the BigQuery schema carry the whole union, even where a shard's own
    rows lack a column."""
    from medbeam.io import sharded

    monkeypatch.setattr(sharded, "CHUNK_ITEMS", 3)
    rows = [{"path": f"p{i:02d}", **({"size": i} if i == 7 else {})} for i in range(40)]
    options = beam.options.pipeline_options.PipelineOptions(["--runner=FnApiRunner"])
    with beam.Pipeline(options=options) as p:
        computed = p | beam.Create(rows)
        spec = tables.TableSpec("computed", tables.ComputedSchema(_UnionOfColumns()), ("path",))
        # the parts: among the rows themselves (as the export's parse step sends them) and from another step
        mixed = computed | "With parts" >> beam.FlatMap(lambda row: [row, _types_part(row)][: 1 + ("size" in row)])
        later = computed | "Later parts" >> beam.Map(_types_part)
        _ = {"computed": [mixed, later]} | tables.WriteTables(str(tmp_path), [spec], rows_per_shard=8)

    manifest = tables.read_manifest(str(tmp_path), "computed")
    assert manifest["rows"] == 40 and len(manifest["files"]) == 5
    assert all(pq.read_schema(shard) == COMPUTED for shard in manifest["files"])
    assert tables.read_table(str(tmp_path), "computed").column("size").drop_null().to_pylist() == [7]
    bigquery = json.loads(Path(tables.bigquery_schema_path(str(tmp_path), "computed")).read_text())
    assert [f["name"] for f in bigquery] == ["path", "size"]
