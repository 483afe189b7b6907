"""BigQuery as a table destination: load jobs from the tables' own Parquet shards, with their schema JSON.

Why load jobs from the shards, not Beam's WriteToBigQuery: every table is already written once as
deterministic Parquet shards with a BigQuery schema beside them (medbeam.io.tables); a load job reads
exactly those files, is atomic per table, costs nothing, and with WRITE_TRUNCATE a rerun replaces the
table instead of appending to it. Where the shards are on gs:// (a cluster run) the job loads them by URI,
server-side; anywhere else (local files, s3://) they are read here and uploaded as one Parquet file, so
the table still arrives in one job. The step runs inside the pipeline, after the table is finished
(transforms.bigquery), so it works on every runner.

BigQuery as a source (label queries, `--bigquery-sql`): the driver dry-runs the query for its result
schema (no bytes billed), and one worker runs it and pages through the result (`query_rows`). Beam's
ReadFromBigQuery is not used: it exports the result to `--temp_location` on GCS first, cannot talk to an
emulator, and label tables (MIMIC-CXR: 377,110 rows) are small enough for one reader.

What real BigQuery refuses is checked before a load, so that it fails here in one line naming the column,
not in the server's words after the upload (`schema_problems`, `null_elements`):
- column and field names: letters, digits and underscores, not starting with a digit, at most 300
  characters, none of the reserved prefixes (_TABLE_, _FILE_, _PARTITION, _ROW_TIMESTAMP, __ROOT__,
  _COLON_), and no two names in one record that differ only in case (BigQuery ignores case);
- at most 15 levels of nested RECORD (medbeam.dicom.metadata keeps sequences to 14), no RECORD without
  fields;
- no NULL element in an array (a NULL array is fine: BigQuery stores and returns it as []). medbeam's
  tables never hold one (medbeam.dicom.metadata keeps empty positions as '', NaN or an empty name); the
  check runs on the rows that are uploaded, and a gs:// load is left to the server's own check.

Endpoint and credentials: Google application-default credentials, unless an endpoint is given
(`--bigquery-endpoint`, or the BIGQUERY_EMULATOR_HOST environment variable): then anonymous credentials,
as emulators expect. Credentials are never printed.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
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
_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
_RESERVED_PREFIXES = ("_TABLE_", "_FILE_", "_PARTITION", "_ROW_TIMESTAMP", "__ROOT__", "_COLON_")
#: BigQuery: "A schema cannot contain more than 15 levels of nested RECORD types."
MAX_RECORD_LEVELS = 15


class BigQueryError(RuntimeError):
    """A BigQuery call failed; the message says what and why, in one line."""


class BigQueryLoadError(BigQueryError):
    """A table could not be loaded; the message says which and why (one line). Its shards stay in place."""


class BigQueryQueryError(BigQueryError):
    """A query (e.g. the label query) failed; the message has the server's reason."""


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
        return make_client(self.project, self.endpoint)


def make_client(project: str | None, endpoint: str | None = None) -> Any:
    """A google.cloud.bigquery.Client: anonymous on an emulator's `endpoint` (or BIGQUERY_EMULATOR_HOST's),
    else with application-default credentials (`project` None: theirs)."""
    from google.cloud import bigquery

    endpoint = endpoint or _emulator_from_env()
    if endpoint:
        from google.auth.credentials import AnonymousCredentials

        if not project:
            raise ValueError("a BigQuery emulator needs a project: give --project (or --bigquery-dataset P:D)")
        return bigquery.Client(
            project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
        )
    return bigquery.Client(project=project)


def query_schema(client: Any, sql: str) -> list[Any]:
    """The result schema of `sql`, from a dry run (no bytes billed). BigQueryQueryError: the server's reason."""
    from google.cloud import bigquery

    try:
        job = client.query(sql, job_config=bigquery.QueryJobConfig(dry_run=True, use_query_cache=False))
        return list(job.schema)
    except Exception as exc:  # noqa: BLE001 - one line with the server's reason
        raise BigQueryQueryError(_reason(exc)) from None


