"""ReplaceOutputs' pipeline shape: a first run into a folder leaves out the previous manifest's co-group."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from medbeam.pipelines.dicom_export import ExportConfig, build
from medbeam.transforms.outputs import ReplaceOutputs, has_manifest
from tests.helpers import TEST_FILES, transform_labels


def _export_labels(png_dir: Path, tmp_path: Path) -> set[str]:
    config = ExportConfig(
        inputs=[str(TEST_FILES / "CT_small.dcm")], png_dir=str(png_dir), parquet_dir=str(tmp_path / "t")
    )
    pipeline = beam.Pipeline()
    build(pipeline, config)
    return transform_labels(pipeline)


def test_first_export_into_a_folder_lists_its_pngs_without_grouping_then_a_rerun_co_groups(tmp_path):
    png_dir = tmp_path / "png"
    first = _export_labels(png_dir, tmp_path)
    assert "PNG manifest/Manifest rows" in first
    assert not any(label.startswith(("PNG manifest/By path", "PNG manifest/Previous manifest")) for label in first)

    from medbeam.pipelines.dicom_export import run

    config = ExportConfig(
        inputs=[str(TEST_FILES / "CT_small.dcm")], png_dir=str(png_dir), parquet_dir=str(tmp_path / "t"), progress=False
    )
    assert run(config, []).pngs == 1
    assert has_manifest(str(png_dir))
    again = _export_labels(png_dir, tmp_path)
    assert {"PNG manifest/Previous manifest", "PNG manifest/Old and new", "PNG manifest/By path"} <= again


def test_first_run_of_a_job_that_may_write_a_path_twice_still_lists_it_once(tmp_path):
    out = str(tmp_path / "out")
    written = [f"{out}/a.png", f"{out}/b/c.png", f"{out}/a.png"]
    with beam.Pipeline() as p:
        rows = p | beam.Create(written) | ReplaceOutputs(out, "test")
        assert_that(rows, equal_to([{"path": "a.png"}, {"path": "b/c.png"}]))


def test_first_run_of_a_job_with_unique_paths_lists_each(tmp_path):
    out = str(tmp_path / "out")
    written = [f"{out}/a.png", f"{out}/b/c.png"]
    with beam.Pipeline() as p:
        rows = p | beam.Create(written) | ReplaceOutputs(out, "test", unique_paths=True)
        assert_that(rows, equal_to([{"path": "a.png"}, {"path": "b/c.png"}]))
