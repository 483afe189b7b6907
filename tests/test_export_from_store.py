"""`medbeam dicom export --dicomweb`: the same rows and byte-identical PNGs as exporting the files directly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pydicom
import pytest
from pydicom.uid import generate_uid

from medbeam.io.dicomweb import DicomwebSettings
from medbeam.pipelines import dicom_import as di
from medbeam.pipelines.dicom_export import ExportConfig, run

pytest_plugins = ["tests.orthanc"]

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _data_store() -> Path:
    import data_store

    return Path(data_store.__file__).parent / "data"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    """Real files given UIDs of their own, so nothing else in the shared Orthanc can stand in for them."""
    root = tmp_path_factory.mktemp("store-corpus")
    sources = [TEST_FILES / "CT_small.dcm", TEST_FILES / "MR_small_RLE.dcm", TEST_FILES / "rtplan.dcm",
               _data_store() / "SC_rgb.dcm", _data_store() / "emri_small.dcm", _data_store() / "JPEG-LL.dcm"]
    studies = []
    for i, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["medbeam-store-test", "study", str(i)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["medbeam-store-test", "series", str(i)])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["medbeam-store-test", "sop", str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(root / source.name)
        studies.append(ds.StudyInstanceUID)
    return root, studies


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def _rows(duckdb_path: Path) -> list[tuple]:
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        return con.execute("SELECT * EXCLUDE (path) FROM dicom_metadata ORDER BY SOPInstanceUID").fetchall()


def test_store_export_matches_direct_export(corpus, orthanc, tmp_path):
    root, studies = corpus
    settings = DicomwebSettings.from_options(orthanc.dicomweb_url)
    imported = di.run(di.ImportConfig(inputs=[str(root)], dicomweb=settings, parquet_dir=str(tmp_path / "imp"), progress=False), [])
    assert imported.rejected_files == 0

    direct = run(ExportConfig(inputs=[str(root)], png_dir=str(tmp_path / "direct" / "png"),
                              duckdb_path=str(tmp_path / "direct" / "m.duckdb"), progress=False))
    store = run(ExportConfig(dicomweb=settings, studies=studies, png_dir=str(tmp_path / "store" / "png"),
                             duckdb_path=str(tmp_path / "store" / "m.duckdb"), progress=False))

    assert (store.files_in, store.instances, store.pngs, store.rejected_files) == (6, 6, direct.pngs, 0)
    assert direct.pngs == 1 + 1 + 1 + 10 + 1
    assert _digests(tmp_path / "store" / "png") == _digests(tmp_path / "direct" / "png")
    assert _rows(tmp_path / "store" / "m.duckdb") == _rows(tmp_path / "direct" / "m.duckdb")
    with duckdb.connect(str(tmp_path / "store" / "m.duckdb"), read_only=True) as con:
        paths = [p for (p,) in con.execute("SELECT path FROM dicom_metadata").fetchall()]
    assert all(p.startswith(orthanc.dicomweb_url + "/studies/") and "/instances/" in p for p in paths)


def test_study_filter_limits_the_export(corpus, orthanc, tmp_path):
    root, studies = corpus
    settings = DicomwebSettings.from_options(orthanc.dicomweb_url)
    di.run(di.ImportConfig(inputs=[str(root)], dicomweb=settings, parquet_dir=str(tmp_path / "imp"), progress=False), [])
    counts = run(ExportConfig(dicomweb=settings, studies=studies[:1], parquet_dir=str(tmp_path / "t"), progress=False))
    assert counts.instances == 1 and counts.rejected_files == 0
