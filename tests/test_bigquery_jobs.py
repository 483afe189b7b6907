"""Every job that writes tables loads them into BigQuery with --bigquery-dataset, and `tfrecord from-images
--bigquery-sql` reads its labels from BigQuery: against a real BigQuery API (the local-bigquery emulator)."""

from __future__ import annotations

import io
import shutil
import tarfile
import uuid

import duckdb
import pyarrow.parquet as pq
import pytest
from google.cloud import bigquery
from typer.testing import CliRunner

from medbeam.cli import app
from medbeam.pipelines.images_to_tfrecord import ImagesToTfrecordConfig, run
from tests.helpers import TEST_FILES, gz, read_rejects
from tests.test_images_to_tfrecord import _corpus, _labels_csv, _records, _sql


def _dataset() -> str:
    return f"jobs_{uuid.uuid4().hex[:10]}"


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    return result.output


def _rejects_in_bigquery(client: bigquery.Client, table_id: str) -> list[tuple]:
    return sorted(tuple(r) for r in client.query(f"SELECT uri, stage, error_type FROM `{table_id}`"))


def _rejects_here(table_dir) -> list[tuple]:
    return sorted((r["uri"], r["stage"], r["error_type"]) for r in read_rejects(table_dir))


def _bq_flags(emulator, dataset: str) -> list[str]:
    return ["--bigquery-dataset", f"{emulator.project}:{dataset}", "--bigquery-endpoint", emulator.endpoint]


# ---------------------------------------------------------------------------------------------------
# Rejects of every job


def test_untar_and_decompress_load_their_rejects(bigquery_emulator, tmp_path):
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "evil.tar.gz").write_bytes(archive.getvalue())
    (tmp_path / "in" / "broken.tar.gz").write_bytes(b"not a tar")
    dataset = _dataset()
    output = _cli("files", "untar", "-i", str(tmp_path / "in" / "*.tar.gz"), "--output-dir", str(tmp_path / "o"),
                  *_bq_flags(bigquery_emulator, dataset))  # fmt: skip
    table_id = f"{bigquery_emulator.project}.{dataset}.rejects"
    assert f"BigQuery: {table_id}" in output
    client = bigquery_emulator.client()
    here = _rejects_here(tmp_path / "o" / "_medbeam")
    assert len(here) == 2 and _rejects_in_bigquery(client, table_id) == here

    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "good.txt.gz").write_bytes(gz(b"hello"))
    (tmp_path / "gz" / "bad.txt.gz").write_bytes(gz(b"hello")[:-6])  # truncated
    output = _cli("files", "decompress", "-i", str(tmp_path / "gz"), "--output-dir", str(tmp_path / "plain"),
                  *_bq_flags(bigquery_emulator, dataset), "--bigquery-table-prefix", "decompress_")  # fmt: skip
    table_id = f"{bigquery_emulator.project}.{dataset}.decompress_rejects"
    assert f"BigQuery: {table_id}" in output
    here = _rejects_here(tmp_path / "plain" / "_medbeam")
    assert len(here) == 1 and _rejects_in_bigquery(client, table_id) == here


