"""The export's outputs are never quietly wrong: copies that cannot render give way, output folders are
checked first, write failures are failures, a rerun leaves only its own PNGs, and garbage is no instance."""

from __future__ import annotations

import shutil
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
from tests.helpers import TEST_FILES

RTDOSE_SOP = "1.9.999.999.99.9.9999.9999.20030818153516"


def _export(inputs: list[Path], out: Path, **kwargs):
    config = ExportConfig(
        inputs=[str(i) for i in inputs],
        png_dir=str(out / "png"),
        duckdb_path=str(out / "m.duckdb"),
        progress=False,
        **kwargs,
    )
    return run(config, [])


def _rejects(out: Path) -> dict[tuple[str, str], str]:
    with duckdb.connect(str(out / "m.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT uri, stage, message FROM rejects").fetchall()
    return {(Path(uri).name, stage): message for uri, stage, message in rows}


def _pngs(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.png")}


def _copy(names: list[str], root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(TEST_FILES / name, root / name)
    return root


# ---------------------------------------------------------------------------------------------------
# 1. a copy that cannot render gives way to the next copy


def test_copy_that_cannot_render_falls_back_to_the_next_copy(tmp_path):
    # badVR.dcm sorts first among three copies of one RTDOSE instance but does not render; rtdose.dcm does.
    corpus = _copy(["badVR.dcm", "rtdose.dcm", "rtdose_1frame.dcm"], tmp_path / "in")
    counts = _export([corpus], tmp_path)
    frames = [p for p in _pngs(tmp_path / "png") if f"/{RTDOSE_SOP}/" in p]
    assert len(frames) == 15  # rtdose.dcm's 15 frames
    assert counts.pngs == 15 and counts.rendered_instances == 1 and counts.pixel_errors == 0
    rejects = _rejects(tmp_path)
    assert set(rejects) == {("badVR.dcm", "duplicate"), ("rtdose_1frame.dcm", "duplicate")}
    assert "rtdose.dcm, which renders its PNG" in rejects[("badVR.dcm", "duplicate")]
    assert "does not render" in rejects[("badVR.dcm", "duplicate")]
    assert "rtdose.dcm, which renders its PNG" in rejects[("rtdose_1frame.dcm", "duplicate")]


def test_each_file_is_rendered_once_and_the_staging_folder_is_left_empty(tmp_path):
    # Every copy renders in the parse pass (one read per file); only the chosen copy's PNGs are moved into
    # place, the others' staged PNGs are removed, and so is the staging folder itself.
    corpus = _copy(["badVR.dcm", "rtdose.dcm", "rtdose_1frame.dcm", "CT_small.dcm"], tmp_path / "in")
    _export([corpus], tmp_path)
    assert not (tmp_path / "png" / "_medbeam" / "staging").exists()
    assert len(_pngs(tmp_path / "png")) == 15 + 1


def test_instance_is_a_pixel_reject_only_when_no_copy_renders(tmp_path):
    corpus = _copy(["badVR.dcm"], tmp_path / "in")
    shutil.copy(TEST_FILES / "badVR.dcm", corpus / "badVR-copy.dcm")
    counts = _export([corpus], tmp_path)
    assert counts.pngs == 0 and counts.pixel_errors == 2 and counts.duplicates == 0
    rejects = _rejects(tmp_path)
    assert set(rejects) == {("badVR.dcm", "pixels"), ("badVR-copy.dcm", "pixels")}
    for message in rejects.values():
        assert "no copy of instance" in message and "badVR.dcm" in message and "badVR-copy.dcm" in message


# ---------------------------------------------------------------------------------------------------
# 3. output locations checked before any work; a failed write is a write error and a failed run


def test_png_dir_under_a_regular_file_fails_before_any_work(tmp_path):
    (tmp_path / "file").write_text("I am a file")
    result = CliRunner().invoke(
        app,
        ["dicom", "export", "--input", str(TEST_FILES / "CT_small.dcm"), "--png-dir", str(tmp_path / "file" / "png"),
         "--duckdb", str(tmp_path / "m.duckdb"), "--no-progress"],
    )
    assert result.exit_code == 2, result.output
    assert "--png-dir" in result.output and "not writable" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "m_parquet").exists()  # nothing was run


def test_read_only_png_dir_fails_before_any_work(tmp_path):
    import os

    png_dir = tmp_path / "png"
    png_dir.mkdir()
    png_dir.chmod(0o555)
    try:
        if os.access(png_dir, os.W_OK):  # root ignores permission bits: a read-only mount stands in
            png_dir.chmod(0o755)
            png_dir.rmdir()
            png_dir.write_text("")  # a file where the folder should be: refused the same way
        result = CliRunner().invoke(
            app,
            ["dicom", "export", "--input", str(TEST_FILES / "CT_small.dcm"), "--png-dir", str(png_dir),
             "--duckdb", str(tmp_path / "m.duckdb"), "--no-progress"],
        )
    finally:
        if png_dir.is_dir():
            png_dir.chmod(0o755)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "--png-dir" in result.output


def test_write_failure_during_the_run_is_a_write_error_and_exits_non_zero(tmp_path):
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm", stop_before_pixels=True)
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / ds.StudyInstanceUID).write_text("a file where the study folder goes")
    result = CliRunner().invoke(
        app,
        ["dicom", "export", "--input", str(TEST_FILES / "CT_small.dcm"), "--png-dir", str(tmp_path / "png"),
         "--duckdb", str(tmp_path / "m.duckdb"), "--no-progress"],
    )
    assert result.exit_code == 1, result.output
    assert "undecodable" not in result.output
    assert "1 instances whose PNGs could not be written" in result.output
    assert set(_rejects(tmp_path)) == {("CT_small.dcm", "write")}


# ---------------------------------------------------------------------------------------------------
# 4. the PNG tree matches the run that wrote it


def test_rerun_with_another_input_removes_only_the_previous_runs_pngs(tmp_path):
    from medbeam.transforms.outputs import OUTPUTS_TABLE, own_dir, previous_outputs

    first = _copy(["CT_small.dcm", "MR_small.dcm", "examples_jpeg2k.dcm"], tmp_path / "first")
    second = _copy(["CT_small.dcm", "rtdose.dcm"], tmp_path / "second")
    out = tmp_path / "out"
    _export([first], out)
    assert len(_pngs(out / "png")) == 3
    foreign = out / "png" / "mine" / "notes.png"  # not medbeam's: must survive
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"user file")

    counts = _export([second], out)
    with duckdb.connect(str(out / "m.duckdb"), read_only=True) as con:
        table = con.execute("SELECT StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID FROM dicom_metadata").fetchall()
    expected = {f"{st}/{se}/{sop}.png" for st, se, sop in table if sop != RTDOSE_SOP}
    expected |= {f"{st}/{se}/{sop}/{i:04d}.png" for st, se, sop in table if sop == RTDOSE_SOP for i in range(1, 16)}
    assert _pngs(out / "png") == expected | {"mine/notes.png"}
    assert counts.stale_outputs_removed == 2
    assert "2 PNGs of the previous run removed" in counts.summary()
    assert sorted(previous_outputs(str(out / "png"))) == sorted(expected)
    assert tables.read_manifest(own_dir(str(out / "png")), OUTPUTS_TABLE)["rows"] == 16
    # emptied folders of removed PNGs go too
    mr = pydicom.dcmread(TEST_FILES / "MR_small.dcm", stop_before_pixels=True)
    assert not (out / "png" / mr.StudyInstanceUID).exists()

    again = _export([second], out)  # same input again: nothing to remove, same tree
    assert again.stale_outputs_removed == 0 and _pngs(out / "png") == expected | {"mine/notes.png"}