def query_rows(client: Any, sql: str, page_size: int = 10_000) -> Iterator[dict[str, Any]]:
    """The rows of `sql` as dicts (REPEATED → lists, RECORD → dicts, BYTES → bytes), page by page."""
    try:
        for row in client.query(sql).result(page_size=page_size, timeout=None):
            yield dict(row)
    except Exception as exc:  # noqa: BLE001 - one line with the server's reason
        raise BigQueryQueryError(f"BigQuery query failed: {_reason(exc)}") from None


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


def schema_problems(fields: list[dict[str, Any]], _path: str = "", _level: int = 0) -> list[str]:
    """What real BigQuery would refuse in a schema JSON (names, nesting depth, empty records), one line each."""
    problems = []
    seen: dict[str, str] = {}
    for field in fields:
        name = str(field["name"])
        where = f"{_path}{name}"
        if not _COLUMN_NAME.match(name) or name.upper().startswith(_RESERVED_PREFIXES):
            problems.append(
                f"column {where!r} is not a valid BigQuery name (letters, digits and _, not starting with a digit, "
                "at most 300 characters, no reserved prefix such as _TABLE_)"
            )
        if name.casefold() in seen:
            twin = seen[name.casefold()]
            problems.append(f"columns {twin!r} and {where!r} differ only in case: one column to BigQuery")
        seen.setdefault(name.casefold(), where)
        if field.get("type") in ("RECORD", "STRUCT"):
            if _level + 1 > MAX_RECORD_LEVELS:
                problems.append(f"column {where!r} is RECORD level {_level + 1}: BigQuery allows {MAX_RECORD_LEVELS}")
            elif not field.get("fields"):
                problems.append(f"RECORD column {where!r} has no fields: BigQuery refuses it")
            else:
                problems += schema_problems(field["fields"], f"{where}.", _level + 1)
    return problems


def null_elements(table: pa.Table) -> list[str]:
    """The columns (dotted paths) whose arrays hold a NULL element, which BigQuery cannot store."""
    found: list[str] = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        for chunk in column.chunks:
            _find_null_elements(chunk, name, found)
    return sorted(set(found))


def _find_null_elements(array: pa.Array, path: str, found: list[str]) -> None:
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        elements = array.flatten()  # the elements of the non-NULL arrays
        if elements.null_count:
            found.append(path)
        _find_null_elements(elements, path, found)
    elif pa.types.is_struct(array.type):
        for index, child in enumerate(array.type):
            _find_null_elements(array.field(index).filter(array.is_valid()), f"{path}.{child.name}", found)


def load_table(client: Any, target: BigQueryTarget, table_dir: str, name: str) -> int:
    """Replace BigQuery table `name` with the table's current shards; return its row count."""
    from google.cloud import bigquery

    table_id = target.table_id(name)
    where = f"loading {table_id} from {table_dir}/{name}"
    schema = json.loads(files.read_bytes(tables.bigquery_schema_path(table_dir, name)))
    problems = schema_problems(schema)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BigQueryLoadError(f"{where}: {problems[0]}{more}")
    shards = tables.read_manifest(table_dir, name)["files"]
    config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.PARQUET,
        schema=[bigquery.SchemaField.from_api_repr(field) for field in schema],
        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
    )
    by_uri = all(shard.startswith("gs://") for shard in shards)
    upload = None if by_uri else _one_table(shards)
    if upload is not None:
        holes = null_elements(upload)
        if holes:
            raise BigQueryLoadError(f"{where}: column {holes[0]!r} has a NULL inside an array, which BigQuery refuses")
    try:
        if upload is None:
            job = client.load_table_from_uri(shards, table_id, job_config=config, location=target.location)
        else:
            job = client.load_table_from_file(
                io.BytesIO(_parquet(upload)), table_id, job_config=config, location=target.location
            )
        job.result()
    except Exception as exc:  # noqa: BLE001 - one line with the table and the server's reason
        raise BigQueryLoadError(f"{where}: {_reason(exc)}") from None
    return int(client.get_table(table_id).num_rows or 0)


def _one_table(shards: list[str]) -> pa.Table:
    """The shards as one table (one upload, one load job)."""
    parts = [pq.read_table(io.BytesIO(files.read_bytes(shard))) for shard in shards]
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def _parquet(table: pa.Table) -> bytes:
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
