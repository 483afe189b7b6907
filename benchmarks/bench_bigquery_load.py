"""Benchmark: loading the demo corpus's metadata table into BigQuery next to writing its Parquet shards
(run by hand, not a test; a sanity figure, not a target).

    .venv/bin/python -m benchmarks.bench_bigquery_load [--repeats 5]

Exports the demo corpus's metadata once (no PNGs) under bench-out/bigquery/, then, alternating in one run:
- write: the table's rows written again as its zstd Parquet shards, as WriteTables writes them;
- load: `medbeam.io.bigquery.load_table` into the local-bigquery emulator (started here on 127.0.0.1, as the
  tests start it: scripts/ensure-bigquery-emulator.sh first), WRITE_TRUNCATE, from a local file (one upload,
  one load job), waiting for the job and the row count.
Prints the median of each and their ratio. The emulator runs GoogleSQL on DuckDB on this machine: its load
time says how much the load step adds to a run here, not what Google's service takes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench-out" / "bigquery"


def _tables_dir() -> Path:
    from medbeam.demo import demo_corpus_dirs
    from medbeam.pipelines.dicom_export import ExportConfig, run

    tables_dir = OUT / "tables"
    if not (tables_dir / "dicom_metadata" / "_manifest.json").exists():
        run(ExportConfig(inputs=[str(d) for d in demo_corpus_dirs()], parquet_dir=str(tables_dir), progress=False))
    return tables_dir


def _write_shards(table, shard_rows: list[int], out: Path) -> None:
    start = 0
    for index, rows in enumerate(shard_rows):
        pq.write_table(table.slice(start, rows), out / f"shard-{index:05d}.parquet", compression="zstd")
        start += rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from medbeam.io import tables
    from medbeam.io.bigquery import BigQueryTarget, ensure_dataset, load_table
    from tests.bigquery_emulator import BigQueryEmulator, missing_prerequisite

    problem = missing_prerequisite()
    if problem:
        raise SystemExit(problem)
    tables_dir = _tables_dir()
    manifest = tables.read_manifest(str(tables_dir), "dicom_metadata")
    table = tables.read_table(str(tables_dir), "dicom_metadata")
    shard_rows = [pq.ParquetFile(path).metadata.num_rows for path in manifest["files"]]
    print(f"dicom_metadata: {table.num_rows} rows, {table.num_columns} columns, {len(shard_rows)} shard(s), "
          f"{sum(Path(p).stat().st_size for p in manifest['files']) / 1e6:.2f} MB of Parquet")  # fmt: skip

    writes, loads = [], []
    with tempfile.TemporaryDirectory() as scratch, BigQueryEmulator(Path(scratch)) as server:
        target = BigQueryTarget(server.project, "bench", endpoint=server.endpoint)
        client = server.client()
        ensure_dataset(client, target)
        load_table(client, target, str(tables_dir), "dicom_metadata")  # warm: the table exists from here on
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as out:
                started = time.perf_counter()
                _write_shards(table, shard_rows, Path(out))
                writes.append(time.perf_counter() - started)
            started = time.perf_counter()
            rows = load_table(client, target, str(tables_dir), "dicom_metadata")
            loads.append(time.perf_counter() - started)
            assert rows == table.num_rows
        client.close()
    write, load = statistics.median(writes), statistics.median(loads)
    print(f"write Parquet shards: {write * 1000:8.1f} ms (median of {args.repeats})")
    print(f"load into BigQuery:   {load * 1000:8.1f} ms (median of {args.repeats}; local-bigquery emulator)")
    print(f"load / write:         {load / write:8.1f}×")


if __name__ == "__main__":
    main()
