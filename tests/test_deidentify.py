"""`dicom deidentify`: the profile on a corpus with identifying values planted everywhere (tests/deid_corpus.py),
keyed consistency (same key → identical bytes, another key → unlinkable), references that still resolve,
burned-in text found and filled, rejects that quote nothing, STOW-RS into a real Orthanc, and `dicom export`
of the output rendering the same images.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid as uids
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from medbeam.cli import app
from medbeam.dicom import burned_in
from medbeam.dicom.deidentify import (
    RETAIN_DATES,
    RETAIN_DATES_SHIFTED,
    DeidError,
    DeidOptions,
    Keys,
    deidentify,
    shift_date,
)
from medbeam.dicom.render import RenderOptions
from medbeam.io import tables
from medbeam.pipelines import dicom_deidentify as dd
from medbeam.pipelines import dicom_export
from medbeam.transforms.deidentify import KeySource
from tests import deid_corpus as corpus
from tests.helpers import digests

KEY = "correct horse battery staple 0123456789"
OTHER_KEY = "another secret, quite unrelated 987654"
UID_RE = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


@pytest.fixture(scope="session")
def ocr() -> None:
    """Tesseract must be installed (scripts/ensure-tesseract.sh); in CI a missing one fails, never skips."""
    if burned_in.tesseract_path() is None:
        reason = "tesseract is not installed; run scripts/ensure-tesseract.sh"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: `make test` runs it)", pytrace=False)
        pytest.skip(reason)


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _leaks(data: bytes) -> list[str]:
    lowered = data.lower()
    return [p for p in corpus.PLANTED if p.lower().encode() in lowered]


def _all_datasets() -> list[Dataset]:
    return [*corpus.ct_slices(), corpus.rt_structure_set(), corpus.structured_report()]


# ---------------------------------------------------------------------------------------------------
# Pure logic


def test_uids_are_valid_keyed_and_stable():
    keys, other = Keys(KEY.encode()), Keys(OTHER_KEY.encode())
    new = keys.uid(corpus.STUDY)
    assert UID_RE.match(new) and len(new) <= 64
    assert keys.uid(corpus.STUDY) == new == keys.uid(corpus.STUDY + "\x00")
    assert other.uid(corpus.STUDY) != new
    assert keys.pseudonym("patient_id", corpus.PATIENT_ID) != other.pseudonym("patient_id", corpus.PATIENT_ID)
    assert -3650 <= keys.day_offset(corpus.PATIENT_ID) <= -1
    with pytest.raises(ValueError, match="16 bytes"):
        Keys(b"short")


@pytest.mark.parametrize("options", [DeidOptions(), DeidOptions(frozenset({RETAIN_DATES_SHIFTED}), True)])
def test_no_planted_value_survives_the_profile(options):
    for ds in _all_datasets():
        result = deidentify(ds, Keys(KEY.encode()), options)
        data = _bytes(result.dataset)
        assert _leaks(data) == [], ds.Modality
        again = pydicom.dcmread(io.BytesIO(data))
        assert again.PatientIdentityRemoved == "YES"
        codes = [item.CodeValue for item in again.DeidentificationMethodCodeSequence]
        assert codes[0] == "113100"
        assert ("113105" in codes) == options.clean_descriptors
        assert not any(elem.tag.is_private for elem in again.iterall())
        assert again.SOPClassUID == ds.SOPClassUID  # class UIDs are kept
        assert UID_RE.match(again.SOPInstanceUID) and again.file_meta.MediaStorageSOPInstanceUID == again.SOPInstanceUID


def test_references_map_like_the_uids_they_reference():
    keys = Keys(KEY.encode())
    cts = [deidentify(ds, keys, DeidOptions()).dataset for ds in corpus.ct_slices()]
    rt = deidentify(corpus.rt_structure_set(), keys, DeidOptions()).dataset
    sr = deidentify(corpus.structured_report(), keys, DeidOptions()).dataset
    ct_uids = {ds.SOPInstanceUID for ds in cts}
    frame = rt.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == cts[0].FrameOfReferenceUID == cts[2].FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == cts[0].StudyInstanceUID == rt.StudyInstanceUID == sr.StudyInstanceUID
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == cts[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ContourImageSequence} == ct_uids
    assert rt.StructureSetROISequence[0].ReferencedFrameOfReferenceUID == cts[0].FrameOfReferenceUID
    assert cts[1].ReferencedImageSequence[0].ReferencedSOPInstanceUID == cts[0].SOPInstanceUID
    assert cts[1].ReferencedImageSequence[0].ReferencedSOPClassUID == uids.CTImageStorage
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == cts[1].SOPInstanceUID
    image_item = sr.ContentSequence[3].ReferencedSOPSequence[0]
    assert image_item.ReferencedSOPInstanceUID == cts[1].SOPInstanceUID
    # the SR tree stays an SR tree: names and text replaced, codes kept
    assert sr.ContentSequence[0].ValueType == "PNAME" and str(sr.ContentSequence[0].PersonName) == "ANONYMIZED"
    assert sr.ContentSequence[1].TextValue == "ANONYMIZED"
    assert sr.ContentSequence[1].ConceptNameCodeSequence[0].CodeValue == "121106"
    # pseudonyms are consistent across the instances of a patient
    assert {ds.PatientID for ds in cts} == {rt.PatientID} and rt.PatientID != corpus.PATIENT_ID
    assert str(rt.PatientName) == rt.PatientID and rt.AccessionNumber == cts[0].AccessionNumber


def test_dates_shift_by_one_offset_per_patient():
    keys = Keys(KEY.encode())
    options = DeidOptions(frozenset({RETAIN_DATES_SHIFTED}))
    ct = deidentify(corpus.ct_slices()[0], keys, options).dataset
    sr = deidentify(corpus.structured_report(), keys, options).dataset
    us = deidentify(corpus.ultrasound_with_burned_name(), keys, options).dataset
    offset = keys.day_offset(corpus.PATIENT_ID)
    assert ct.StudyDate == shift_date("20210315", "DA", offset) == sr.StudyDate
    assert ct.StudyDate != "20210315" and len(ct.StudyDate) == 8
    assert ct.ContentDate == shift_date("20210316", "DA", offset)
    assert sr.ContentSequence[2].Date == shift_date("20210318", "DA", offset)
    assert ct.StudyTime == "101500"  # times are kept with shifted dates
    assert not ct.PatientBirthDate  # the birth date never survives
    assert ct.LongitudinalTemporalInformationModified == "MODIFIED"
    us_offset = keys.day_offset(corpus.US_PATIENT_ID)
    assert us.StudyDate == shift_date("20210315", "DA", us_offset)
    assert shift_date("20200301", "DA", -1) == "20200229"
    assert shift_date("20200301120000.5+0100", "DT", -1) == "20200229120000.5+0100"
    assert shift_date("garbage", "DA", -1) == ""
    full = deidentify(corpus.ct_slices()[0], keys, DeidOptions(frozenset({RETAIN_DATES}))).dataset
    assert full.StudyDate == "20210315" and full.LongitudinalTemporalInformationModified == "UNMODIFIED"
    basic = deidentify(corpus.ct_slices()[0], keys, DeidOptions()).dataset
    assert not basic.StudyDate and basic.LongitudinalTemporalInformationModified == "REMOVED"


def test_retain_options_and_clean_descriptors():
    keys = Keys(KEY.encode())
    retained = DeidOptions(frozenset({"uids", "device", "patient-characteristics", "institution"}), True)
    ds = deidentify(corpus.ct_slices()[0], keys, retained).dataset
    assert ds.SOPInstanceUID == corpus.CT_SOPS[0] and ds.FrameOfReferenceUID == corpus.FRAME
    assert ds.StationName == "CTSTATIONXQ9" and ds.DeviceSerialNumber == "SERIALZZ0042"
    assert ds.PatientAge == "064Y" and ds.PatientSex == "F"
    assert ds.InstitutionName == "Saint Elsewhere Hospital"
    assert ds.StudyDescription == "Chest CT for ***"  # cleaned, not removed
    assert ds.SeriesDescription == "Series of ***"
    assert "PatientAddress" not in ds and "OtherPatientIDsSequence" not in ds
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert {"113100", "113105", "113108", "113109", "113110", "113112"} <= codes
    with pytest.raises(ValueError, match="exclude each other"):
        DeidOptions(frozenset({RETAIN_DATES, RETAIN_DATES_SHIFTED}))
    with pytest.raises(ValueError, match="unknown --retain"):
        DeidOptions(frozenset({"names"}))


def test_safe_private_keeps_listed_private_attributes_only():
    ds = corpus.ct_slices()[0]
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS", "1000")  # B_value: safe
    block.add_new(0x50, "LO", "PrivateSecretLopez")  # not listed: removed
    out = deidentify(ds, Keys(KEY.encode()), DeidOptions(frozenset({"safe-private"}))).dataset
    kept = out.private_block(0x0019, "SIEMENS MR HEADER")
    assert kept[0x0C].value == "1000" and 0x00191050 not in out and 0x00091001 not in out
    assert _leaks(_bytes(out)) == []


def test_well_known_and_unlisted_uids():
    ds = corpus.ct_slices()[0]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D3000", "SRT", "Chest"
    code.CodingSchemeUID = "2.16.840.1.113883.6.96"  # SNOMED's registered UID
    ds.AnatomicRegionSequence = [code]
    ds.add_new(0x00209164, "UI", corpus.ROOT + ".500")  # DimensionOrganizationUID (listed)
    ds.add_new(0x0040A124, "UI", "1.2.840.10008.1.4.1.1")  # a well-known frame of reference value
    ds.add_new(0x00189380, "UI", corpus.ROOT + ".600")  # not in the table, VR UI: replaced too
    out = deidentify(ds, Keys(KEY.encode()), DeidOptions()).dataset
    assert out.AnatomicRegionSequence[0].CodingSchemeUID == "2.16.840.1.113883.6.96"
    assert out[0x0040A124].value == "1.2.840.10008.1.4.1.1"
    assert UID_RE.match(out[0x00209164].value) and UID_RE.match(out[0x00189380].value)


def test_missing_uids_are_refused_without_values():
    ds = corpus.ct_slices()[0]
    del ds.SeriesInstanceUID
    with pytest.raises(DeidError, match="no SeriesInstanceUID") as info:
        deidentify(ds, Keys(KEY.encode()), DeidOptions())
    assert _leaks(str(info.value).encode()) == []


# ---------------------------------------------------------------------------------------------------
# Burned-in text


def _ocr_words(array: np.ndarray) -> str:
    from medbeam.dicom.burned_in import _to_gray8

    gray = _to_gray8(array)
    image = Image.fromarray(gray).resize((gray.shape[1] * 2, gray.shape[0] * 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    import subprocess

    done = subprocess.run(["tesseract", "stdin", "stdout", "--psm", "11"], input=buffer.getvalue(), capture_output=True)
    return done.stdout.decode(errors="replace").upper()


def test_which_instances_are_checked():
    us, ct = corpus.ultrasound_with_burned_name(), corpus.ct_slices()[0]
    assert burned_in.needs_check(us, "flagged") and not burned_in.needs_check(ct, "flagged")
    assert burned_in.needs_check(ct, "all") and not burned_in.needs_check(us, "none")
    ct.BurnedInAnnotation = "YES"
    assert burned_in.needs_check(ct, "flagged")
    assert not burned_in.needs_check(corpus.structured_report(), "all")  # no pixels


def test_burned_in_name_is_found_and_filled(ocr):
    ds = corpus.ultrasound_with_burned_name()
    before = ds.pixel_array.copy()
    assert corpus.BURNED_NAME in _ocr_words(before)
    assert burned_in.redact(ds) >= 1
    after = ds.pixel_array
    assert corpus.BURNED_NAME not in _ocr_words(after)
    left, top, right, bottom = corpus.BURNED_BOX
    changed = np.argwhere(after != before)
    assert changed.size and changed[:, 0].min() >= top and changed[:, 0].max() < bottom
    assert changed[:, 1].min() >= left and changed[:, 1].max() < right
    assert (after[100:, :] == before[100:, :]).all()  # the "anatomy" is untouched


def test_lossless_compressed_pixels_stay_lossless(ocr):
    plain = corpus.ultrasound_with_burned_name()
    burned_in.redact(plain)
    rle = corpus.ultrasound_with_burned_name()
    rle.compress(uids.RLELossless, generate_instance_uid=False)
    burned_in.redact(rle)
    assert rle.file_meta.TransferSyntaxUID == uids.RLELossless
    again = pydicom.dcmread(io.BytesIO(_bytes(rle)))
    assert (again.pixel_array == plain.pixel_array).all()


def test_pixels_that_cannot_be_checked_are_refused(ocr):
    ds = corpus.ultrasound_with_burned_name()
    ds.PixelData = ds.PixelData[:1000]
    with pytest.raises(burned_in.RedactionError, match="cannot be decoded"):
        burned_in.redact(ds)


# ---------------------------------------------------------------------------------------------------
# The job


def _config(root: Path, out: str, key_env: str, **extra) -> dd.DeidentifyConfig:
    return dd.DeidentifyConfig(
        inputs=[str(root / "in")],
        key=KeySource(env=key_env),
        output_dir=str(root / out),
        duckdb_path=str(root / f"{out}.duckdb"),
        progress=False,
        **extra,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ocr):
    """The corpus de-identified three times: key A (with --mapping-out), key A again, key B; and the logs."""
    root = tmp_path_factory.mktemp("deid")
    corpus.build_corpus(root / "in")
    os.environ["MEDBEAM_TEST_KEY_A"] = KEY
    os.environ["MEDBEAM_TEST_KEY_B"] = OTHER_KEY
    handler = _Collect()
    logging.getLogger().addHandler(handler)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        first = dd.run(_config(root, "a", "MEDBEAM_TEST_KEY_A", mapping_out=str(root / "mapping")))
        again = dd.run(_config(root, "a2", "MEDBEAM_TEST_KEY_A"))
        other = dd.run(_config(root, "b", "MEDBEAM_TEST_KEY_B"))
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(previous)
        os.environ.pop("MEDBEAM_TEST_KEY_A", None)
        os.environ.pop("MEDBEAM_TEST_KEY_B", None)
    return root, (first, again, other), handler.text()


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
        except Exception:  # noqa: BLE001
            self.lines.append(str(record.msg))

    def text(self) -> str:
        return "\n".join(self.lines)


def _dicom_files(out: Path) -> dict[str, pydicom.Dataset]:
    return {str(p.relative_to(out)): pydicom.dcmread(p) for p in sorted(out.rglob("*.dcm"))}


def test_counts_reconcile_and_rejects_say_why(runs):
    root, (first, _, _), _ = runs
    assert (first.files_in, first.deidentified, first.rejected_files) == (9, 6, 3)
    assert first.files_in == first.deidentified + first.rejected_files
    assert first.pixels_redacted == 1 and first.burned_in_checked == 1  # the broken one is not counted
    with duckdb.connect(str(root / "a.duckdb"), read_only=True) as con:
        rejects = dict(con.execute("select regexp_extract(uri, '[^/]+$'), stage from rejects").fetchall())
        audit = con.execute("select modality, pixels_redacted, removed, uid_replaced from deid_audit").fetchall()
    assert rejects == {"corrupt.dcm": "parse", "no_sop_uid.dcm": "identity", "us_bad_pixels.dcm": "pixels"}
    assert sorted(m for m, *_ in audit) == ["CT", "CT", "CT", "RTSTRUCT", "SR", "US"]
    assert [r for m, r, *_ in audit if r] == [True] and all(removed > 0 and uid > 0 for _, _, removed, uid in audit)


def test_no_planted_value_in_any_output_byte_or_log(runs):
    root, _, logs = runs
    for out in ("a", "a2", "b", "a_parquet", "a2_parquet", "b_parquet"):
        for path in (root / out).rglob("*"):
            if path.is_file():
                assert _leaks(path.read_bytes()) == [], path
    for db in ("a.duckdb", "a2.duckdb", "b.duckdb"):
        with duckdb.connect(str(root / db), read_only=True) as con:
            for (table,) in con.execute("show tables").fetchall():
                text = str(con.execute(f"select * from {table}").fetchall())
                text = text.replace(str(root), "")  # source URIs name the input folder, which is ours
                assert _leaks(text.encode()) == [], (db, table)
    assert _leaks(logs.encode()) == [] and KEY not in logs and OTHER_KEY not in logs


def test_mapping_out_holds_the_originals_and_only_there(runs):
    root, _, _ = runs
    rows = tables.read_table(str(root / "mapping"), "deid_mapping").to_pylist()
    pairs = {(r["kind"], r["original"]): r["pseudonym"] for r in rows}
    keys = Keys(KEY.encode())
    assert pairs[("patient_id", corpus.PATIENT_ID)] == keys.pseudonym("patient_id", corpus.PATIENT_ID)
    assert pairs[("uid", corpus.CT_SOPS[0])] == keys.uid(corpus.CT_SOPS[0])
    assert ("accession_number", "ACC99887766") in pairs


def test_same_key_same_bytes_other_key_unlinkable(runs):
    root, _, _ = runs
    a, a2, b = (digests(root / d, "*.dcm") for d in ("a", "a2", "b"))
    assert a == a2 and len(a) == 6
    assert not set(a) & set(b)  # other UIDs, so other paths
    uid_values = lambda d: {  # noqa: E731
        str(e.value) for ds in _dicom_files(root / d).values() for e in ds.iterall() if e.VR == "UI"
    }
    shared = uid_values("a") & uid_values("b")
    assert all(u.startswith("1.2.840.10008.") for u in shared)  # only SOP classes and syntaxes in common
    ids = lambda d: {ds.PatientID for ds in _dicom_files(root / d).values()}  # noqa: E731
    assert not ids("a") & ids("b")


def test_references_resolve_between_output_files(runs):
    root, _, _ = runs
    datasets = list(_dicom_files(root / "a").values())
    by_modality: dict[str, list[Dataset]] = {}
    for ds in datasets:
        by_modality.setdefault(ds.Modality, []).append(ds)
    instances = {ds.SOPInstanceUID for ds in datasets}
    rt = by_modality["RTSTRUCT"][0]
    refs = {
        item.ReferencedSOPInstanceUID
        for item in rt.ReferencedFrameOfReferenceSequence[0]
        .RTReferencedStudySequence[0]
        .RTReferencedSeriesSequence[0]
        .ContourImageSequence
    }
    assert refs == {ds.SOPInstanceUID for ds in by_modality["CT"]} and refs <= instances
    assert {ds.FrameOfReferenceUID for ds in by_modality["CT"]} == {
        rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    }
    for path, ds in _dicom_files(root / "a").items():
        assert path == f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    us = by_modality["US"][0]
    assert us.BurnedInAnnotation == "NO"
    assert "113101" in {i.CodeValue for i in us.DeidentificationMethodCodeSequence}


def test_export_of_the_output_renders_the_same_images(runs, tmp_path):
    root, _, _ = runs

    def export(source: Path, name: str) -> dict[str, np.ndarray]:
        png = tmp_path / name
        config = dicom_export.ExportConfig(
            inputs=[str(source)],
            png_dir=str(png),
            parquet_dir=str(tmp_path / f"{name}-tables"),
            render=RenderOptions(window="none"),  # min-max would follow the filled box's value
            progress=False,
        )
        dicom_export.run(config)
        return {p.stem: np.asarray(Image.open(p)) for p in png.rglob("*.png")}

    staged = tmp_path / "inputs"  # the readable inputs only (the bad files would only add rejects)
    for name in ("ct", "us"):
        shutil.copytree(root / "in" / name, staged / name)
    before, after = export(staged, "before"), export(root / "a", "after")
    keys = Keys(KEY.encode())
    assert len(after) == 4
    for sop in corpus.CT_SOPS:
        assert (after[keys.uid(sop)] == before[sop]).all()
    original, redacted = before[corpus.US_SOP], after[keys.uid(corpus.US_SOP)]
    left, top, right, bottom = corpus.BURNED_BOX
    outside = np.ones(original.shape, bool)
    outside[top:bottom, left:right] = False
    assert (original[outside] == redacted[outside]).all() and (original != redacted).any()


def test_stow_into_orthanc_from_the_cli(orthanc, tmp_path, ocr):
    orthanc.clear()
    corpus.build_corpus(tmp_path / "in")
    env = {"DEID_KEY": KEY}
    args = [
        "dicom", "deidentify", "-i", str(tmp_path / "in"), "--dicomweb", orthanc.dicomweb_url,
        "--key-env", "DEID_KEY", "--duckdb", str(tmp_path / "t.duckdb"), "--retain", "dates-shifted",
        "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert "9 files in, 6 de-identified instances written, 3 rejected" in result.output
    assert "DICOMweb: 6 stored" in result.output and KEY not in result.output
    assert orthanc.instance_count() == 6
    keys = Keys(KEY.encode())
    for sop in [*corpus.CT_SOPS, corpus.RT_SOP, corpus.SR_SOP, corpus.US_SOP]:
        found = orthanc.rest("POST", "/tools/lookup", data=keys.uid(sop)).json()
        assert len(found) == 1 and found[0]["Type"] == "Instance"
        stored = orthanc.rest("GET", f"/instances/{found[0]['ID']}/file").content
        assert _leaks(stored) == []
    again = CliRunner().invoke(app, args, env=env)  # a rerun stores nothing twice
    assert again.exit_code == 0 and "0 stored, 6 already present" in again.output
    assert orthanc.instance_count() == 6


def test_cli_refuses_a_missing_or_short_key(tmp_path):
    corpus.build_corpus(tmp_path / "in", bad=False)
    base = ["dicom", "deidentify", "-i", str(tmp_path / "in"), "--output-dir", str(tmp_path / "o"),
            "--duckdb", str(tmp_path / "t.duckdb"), "--redact-burned-in", "none"]  # fmt: skip
    missing = CliRunner().invoke(app, [*base, "--key-env", "NOT_SET_ANYWHERE"], env={})
    assert missing.exit_code == 2 and "NOT_SET_ANYWHERE" in missing.output
    short = CliRunner().invoke(app, [*base, "--key-env", "K"], env={"K": "tiny-secret"})
    assert short.exit_code == 2 and "shorter than 16 bytes" in short.output and "tiny-secret" not in short.output
    neither = CliRunner().invoke(app, base)
    assert neither.exit_code == 2 and "--key-env" in neither.output


def test_jpeg_lossless_is_written_again_as_rle_lossless(ocr):
    from tests.helpers import dicom_file

    ds = pydicom.dcmread(dicom_file("JPEG-LL.dcm"))
    assert ds.file_meta.TransferSyntaxUID == uids.JPEGLosslessSV1
    before = ds.pixel_array.copy()
    ds.BurnedInAnnotation = "YES"
    boxes = burned_in.redact(ds)
    again = pydicom.dcmread(io.BytesIO(_bytes(ds)))
    assert again.file_meta.TransferSyntaxUID == (uids.RLELossless if boxes else uids.JPEGLosslessSV1)
    changed = again.pixel_array != before
    assert boxes == 0 or (changed.any() and changed.mean() < 0.5)  # only the filled boxes differ


def test_bare_datasets_get_a_transfer_syntax_before_decoding():
    from tests.helpers import dicom_file

    ds = pydicom.dcmread(dicom_file("OT-PAL-8-face.dcm"), force=True)
    assert "TransferSyntaxUID" not in getattr(ds, "file_meta", {})
    assert burned_in.ensure_transfer_syntax(ds) == uids.ImplicitVRLittleEndian
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns)


def test_a_run_without_ocr_is_refused_before_any_work(tmp_path, monkeypatch):
    corpus.build_corpus(tmp_path / "in", bad=False)
    monkeypatch.setenv("MEDBEAM_TEST_KEY_A", KEY)
    monkeypatch.setattr(burned_in, "tesseract_path", lambda: None)
    with pytest.raises(ValueError, match="needs OCR: Tesseract is not installed"):
        dd.run(_config(tmp_path, "out", "MEDBEAM_TEST_KEY_A"))
    assert not (tmp_path / "out").exists()
