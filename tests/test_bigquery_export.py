"""dicom export --bigquery-dataset: the tables land in BigQuery (a real API implementation: local-bigquery)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import math
import shutil
import threading
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from medbeam.cli import app
from medbeam.io.bigquery import BigQueryTarget
from medbeam.pipelines.dicom_export import ExportConfig, run
from tests.helpers import TEST_FILES

FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "badVR.dcm", "rtdose.dcm"]


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for name in FILES:
        shutil.copy(TEST_FILES / name, root / name)
    (root / "notes.txt").write_text("not DICOM")
    return root


def test_export_loads_metadata_and_rejects_into_bigquery(bigquery_emulator, corpus, tmp_path):
    target = BigQueryTarget(bigquery_emulator.project, "export_test", endpoint=bigquery_emulator.endpoint)
    config = ExportConfig(inputs=[str(corpus)], duckdb_path=str(tmp_path / "m.duckdb"), progress=False, bigquery=target)
    counts = run(config, [])
    assert counts.instances == 5
    client = bigquery_emulator.client()
    with duckdb.connect(str(tmp_path / "m.duckdb"), read_only=True) as con:
        columns = "path, Modality, PatientName.Alphabetic, StudyDate"
        expected = con.execute(f"SELECT {columns} FROM dicom_metadata ORDER BY path").fetchall()
        rejects = con.execute("SELECT count(*) FROM rejects").fetchone()[0]
    rows = client.query(f"SELECT {columns} FROM `{target.table_id('dicom_metadata')}` ORDER BY path").result()
    assert [tuple(r.values()) for r in rows] == expected
    assert client.get_table(target.table_id("rejects")).num_rows == rejects == 1
    run(config, [])  # a rerun replaces the tables (WRITE_TRUNCATE), never appends
    assert client.get_table(target.table_id("dicom_metadata")).num_rows == 5


def test_a_failed_load_is_one_line_and_exit_1(corpus, tmp_path):
    result = CliRunner().invoke(
        app,
        ["dicom", "export", "--input", str(corpus), "--duckdb", str(tmp_path / "m.duckdb"), "--no-progress",
         "--bigquery-dataset", "medbeam-test:nowhere", "--bigquery-endpoint", "http://127.0.0.1:9"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "dataset nowhere in project medbeam-test" in result.output and "Traceback" not in result.output
    assert (tmp_path / "m_parquet" / "dicom_metadata" / "_manifest.json").exists()  # the shards stay


def _schema_of(fields) -> list[dict]:
    """A BigQuery schema as the JSON medbeam writes (name, type, mode, fields), for comparison."""
    out = []
    for field in fields:
        entry = {"name": field.name, "type": field.field_type, "mode": field.mode}
        if field.fields:
            entry["fields"] = _schema_of(field.fields)
        out.append(entry)
    return out


def _json_schema(fields: list[dict]) -> list[dict]:
    return [
        {"name": f["name"], "type": f["type"], "mode": f.get("mode", "NULLABLE")}
        | ({"fields": _json_schema(f["fields"])} if f.get("fields") else {})
        for f in fields
    ]


def _comparable(value, field: dict | None = None):
    """One value as DuckDB and the BigQuery client both hand it back: NaN equal to itself, and a NULL array
    as the empty array (BigQuery has no NULL arrays: it stores and returns them as [])."""
    if field is not None and field.get("mode") == "REPEATED":
        element = {k: v for k, v in field.items() if k != "mode"}
        return [_comparable(v, element) for v in value or []]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        fields = {f["name"]: f for f in (field or {}).get("fields", [])}
        return {k: _comparable(v, fields.get(k)) for k, v in value.items()}
    return value


def _comparable_row(row: dict, schema: list[dict]) -> dict:
    return _comparable(row, {"fields": schema})


def test_demo_corpus_metadata_in_bigquery_equals_duckdb(bigquery_emulator, tmp_path):
    """The whole demo corpus's dicom_metadata (418 columns: PN records, DATE/TIME/TIMESTAMP, REPEATED,
    sequences nested 5 deep, BYTES) loaded into BigQuery: the same schema as the JSON, and every value of
    every row the same as DuckDB's."""
    from medbeam.demo import demo_corpus_dirs

    target = BigQueryTarget(bigquery_emulator.project, "demo_corpus", endpoint=bigquery_emulator.endpoint)
    config = ExportConfig(
        inputs=[str(d) for d in demo_corpus_dirs()],
        parquet_dir=str(tmp_path / "tables"),
        duckdb_path=str(tmp_path / "m.duckdb"),
        progress=False,
        bigquery=target,
    )
    run(config, [])
    client = bigquery_emulator.client()
    table = client.get_table(target.table_id("dicom_metadata"))
    schema = json.loads((tmp_path / "tables" / "dicom_metadata.bigquery-schema.json").read_text())
    assert _schema_of(table.schema) == _json_schema(schema)
    kinds = {(f["type"], f.get("mode")) for f in schema}
    assert {("RECORD", "REPEATED"), ("DATE", "NULLABLE"), ("BYTES", "NULLABLE"), ("STRING", "REPEATED")} <= kinds

    with duckdb.connect(str(tmp_path / "m.duckdb"), read_only=True) as con:
        cursor = con.execute("SELECT * FROM dicom_metadata ORDER BY path")
        names = [d[0] for d in cursor.description]
        expected = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    rows = [dict(r) for r in client.query(f"SELECT * FROM `{table.full_table_id.replace(':', '.')}` ORDER BY path")]
    assert len(rows) == len(expected) == table.num_rows > 200
    for got, want in zip(rows, expected, strict=True):
        assert _comparable_row(got, schema) == _comparable_row(want, schema), want["path"]

    # The kinds of value the issue names, spelled out on real files.
    by_file = {Path(r["path"]).name: r for r in rows}
    ct = by_file["CT_small.dcm"]
    assert ct["PatientName"] == {"Alphabetic": "CompressedSamples^CT1", "Ideographic": None, "Phonetic": None}
    assert ct["StudyDate"] == dt.date(2004, 1, 19)
    assert ct["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    plan = by_file["rtplan.dcm"]
    beam_devices = plan["BeamSequence"][0]["BeamLimitingDeviceSequence"]
    assert [d["RTBeamLimitingDeviceType"] for d in beam_devices] == ["X", "Y"]
    sql = (  # a sequence in a sequence, queried the BigQuery way
        f"SELECT d.RTBeamLimitingDeviceType, COUNT(*) FROM `{target.table_id('dicom_metadata')}`, "
        "UNNEST(BeamSequence) AS b, UNNEST(b.BeamLimitingDeviceSequence) AS d GROUP BY 1 ORDER BY 1"
    )
    with duckdb.connect(str(tmp_path / "m.duckdb"), read_only=True) as con:
        want = con.execute(
            "SELECT d.RTBeamLimitingDeviceType, count(*) FROM dicom_metadata, unnest(BeamSequence) AS t(b), "
            "unnest(b.BeamLimitingDeviceSequence) AS u(d) GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert [tuple(r) for r in client.query(sql)] == want and want


def test_tables_on_gcs_are_loaded_by_uri(gcs_emulator, corpus, tmp_path):
    """A cluster run's shape: the Parquet shards on gs://, loaded by URI (the server reads them; nothing is
    uploaded from the worker)."""
    from tests.bigquery_emulator import BigQueryEmulator

    (tmp_path / "bq").mkdir()
    with BigQueryEmulator(tmp_path / "bq", storage_emulator_host=gcs_emulator.endpoint) as server:
        target = BigQueryTarget(server.project, "by_uri", endpoint=server.endpoint)
        parquet_dir = gcs_emulator.uri("bigquery-by-uri", "tables")
        config = ExportConfig(inputs=[str(corpus)], parquet_dir=parquet_dir, progress=False, bigquery=target)
        counts = run(config, list(gcs_emulator.beam_args))
        assert counts.instances == 5
        client = server.client()
        jobs = [job for job in client.list_jobs() if job.job_type == "load"]
        sources = sorted(uri for job in jobs for uri in job.source_uris)
        manifest = json.loads(gcs_emulator.get("bigquery-by-uri/tables/dicom_metadata/_manifest.json"))
        assert set(manifest["files"]) <= set(sources) and all(uri.startswith("gs://") for uri in sources)
        assert client.get_table(target.table_id("dicom_metadata")).num_rows == 5
        assert client.get_table(target.table_id("rejects")).num_rows == 1
        sql = f"SELECT Modality, COUNT(*) FROM `{target.table_id('dicom_metadata')}` GROUP BY 1 ORDER BY 1"
        assert [tuple(r) for r in client.query(sql)] == [("CT", 1), ("MR", 1), ("RTDOSE", 2), ("RTPLAN", 1)]


def test_a_load_whose_shards_clash_with_the_schema_is_one_line_and_the_shards_stay(bigquery_emulator, corpus, tmp_path):
    from medbeam.io.bigquery import BigQueryLoadError, load_table

    config = ExportConfig(inputs=[str(corpus)], parquet_dir=str(tmp_path / "tables"), progress=False)
    run(config, [])
    schema_path = tmp_path / "tables" / "dicom_metadata.bigquery-schema.json"
    schema = json.loads(schema_path.read_text())
    for field in schema:
        if field["name"] == "Modality":
            field["type"] = "INTEGER"  # the shards hold text
    schema_path.write_text(json.dumps(schema))
    target = BigQueryTarget(bigquery_emulator.project, "clash", endpoint=bigquery_emulator.endpoint)
    client = bigquery_emulator.client()
    client.create_dataset(target.dataset, exists_ok=True)
    with pytest.raises(BigQueryLoadError) as failed:
        load_table(client, target, str(tmp_path / "tables"), "dicom_metadata")
    message = str(failed.value)
    where = f"loading {target.table_id('dicom_metadata')} from {tmp_path / 'tables'}/dicom_metadata: "
    assert message.startswith(where)
    assert "\n" not in message and "CT" in message  # the server's reason: 'CT' is no integer
    assert (tmp_path / "tables" / "dicom_metadata" / "_manifest.json").exists()


def test_a_rerun_replaces_a_table_of_another_schema(bigquery_emulator, corpus, tmp_path):
    """WRITE_TRUNCATE takes the load's schema: a table left with other columns is replaced, not merged."""
    target = BigQueryTarget(bigquery_emulator.project, "replaced", endpoint=bigquery_emulator.endpoint)
    client = bigquery_emulator.client()
    client.create_dataset(target.dataset, exists_ok=True)
    sql = f"CREATE OR REPLACE TABLE `{target.table_id('dicom_metadata')}` AS SELECT 1 AS path, 'x' AS y"
    client.query(sql).result()
    config = ExportConfig(inputs=[str(corpus)], parquet_dir=str(tmp_path / "t"), progress=False, bigquery=target)
    run(config, [])
    table = client.get_table(target.table_id("dicom_metadata"))
    assert table.num_rows == 5 and table.schema[0].name == "path" and table.schema[0].field_type == "STRING"
    assert "y" not in {f.name for f in table.schema}


class _NoSuchProject(http.server.BaseHTTPRequestHandler):
    """What BigQuery answers for a project that does not exist (the emulator creates any project it is
    asked for, so it cannot show this): a 404 with Google's error body."""

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"error": {"code": 404, "message": "Not found: Project nowhere-123456", "status": "NOT_FOUND",
                                     "errors": [{"message": "Not found: Project nowhere-123456", "domain": "global",
                                                 "reason": "notFound"}]}}).encode()  # fmt: skip
        self.send_response(404)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_project_that_does_not_exist_is_one_line_and_exit_1(corpus, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchProject)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = CliRunner().invoke(
            app,
            ["dicom", "export", "--input", str(corpus), "--parquet-dir", str(tmp_path / "t"), "--no-progress",
             "--bigquery-dataset", "nowhere-123456:imaging",
             "--bigquery-endpoint", f"http://127.0.0.1:{server.server_address[1]}"],
        )  # fmt: skip
    finally:
        server.shutdown()
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if "nowhere-123456" in line]
    assert lines == [
        "error: dataset imaging in project nowhere-123456 at http://127.0.0.1:"
        f"{server.server_address[1]}: NotFound: Not found: Project nowhere-123456"
    ]
    assert (tmp_path / "t" / "dicom_metadata" / "_manifest.json").exists()