def test_from_dicom_png_loads_its_rejects(bigquery_emulator, tmp_path):
    root = tmp_path / "png" / "1.2" / "1.2.3"
    root.mkdir(parents=True)
    (root / "1.2.3.4.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    dataset = _dataset()
    output = _cli("tfrecord", "from-dicom-png", "-i", str(tmp_path / "png"), "-o", str(tmp_path / "tf" / "train"),
                  *_bq_flags(bigquery_emulator, dataset))  # fmt: skip
    table_id = f"{bigquery_emulator.project}.{dataset}.rejects"
    assert f"BigQuery: {table_id}" in output
    here = _rejects_here(tmp_path / "tf" / "train_tables")
    assert len(here) == 1 and _rejects_in_bigquery(bigquery_emulator.client(), table_id) == here


def test_dicom_import_loads_its_tables(bigquery_emulator, orthanc, tmp_path):
    (tmp_path / "in").mkdir()
    shutil.copy(TEST_FILES / "CT_small.dcm", tmp_path / "in" / "ct.dcm")
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    dataset = _dataset()
    output = _cli("dicom", "import", "-i", str(tmp_path / "in"), "--dicomweb", orthanc.dicomweb_url,
                  *(["--user", orthanc.auth[0]] if orthanc.auth else []),
                  "--parquet-dir", str(tmp_path / "tables"), *_bq_flags(bigquery_emulator, dataset))  # fmt: skip
    project = bigquery_emulator.project
    assert f"BigQuery: {project}.{dataset}.dicom_import, {project}.{dataset}.rejects" in output
    client = bigquery_emulator.client()
    here = _rejects_here(tmp_path / "tables")
    assert len(here) == 1 and _rejects_in_bigquery(client, f"{project}.{dataset}.rejects") == here
    rows = list(client.query(f"SELECT uri FROM `{project}.{dataset}.dicom_import`"))
    assert [r[0] for r in rows] == [str(tmp_path / "in" / "ct.dcm")]


def test_dicom_deidentify_loads_its_tables(bigquery_emulator, tmp_path, monkeypatch):
    from tests import deid_corpus

    paths = deid_corpus.build_corpus(tmp_path / "in")
    for name in ("rt", "sr", "us", "ct1", "ct2", "bad_pixels"):  # one CT slice and the two bad files are enough
        paths[name].unlink()
    monkeypatch.setenv("MEDBEAM_TEST_DEID_KEY", "bigquery-test-key-0123456789")
    dataset = _dataset()
    output = _cli("dicom", "deidentify", "-i", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"),
                  "--key-env", "MEDBEAM_TEST_DEID_KEY", "--redact-burned-in", "none",
                  "--parquet-dir", str(tmp_path / "tables"), *_bq_flags(bigquery_emulator, dataset))  # fmt: skip
    project = bigquery_emulator.project
    assert f"BigQuery: {project}.{dataset}.deid_audit, {project}.{dataset}.rejects" in output
    client = bigquery_emulator.client()
    here = _rejects_here(tmp_path / "tables")
    assert len(here) == 2 and _rejects_in_bigquery(client, f"{project}.{dataset}.rejects") == here
    rows = list(client.query(f"SELECT source_uri, removed_attributes FROM `{project}.{dataset}.deid_audit`"))
    assert [r[0] for r in rows] == [str(paths["ct0"])] and "PatientAddress" in rows[0][1]


# ---------------------------------------------------------------------------------------------------
# Labels from a BigQuery query


@pytest.fixture(scope="module")
def labels_in_bigquery(bigquery_emulator, tmp_path_factory):
    """The from-images test corpus, its label CSV loaded into BigQuery table `labels.cxr`."""
    root = _corpus(tmp_path_factory.mktemp("corpus"))
    csv = _labels_csv(root)
    table = duckdb.sql(f"SELECT * FROM read_csv('{csv}')").fetch_arrow_table()
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    buffer.seek(0)
    client = bigquery_emulator.client()
    client.create_dataset("labels", exists_ok=True)
    config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.PARQUET, write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE
    )
    client.load_table_from_file(buffer, f"{bigquery_emulator.project}.labels.cxr", job_config=config).result()
    return root, csv, f"{bigquery_emulator.project}.labels.cxr"


def test_bigquery_sql_labels_equal_the_duckdb_ones(bigquery_emulator, labels_in_bigquery, tmp_path):
    """The same query on the same rows gives the same records and the same counts (orphans and duplicate
    label rows reported), whether DuckDB or BigQuery runs it; the rejects go to BigQuery as well."""
    root, csv, table_id = labels_in_bigquery
    inputs = [str(root / "jpgs")]
    by_duckdb = run(ImagesToTfrecordConfig(inputs=inputs, output=str(tmp_path / "d" / "t"), labels_sql=_sql(csv)), [])
    sql = (
        "SELECT path, label_1, label_2, note, [label_1, label_1 * 2] AS pair, label_1 > 0 AS positive "
        f"FROM `{table_id}`"
    )
    dataset = _dataset()
    output = _cli("tfrecord", "from-images", "-i", inputs[0], "-o", str(tmp_path / "b" / "t"), "--bigquery-sql", sql,
                  *_bq_flags(bigquery_emulator, dataset))  # fmt: skip
    assert by_duckdb.summary() in output
    assert (by_duckdb.orphan_label_rows, by_duckdb.duplicate_label_rows, by_duckdb.records_written) == (4, 2, 3)
    assert _records(str(tmp_path / "b" / "t")) == _records(str(tmp_path / "d" / "t"))
    here = _rejects_here(tmp_path / "b" / "t_tables")
    assert here == _rejects_here(tmp_path / "d" / "t_tables")
    rejects_id = f"{bigquery_emulator.project}.{dataset}.rejects"
    assert f"BigQuery: {rejects_id}" in output
    assert _rejects_in_bigquery(bigquery_emulator.client(), rejects_id) == here


def test_bigquery_sql_that_fails_is_one_line(bigquery_emulator, labels_in_bigquery, tmp_path):
    root, _, table_id = labels_in_bigquery
    result = CliRunner().invoke(
        app,
        ["tfrecord", "from-images", "-i", str(root / "jpgs"), "-o", str(tmp_path / "t"), "--no-progress",
         "--bigquery-sql", f"SELECT path, nope FROM `{table_id}`", "--project", bigquery_emulator.project,
         "--bigquery-endpoint", bigquery_emulator.endpoint],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "label query failed" in result.output and "Unrecognized name: nope" in result.output
    assert "Traceback" not in result.output
