"""`medbeam dicom export --dicomweb`: the same rows and byte-identical PNGs as exporting the files directly."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pydicom
import pytest
from pydicom.uid import generate_uid

from medbeam.io.dicomweb import DicomwebSettings
from medbeam.pipelines import dicom_import as di
from medbeam.pipelines.dicom_export import ExportConfig, run
from tests.helpers import dicom_file, digests

# orthanc (one per session, shared with other modules) comes from tests/conftest.py


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    """Real files given UIDs of their own, so nothing else in the shared Orthanc can stand in for them."""
    root = tmp_path_factory.mktemp("store-corpus")
    names = ["CT_small.dcm", "MR_small_RLE.dcm", "rtplan.dcm", "SC_rgb.dcm", "emri_small.dcm", "JPEG-LL.dcm"]
    sources = [dicom_file(name) for name in names]
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


def _import_config(root: Path, settings: DicomwebSettings, parquet_dir: Path) -> di.ImportConfig:
    return di.ImportConfig(inputs=[str(root)], dicomweb=settings, parquet_dir=str(parquet_dir), progress=False)


def _rows(duckdb_path: Path) -> list[tuple]:
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        return con.execute("SELECT * EXCLUDE (path) FROM dicom_metadata ORDER BY SOPInstanceUID").fetchall()


def test_store_export_matches_direct_export(corpus, orthanc, tmp_path):
    root, studies = corpus
    settings = DicomwebSettings.from_options(orthanc.dicomweb_url)
    imported = di.run(_import_config(root, settings, tmp_path / "imp"), [])
    assert imported.rejected_files == 0

    direct = run(ExportConfig(inputs=[str(root)], png_dir=str(tmp_path / "direct" / "png"),
                              duckdb_path=str(tmp_path / "direct" / "m.duckdb"), progress=False))
    store = run(ExportConfig(dicomweb=settings, studies=studies, png_dir=str(tmp_path / "store" / "png"),
                             duckdb_path=str(tmp_path / "store" / "m.duckdb"), progress=False))

    assert (store.files_in, store.instances, store.pngs, store.rejected_files) == (6, 6, direct.pngs, 0)
    assert direct.pngs == 1 + 1 + 1 + 10 + 1
    assert digests(tmp_path / "store" / "png", "*.png") == digests(tmp_path / "direct" / "png", "*.png")
    assert _rows(tmp_path / "store" / "m.duckdb") == _rows(tmp_path / "direct" / "m.duckdb")
    with duckdb.connect(str(tmp_path / "store" / "m.duckdb"), read_only=True) as con:
        paths = [p for (p,) in con.execute("SELECT path FROM dicom_metadata").fetchall()]
    assert all(p.startswith(orthanc.dicomweb_url + "/studies/") and "/instances/" in p for p in paths)


def test_study_filter_limits_the_export(corpus, orthanc, tmp_path):
    root, studies = corpus
    settings = DicomwebSettings.from_options(orthanc.dicomweb_url)
    di.run(_import_config(root, settings, tmp_path / "imp"), [])
    counts = run(ExportConfig(dicomweb=settings, studies=studies[:1], parquet_dir=str(tmp_path / "t"), progress=False))
    assert counts.instances == 1 and counts.rejected_files == 0
