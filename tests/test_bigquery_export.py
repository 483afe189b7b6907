"""dicom export --bigquery-dataset: the tables land in BigQuery (a real API implementation: local-bigquery)."""

from __future__ import annotations

import shutil

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
