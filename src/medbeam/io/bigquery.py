"""BigQuery as a table destination: load jobs from the tables' own Parquet shards, with their schema JSON.

Why load jobs from the shards, not Beam's WriteToBigQuery: every table is already written once as
deterministic Parquet shards with a BigQuery schema beside them (medbeam.io.tables); a load job reads
exactly those files, is atomic per table, costs nothing, and with WRITE_TRUNCATE a rerun replaces the
table instead of appending to it. Where the shards are on gs:// (a cluster run) the job loads them by URI,
server-side; anywhere else (local files, s3://) they are read here and uploaded as one Parquet file, so
the table still arrives in one job. The step runs inside the pipeline, after the table is finished
(transforms.bigquery), so it works on every runner.

Endpoint and credentials: Google application-default credentials, unless an endpoint is given
(`--bigquery-endpoint`, or the BIGQUERY_EMULATOR_HOST environment variable): then anonymous credentials,
as emulators expect. Credentials are never printed.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medbeam.io import files, tables

EMULATOR_ENV = "BIGQUERY_EMULATOR_HOST"
#: How long API calls are retried on transient errors (the library's default is 10 minutes: a server that is
#: down would look like a hang).
RETRY_DEADLINE_S = 20.0


def _retry() -> Any:
    from google.cloud import bigquery

    return bigquery.DEFAULT_RETRY.with_deadline(RETRY_DEADLINE_S)
_DATASET_NAME = re.compile(r"^[A-Za-z0-9_]{1,1024}$")


class BigQueryLoadError(RuntimeError):
    """A table could not be loaded; the message says which and why (one line). Its shards stay in place."""


@dataclass(frozen=True)
class BigQueryTarget:
    """Where a job's tables go: `PROJECT:DATASET` (or `PROJECT.DATASET`), an optional table name prefix,
    the dataset's location (used when it is created), and an emulator endpoint."""

    project: str
    dataset: str
    table_prefix: str = ""
    location: str | None = None
    endpoint: str | None = None

    @classmethod
    def parse(
        cls, value: str, table_prefix: str = "", location: str | None = None, endpoint: str | None = None
    ) -> BigQueryTarget:
        text = value.strip()
        project, _, dataset = text.rpartition(":") if ":" in text else text.rpartition(".")
        if not project or not _DATASET_NAME.match(dataset):
            raise ValueError(f"--bigquery-dataset takes PROJECT:DATASET (or PROJECT.DATASET), got {value!r}")
        if table_prefix and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table_prefix):
            raise ValueError(f"--bigquery-table-prefix must be letters, digits and _, got {table_prefix!r}")
        endpoint = endpoint or _emulator_from_env()
        return cls(project, dataset, table_prefix, location, endpoint)

    def table_id(self, name: str) -> str:
        return f"{self.project}.{self.dataset}.{self.table_prefix}{name}"

    def client(self) -> Any:
        from google.cloud import bigquery

        if self.endpoint:
            from google.auth.credentials import AnonymousCredentials

            return bigquery.Client(
                project=self.project,
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": self.endpoint},
            )
        return bigquery.Client(project=self.project)


def _emulator_from_env() -> str | None:
    host = os.environ.get(EMULATOR_ENV)
    if not host:
        return None
    return host if "://" in host else f"http://{host}"


def ensure_dataset(client: Any, target: BigQueryTarget) -> None:
    """Create the dataset if it is missing (in `target.location` when given)."""
    from google.cloud import bigquery

    dataset = bigquery.Dataset(f"{target.project}.{target.dataset}")
    if target.location:
        dataset.location = target.location
    try:
        client.create_dataset(dataset, exists_ok=True, retry=_retry(), timeout=RETRY_DEADLINE_S)
    except Exception as exc:  # noqa: BLE001 - one line with the dataset and the server's reason
        where = f" at {target.endpoint}" if target.endpoint else ""
        what = f"dataset {dataset.dataset_id} in project {target.project}{where}"
        raise BigQueryLoadError(f"{what}: {_reason(exc)}") from None


def schema_fields(table_dir: str, name: str) -> list[Any]:
    """The table's BigQuery schema, from the `{name}.bigquery-schema.json` written beside its shards."""
    from google.cloud import bigquery

    schema = json.loads(files.read_bytes(tables.bigquery_schema_path(table_dir, name)))
    return [bigquery.SchemaField.from_api_repr(field) for field in schema]


def load_table(client: Any, target: BigQueryTarget, table_dir: str, name: str) -> int:
    """Replace BigQuery table `name` with the table's current shards; return its row count."""
    from google.cloud import bigquery

    shards = tables.read_manifest(table_dir, name)["files"]
    config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.PARQUET,
        schema=schema_fields(table_dir, name),
        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
    )
    table_id = target.table_id(name)
    try:
        if all(shard.startswith("gs://") for shard in shards):
            job = client.load_table_from_uri(shards, table_id, job_config=config, location=target.location)
        else:
            job = client.load_table_from_file(
                io.BytesIO(_one_parquet(shards)), table_id, job_config=config, location=target.location
            )
        job.result()
    except Exception as exc:  # noqa: BLE001 - one line with the table and the server's reason
        raise BigQueryLoadError(f"loading {table_id} from {table_dir}/{name}: {_reason(exc)}") from None
    return int(client.get_table(table_id).num_rows or 0)


def _one_parquet(shards: list[str]) -> bytes:
    """The shards as one Parquet file (one upload, one load job)."""
    parts = [pq.read_table(io.BytesIO(files.read_bytes(shard))) for shard in shards]
    table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _reason(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    errors = getattr(exc, "errors", None)
    if errors:
        first = errors[0]
        message = first.get("message", message) if isinstance(first, dict) else message
    text = " ".join(str(message).split())
    return f"{type(exc).__name__}: {text[:500]}"
