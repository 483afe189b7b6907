"""The export job end to end on the DirectRunner: counts reconcile, rejects, dedup, reruns, multi-process."""

from __future__ import annotations

from pathlib import Path

import cv2
import duckdb
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medbeam.cli import app
from medbeam.io import tables
from medbeam.pipelines.dicom_export import ExportConfig, run
from tests.helpers import copy_dicom, digests, write_unusable_files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """9 files: 6 renderable instances (one copied twice), a non-image, 2 non-DICOM, 1 with truncated pixels."""
    root = tmp_path_factory.mktemp("corpus")
    copy_dicom(
        {
            "a/CT_small.dcm": "CT_small.dcm",
            "a/b/MR_small": "MR_small.dcm",  # no extension: found by content
            "a/b/MR_small_RLE.dcm": "MR_small_RLE.dcm",  # same SOP instance
            "SC_rgb.dcm": "SC_rgb.dcm",
            "emri_small.dcm": "emri_small.dcm",  # 10 frames
            "rtplan.dcm": "rtplan.dcm",  # no pixels: row, no PNG, no reject
        },
        root,
    )
    write_unusable_files(root)  # notes.txt, fake.dcm, truncated.dcm (pixels cut off)
    return root


def _export(corpus: Path, out: Path, beam_args: list[str] | None = None, **kwargs):
    config = ExportConfig(
        inputs=[str(corpus)],
        png_dir=str(out / "png"),
        duckdb_path=str(out / "m.duckdb"),
        progress=False,
        **kwargs,
    )
    return config, run(config, beam_args or [])