# ---------------------------------------------------------------------------------------------------
# 5. 'DICM' followed by garbage is a parse reject, not an instance


def test_dicm_prefix_with_random_bytes_is_a_parse_reject(tmp_path):
    corpus = tmp_path / "in"
    corpus.mkdir()
    (corpus / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(7).bytes(600))
    shutil.copy(TEST_FILES / "CT_small.dcm", corpus)
    counts = _export([corpus], tmp_path)
    assert (counts.files_in, counts.instances, counts.rejected_files) == (2, 1, 1)
    message = _rejects(tmp_path)[("garbage.dcm", "parse")]
    assert "no standard DICOM attribute" in message


# ---------------------------------------------------------------------------------------------------
# 7. --resize-mode on the command line


@pytest.mark.parametrize("mode", ["stretch", "pad", "crop"])
def test_cli_resize_mode(tmp_path, mode):
    # A 480x640 colour ultrasound from pydicom's files.
    source = TEST_FILES / "examples_jpeg2k.dcm"
    result = CliRunner().invoke(
        app,
        ["dicom", "export", "--input", str(source), "--png-dir", str(tmp_path / "png"),
         "--parquet-dir", str(tmp_path / "t"), "--resize", "100", "100", "--resize-mode", mode, "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    (png,) = (tmp_path / "png").rglob("*.png")
    image = cv2.imdecode(np.frombuffer(png.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.shape[:2] == (100, 100)
    letterbox = image[:12].max() == 0 and image[-12:].max() == 0  # 480x640 → 75x100 + 12/13 black rows
    assert letterbox == (mode == "pad")


def test_missing_input_file_is_an_error_not_an_empty_run(tmp_path):
    result = CliRunner().invoke(
        app, ["dicom", "export", "--input", str(tmp_path / "nope.dcm"), "--duckdb", str(tmp_path / "m.duckdb")]
    )
    assert result.exit_code == 2 and "no such input" in result.output
