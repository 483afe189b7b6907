"""Load finished tables into BigQuery, inside the pipeline (so on every runner, Dataflow included); read
a query's rows (QueryRowsFn, the label query of `--bigquery-sql`).

Applied to what `WriteTables` emits (one manifest path per finished table): each element is a table whose
shards, manifest and schema JSON are complete, and `medbeam.io.bigquery.load_table` replaces the BigQuery
table with them. A failed load raises BigQueryLoadError (one line: table and reason), which fails the run;
the Parquet shards stay where they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from medbeam.io.bigquery import BigQueryTarget, ensure_dataset, load_table, make_client, query_rows
from medbeam.io.tables import MANIFEST


def table_of_manifest(manifest: str) -> tuple[str, str]:
    """`{table_dir}/{name}/_manifest.json` → (table_dir, name)."""
    head, _, tail = manifest.rpartition("/")
    if tail != MANIFEST:
        raise ValueError(f"not a table manifest: {manifest}")
    table_dir, _, name = head.rpartition("/")
    return table_dir, name


class LoadTablesFn(beam.DoFn):
    """Manifest path → the table loaded into `target` (only the tables named in `names`)."""

    def __init__(self, target: BigQueryTarget, names: list[str], namespace: str):
        self._target = target
        self._names = set(names)
        self._namespace = namespace
        self._client: Any = None

    def setup(self) -> None:
        self._client = self._target.client()
        self._dataset_ready = False

    def process(self, manifest: str) -> Iterator[tuple[str, int]]:
        table_dir, name = table_of_manifest(manifest)
        if name not in self._names:
            return
        if not self._dataset_ready:
            ensure_dataset(self._client, self._target)
            self._dataset_ready = True
        rows = load_table(self._client, self._target, table_dir, name)
        Metrics.counter(self._namespace, "bigquery_tables_loaded").inc()
        yield name, rows

    def teardown(self) -> None:
        if self._client is not None:
            self._client.close()


def load_into_bigquery(
    manifests: beam.PCollection, target: BigQueryTarget | None, names: Iterable[str], namespace: str
) -> None:
    """Every job's last step when it has `--bigquery-dataset`: the finished tables `names` (of the manifests
    its WriteTables/WriteTable emitted) loaded into `target`; nothing without a target. Counter
    `bigquery_tables_loaded` in the job's namespace."""
    if target is not None:
        _ = manifests | "Load into BigQuery" >> beam.ParDo(LoadTablesFn(target, list(names), namespace))


class QueryRowsFn(beam.DoFn):
    """SQL text → its result rows as dicts, paged (one query per element; a failure raises
    BigQueryQueryError, one line, which fails the run)."""

    def __init__(self, project: str | None, endpoint: str | None):
        self._project = project
        self._endpoint = endpoint

    def process(self, sql: str) -> Iterator[dict[str, Any]]:
        client = make_client(self._project, self._endpoint)
        try:
            yield from query_rows(client, sql)
        finally:
            client.close()