@pytest.fixture(scope="module")
def exported(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    config, counts = _export(corpus, out)
    return out, config, counts


def _query(out: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(out / "m.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


def _digests(root: Path) -> dict[str, str]:
    """Every file's digest, but for table manifests: they name their shards by absolute path."""
    return digests(root, skip=lambda p: p.suffix == ".duckdb" or p.name == tables.MANIFEST)


def test_counts_reconcile(exported):
    _, _, counts = exported
    assert counts.files_in == 9
    assert counts.instances == 7
    assert counts.rejected_files == 2
    assert counts.files_in == counts.instances + counts.rejected_files
    assert counts.pngs == 1 + 1 + 1 + 10  # CT, MR (once), SC_rgb, 10 frames
    assert counts.pixel_errors == 1
    assert counts.duplicates == 1
    assert counts.summary().startswith("9 files in, 7 instances written, 13 PNGs, 2 rejected")


def test_rejects_table_says_where_and_why(exported, corpus):
    out, _, _ = exported
    rejects = {(Path(uri).name, stage): (etype, msg) for uri, stage, etype, msg in _query(out, "SELECT * FROM rejects")}
    assert set(rejects) == {
        ("notes.txt", "parse"),
        ("fake.dcm", "parse"),  # 'DICM' then garbage: read, but not as DICOM
        ("truncated.dcm", "pixels"),
        ("MR_small_RLE.dcm", "duplicate"),
    }
    assert rejects[("notes.txt", "parse")][0] == "NotDicomError"
    assert rejects[("fake.dcm", "parse")][0] == "NotDicomError"
    assert "MR_small" in rejects[("MR_small_RLE.dcm", "duplicate")][1]
    assert all(msg for _, msg in rejects.values())


def test_metadata_rows_and_pngs(exported, corpus):
    out, _, _ = exported
    columns = "path, Modality, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID"
    rows = _query(out, f"SELECT {columns} FROM dicom_metadata ORDER BY path")
    assert len(rows) == 7
    assert all(path.startswith(str(corpus)) for path, *_ in rows)
    png_root = out / "png"
    for path, modality, study, series, sop in rows:
        name = Path(path).name
        if name in ("rtplan.dcm", "truncated.dcm", "MR_small_RLE.dcm"):
            continue
        if name == "emri_small.dcm":
            frames = sorted((png_root / study / series / sop).glob("*.png"))
            assert [f.name for f in frames] == [f"{i:04d}.png" for i in range(1, 11)]
            continue
        png = png_root / study / series / f"{sop}.png"
        image = cv2.imdecode(np.frombuffer(png.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert image.shape[:2] == (ds.Rows, ds.Columns)
        assert image.dtype == np.uint8
        if name == "SC_rgb.dcm":
            assert image.ndim == 3
    assert len(list(png_root.rglob("*.png"))) == 13
    # the metadata row of a file whose pixels failed is kept
    assert _query(out, "SELECT count(*) FROM dicom_metadata WHERE path LIKE '%truncated.dcm'") == [(1,)]


def test_bigquery_schema_and_manifest_are_written(exported):
    out, config, _ = exported
    manifest = tables.read_manifest(config.parquet_dir, "dicom_metadata")
    assert manifest["rows"] == 7 and len(manifest["files"]) == 1
    schema_file = Path(tables.bigquery_schema_path(config.parquet_dir, "dicom_metadata"))
    assert '"name": "PatientName"' in schema_file.read_text()


def test_rerun_gives_identical_outputs(corpus, tmp_path):
    _export(corpus, tmp_path)
    first = _digests(tmp_path)
    before = _query(tmp_path, "SELECT * EXCLUDE (file_size) FROM dicom_metadata ORDER BY path")
    _, counts = _export(corpus, tmp_path)
    assert _digests(tmp_path) == first
    assert _query(tmp_path, "SELECT * EXCLUDE (file_size) FROM dicom_metadata ORDER BY path") == before
    assert _query(tmp_path, "SELECT count(*) FROM rejects") == [(4,)]
    assert counts.instances == 7


def test_stale_shards_of_an_earlier_run_are_removed(corpus, tmp_path):
    config, _ = _export(corpus, tmp_path, rows_per_shard=2)
    table_dir = Path(config.parquet_dir) / "dicom_metadata"
    assert len(list(table_dir.glob("*.parquet"))) >= 2
    _export(corpus, tmp_path)
    assert [p.name for p in table_dir.glob("*.parquet")] == ["dicom_metadata-00000-of-00001.parquet"]
    assert _query(tmp_path, "SELECT count(*) FROM dicom_metadata") == [(7,)]


def test_multi_processing_matches_in_memory(corpus, exported, tmp_path):
    out, _, expected = exported
    _, counts = _export(
        corpus, tmp_path, ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    )
    assert counts == expected
    assert _digests(tmp_path / "png") == _digests(out / "png")
    sql = "SELECT * EXCLUDE (path) FROM dicom_metadata ORDER BY SOPInstanceUID, TransferSyntaxUID, file_size"
    assert _query(tmp_path, sql) == _query(out, sql)


def test_cli_prints_the_reconciled_counts(corpus, tmp_path):
    result = CliRunner().invoke(
        app,
        ["dicom", "export", "--input", str(corpus), "--png-dir", str(tmp_path / "png"),
         "--duckdb", str(tmp_path / "m.duckdb"), "--resize", "32", "32", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert "9 files in, 7 instances written, 13 PNGs, 2 rejected" in result.output
    png = next((tmp_path / "png").rglob("*.png"))
    assert cv2.imdecode(np.frombuffer(png.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED).shape[:2] == (32, 32)


def test_cli_rejects_bad_arguments_clearly(tmp_path):
    result = CliRunner().invoke(app, ["dicom", "export", "--input", "x", "--window-center", "40"])
    assert result.exit_code == 2
    assert "--window-width" in result.output


def test_tfrecord_prefix_writes_the_rendered_pngs_as_examples(corpus, exported, tmp_path):
    from medbeam.io import tfrecord

    out, _, _ = exported
    prefix = str(tmp_path / "tf" / "dicom")
    config = ExportConfig(inputs=[str(corpus)], parquet_dir=str(tmp_path / "t"), tfrecord_prefix=prefix, progress=False)
    counts = run(config, [])
    assert counts.pngs == 13 and not (tmp_path / "png").exists()
    doc = tfrecord.read_description(prefix)
    assert doc["records"] == 13
    records = [
        tfrecord.decode_example(r) for f in doc["files"] for r in tfrecord.read_records(str(tmp_path / "tf" / f))
    ]
    frames = {}
    for r in records:
        study, series, sop = (r[k].values[0].decode() for k in ("study", "series", "instance"))
        frame = r["frame"].values[0]
        frames[(sop, frame)] = r["png_bytes"].values[0]
        single = out / "png" / study / series / f"{sop}.png"
        expected = single if frame == 1 and single.exists() else out / "png" / study / series / sop / f"{frame:04d}.png"
        assert r["png_bytes"].values[0] == expected.read_bytes()
    assert len(frames) == 13
