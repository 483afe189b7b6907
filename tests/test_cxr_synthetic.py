"""medbeam.datasets.cxr_synthetic: the three chest X-ray layouts exactly (paths, headers, ids, gzip, tar members),
the bad cases where the manifest says they are, determinism, and the two labels drawn into the pixels.

Every writer runs with its small defaults (4 patients × 2 studies, 320 × 256 images): each test takes well
under a second.
"""

from __future__ import annotations

import csv
import datetime
import gzip
import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medbeam.datasets import cxr_synthetic as cxr
from medbeam.datasets.cxr_synthetic import (
    BAD_CASE_KINDS,
    CHEXPERT_LABELS,
    LABEL_VALUES,
    LABELS_2019,
    METADATA_COLUMNS,
    MIMIC_JPG_LABELS,
    TAR_MTIME,
    CxrSample,
)
from tests.helpers import digests

PATH_2019 = re.compile(r"^(train|valid)/p1\d{7}/s\d{2}/view\d+_(frontal|lateral|other)\.jpg$")
PATH_V2 = re.compile(r"^files/(p1\d)/(p1\d{7})/(s5\d{7})/([0-9a-f]{8}(?:-[0-9a-f]{8}){4})\.jpg$")
PATH_CHEXPERT = re.compile(r"^CheXpert-v1\.0-small/(train|valid)/patient\d{5}/study\d+/view\d+_(frontal|lateral)\.jpg$")


# ---------------------------------------------------------------------------------------------------
# Reading back


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV, gunzipped when its name ends .gz (checking the header is deterministic)."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        assert_plain_gzip(data)
        data = gzip.decompress(data)
    else:
        assert data[:2] != b"\x1f\x8b"
    reader = csv.reader(io.StringIO(data.decode()))
    header = next(reader)
    return header, [dict(zip(header, row, strict=True)) for row in reader]


def assert_plain_gzip(data: bytes) -> None:
    """gzip magic, no file name or other optional fields, mtime 0."""
    assert data[:3] == b"\x1f\x8b\x08"
    assert data[3] == 0, "gzip header flags (FNAME etc.) must be empty"
    assert data[4:8] == b"\0\0\0\0", "gzip mtime must be 0"


def tar_members(path: Path) -> list[tarfile.TarInfo]:
    if path.name.endswith(".gz"):
        assert_plain_gzip(path.read_bytes()[:10])
    with tarfile.open(path) as tar:
        return tar.getmembers()


def tar_bytes(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


def assert_deterministic_members(members: list[tarfile.TarInfo]) -> None:
    names = [m.name for m in members]
    assert names == sorted(names)
    for member in members:
        assert member.isreg()
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (TAR_MTIME, 0, 0, "", "")
        assert member.mode == 0o644


def assert_jpeg(data: bytes, size: tuple[int, int]) -> None:
    """A complete 8-bit grayscale JPEG of (height, width) `size`."""
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    image = Image.open(io.BytesIO(data))
    image.load()
    assert (image.format, image.mode, image.size) == ("JPEG", "L", (size[1], size[0]))


def label_cells(rows: list[dict[str, str]], names: tuple[str, ...]) -> set[str]:
    return {row[name] for row in rows for name in names}


def assert_truncated(data: bytes) -> None:
    assert data[:2] == b"\xff\xd8" and data[-2:] != b"\xff\xd9"
    with pytest.raises(OSError):
        Image.open(io.BytesIO(data)).load()


# ---------------------------------------------------------------------------------------------------
# MIMIC-CXR 2019


def test_2019_layout(tmp_path: Path) -> None:
    sample = cxr.write_mimic_cxr_2019(tmp_path)
    assert sample.layout == "mimic-cxr-2019"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "train.csv.gz",
        "train_p10.tar.gz",
        "train_p11.tar.gz",
        "valid.csv.gz",
        "valid.tar.gz",
    ]
    assert [t.name for t in sample.tars] == ["train_p10.tar.gz", "train_p11.tar.gz", "valid.tar.gz"]
    members: dict[str, Path] = {}
    for tar in sample.tars:
        infos = tar_members(tar)
        assert_deterministic_members(infos)
        prefix = "valid/p" if tar.name == "valid.tar.gz" else "train/" + tar.name.split("_")[1][:3]
        for info in infos:
            assert PATH_2019.match(info.name), info.name
            assert info.name.startswith(prefix)
            members[info.name] = tar
    assert set(members) == {image.path for image in sample.images}

    rows = []
    for split in ("train", "valid"):
        header, split_rows = read_csv(sample.csvs[split])
        assert sample.csvs[split] == tmp_path / f"{split}.csv.gz"
        assert header == ["path", "view", *LABELS_2019]
        assert all(row["path"].startswith(split + "/") for row in split_rows)
        rows += split_rows
    assert [row["path"] for row in rows] == [image.path for image in sample.images]
    for row in rows:
        image = sample.image(row["path"])
        assert row["view"] == image.view == row["path"].rsplit("_", 1)[1].removesuffix(".jpg")
        assert {name: row[name] for name in LABELS_2019} == image.cells
        assert image.tar == members[image.path]
        assert_jpeg(tar_bytes(image.tar, image.path), cxr.DEFAULT_SIZE)
        assert sample.read(image) == tar_bytes(image.tar, image.path)
    assert label_cells(rows, LABELS_2019) == set(LABEL_VALUES)
    assert {row["view"] for row in rows} == {"frontal", "lateral", "other"}
    assert {image.split for image in sample.images} == {"train", "valid"}
    assert any(image.cardiomegaly for image in sample.images) and any(image.effusion for image in sample.images)
    for image in sample.images:  # the pixels follow the labels
        assert image.cardiomegaly == (image.labels["Cardiomegaly"] == 1.0)
        assert image.effusion == (image.labels["Pleural Effusion"] == 1.0)
        assert re.fullmatch(r"p1\d{7}", image.patient) and re.fullmatch(r"s\d{2}", image.study)


def test_2019_uncompressed_and_one_tar(tmp_path: Path) -> None:
    sample = cxr.write_mimic_cxr_2019(tmp_path, compress=False, train_tars=1, patients=2, studies_per_patient=1)
    assert [t.name for t in sample.tars] == ["train_p10.tar", "valid.tar"]
    for tar in sample.tars:
        assert tar.read_bytes()[:2] != b"\x1f\x8b"
        with tarfile.open(tar, "r:") as archive:
            assert archive.getnames()
    assert {image.split for image in sample.images} == {"train", "valid"}


def test_2019_bad_cases(tmp_path: Path) -> None:
    clean = cxr.write_mimic_cxr_2019(tmp_path / "clean")
    sample = cxr.write_mimic_cxr_2019(tmp_path / "bad", bad_cases=True)
    assert [image.path for image in sample.images] == [image.path for image in clean.images]
    assert all(sample.read(a) == clean.read(b) for a, b in zip(sample.images, clean.images, strict=True))
    assert sorted({case.kind for case in sample.bad_cases}) == sorted(BAD_CASE_KINDS)

    members: dict[str, list[Path]] = {}
    for tar in sample.tars:
        assert_deterministic_members(tar_members(tar))
        for info in tar_members(tar):
            members.setdefault(info.name, []).append(tar)
    _, rows = read_csv(sample.csvs["train"])
    by_path = {row["path"]: row for row in rows}
    good = {image.path for image in sample.images}

    (unlabelled,) = sample.bad("unlabelled_image")
    assert PATH_2019.match(unlabelled.path) and unlabelled.path in members and unlabelled.path not in by_path
    (missing,) = sample.bad("missing_image")
    assert PATH_2019.match(missing.path) and missing.path in by_path and missing.path not in members
    assert missing.location == sample.csvs["train"]
    (duplicate,) = sample.bad("duplicate_image")
    assert duplicate.path in good
    assert [t.name for t in members[duplicate.path]] == ["train_p10.tar.gz", "train_p11.tar.gz"]
    first, second = members[duplicate.path]
    assert tar_bytes(first, duplicate.path) == tar_bytes(second, duplicate.path)
    (not_jpeg,) = sample.bad("not_jpeg")
    assert tar_bytes(not_jpeg.location, not_jpeg.path)[:8] == b"\x89PNG\r\n\x1a\n" and not_jpeg.path in by_path
    (truncated,) = sample.bad("truncated_jpeg")
    assert_truncated(tar_bytes(truncated.location, truncated.path))
    assert truncated.path in by_path
    assert sorted(case.path for case in sample.bad("unknown_path")) == ["train/README.txt", "train/pX/sY/img.jpg"]
    assert all(case.path in members and not PATH_2019.match(case.path) for case in sample.bad("unknown_path"))
    invalid = sample.bad("invalid_label")
    assert [case.value for case in invalid] == ["2.0", "yes"]
    for case in invalid:
        assert case.image is not None and case.column in LABELS_2019
        assert by_path[case.path][case.column] == case.value
        assert case.image.tar is not None
        assert_jpeg(tar_bytes(case.image.tar, case.path), cxr.DEFAULT_SIZE)  # only the label cell is wrong
    # every row but the invalid ones holds allowed values only
    valid_rows = [row for row in rows if row["path"] not in {case.path for case in invalid}]
    assert label_cells(valid_rows, LABELS_2019) <= set(LABEL_VALUES)
    # the train rows are exactly the good train images' and the bad cases' that have rows
    with_rows = {"missing_image", "not_jpeg", "truncated_jpeg", "invalid_label"}
    bad_rows = {case.path for case in sample.bad_cases if case.kind in with_rows}
    assert set(by_path) == {image.path for image in sample.split("train")} | bad_rows


def test_bad_cases_opt_in_one_by_one(tmp_path: Path) -> None:
    sample = cxr.write_mimic_cxr_2019(tmp_path, bad_cases={"not_jpeg"})
    assert [case.kind for case in sample.bad_cases] == ["not_jpeg"]
    with pytest.raises(ValueError, match="unknown bad cases"):
        cxr.write_chexpert(tmp_path, bad_cases={"corrupt"})


def test_2019_one_train_tar_duplicate_in_the_same_tar(tmp_path: Path) -> None:
    sample = cxr.write_mimic_cxr_2019(tmp_path, train_tars=1, bad_cases={"duplicate_image"})
    (duplicate,) = sample.bad("duplicate_image")
    names = [m.name for m in tar_members(tmp_path / "train_p10.tar.gz")]
    assert names.count(duplicate.path) == 2


# ---------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG v2


def test_mimic_jpg_layout(tmp_path: Path) -> None:
    sample = cxr.write_mimic_cxr_jpg(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "files",
        "mimic-cxr-2.0.0-chexpert.csv.gz",
        "mimic-cxr-2.0.0-metadata.csv.gz",
        "mimic-cxr-2.0.0-negbio.csv.gz",
        "mimic-cxr-2.0.0-split.csv.gz",
    ]
    assert sample.data_root == tmp_path / "files" and sample.tars == ()
    files = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "files").rglob("*") if p.is_file())
    assert files == [image.path for image in sample.images]
    for image in sample.images:
        top, patient, study, dicom_id = PATH_V2.match(image.path).groups()
        assert top == patient[:3] and (patient, study, dicom_id) == (image.patient, image.study, image.dicom_id)
        assert_jpeg(image.file.read_bytes(), cxr.DEFAULT_SIZE)

    header, metadata = read_csv(sample.csvs["metadata"])
    assert header == list(METADATA_COLUMNS)
    assert header == (
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
        "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
        "PatientOrientationCodeSequence_CodeMeaning"
    ).split(",")
    assert sorted(row["dicom_id"] for row in metadata) == sorted(image.dicom_id for image in sample.images)
    meanings = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}
    for row in metadata:
        image = next(i for i in sample.images if i.dicom_id == row["dicom_id"])
        assert row == dict(image.metadata)
        assert (row["subject_id"], row["study_id"]) == (image.patient[1:], image.study[1:])
        assert (int(row["Rows"]), int(row["Columns"])) == cxr.DEFAULT_SIZE
        assert row["ViewPosition"] in ("PA", "AP", "LATERAL", "LL", "")
        assert row["ViewCodeSequence_CodeMeaning"] in meanings.values()
        if row["ViewPosition"]:
            assert row["ViewCodeSequence_CodeMeaning"] == meanings[row["ViewPosition"]]
        assert row["PatientOrientationCodeSequence_CodeMeaning"] in ("Erect", "Recumbent")
        assert row["PerformedProcedureStepDescription"] in ("CHEST (PA AND LAT)", "CHEST (PORTABLE AP)")
        assert row["ProcedureCodeSequence_CodeMeaning"] == row["PerformedProcedureStepDescription"]
        date = datetime.datetime.strptime(row["StudyDate"], "%Y%m%d")
        assert 2100 <= date.year <= 2200
        assert re.fullmatch(r"\d{1,6}\.\d{1,3}", row["StudyTime"])
        datetime.datetime.strptime(f"{int(float(row['StudyTime'])):06}", "%H%M%S")
    assert {row["ViewPosition"] for row in metadata} == {"PA", "AP", "LATERAL", "LL", ""}
    assert any(len(row["StudyTime"].split(".")[0]) < 6 for row in metadata)  # before 10:00, as a float writes it

    studies = {(image.patient[1:], image.study[1:]) for image in sample.images}
    for role in ("chexpert", "negbio"):
        header, rows = read_csv(sample.csvs[role])
        assert header == ["subject_id", "study_id", *MIMIC_JPG_LABELS]
        assert [(r["subject_id"], r["study_id"]) for r in rows] == sorted(studies, key=lambda s: (int(s[0]), int(s[1])))
        assert label_cells(rows, MIMIC_JPG_LABELS) == set(LABEL_VALUES)
        for row in rows:
            for image in (i for i in sample.images if i.study[1:] == row["study_id"]):
                labels = image.labels if role == "chexpert" else image.negbio
                assert {name: row[name] for name in MIMIC_JPG_LABELS} == {
                    name: cxr.format_label(value) for name, value in labels.items()
                }
                assert labels["Cardiomegaly"] == image.labels["Cardiomegaly"]  # labelers agree on the drawn ones
                assert labels["Pleural Effusion"] == image.labels["Pleural Effusion"]
    assert MIMIC_JPG_LABELS == tuple(sorted(MIMIC_JPG_LABELS)) and "Lung Opacity" in MIMIC_JPG_LABELS

    header, split_rows = read_csv(sample.csvs["split"])
    assert header == ["dicom_id", "study_id", "subject_id", "split"]
    assert {row["split"] for row in split_rows} == {"train", "validate", "test"}
    by_subject: dict[str, set[str]] = {}
    for row in split_rows:
        by_subject.setdefault(row["subject_id"], set()).add(row["split"])
        image = next(i for i in sample.images if i.dicom_id == row["dicom_id"])
        assert (row["study_id"], row["subject_id"], row["split"]) == (image.study[1:], image.patient[1:], image.split)
    assert all(len(splits) == 1 for splits in by_subject.values())


@pytest.mark.parametrize("keep_loose", [False, True])
def test_mimic_jpg_as_tars(tmp_path: Path, keep_loose: bool) -> None:
    loose = cxr.write_mimic_cxr_jpg(tmp_path / "loose", bad_cases=True)
    sample = cxr.write_mimic_cxr_jpg(tmp_path / "tars", as_tars=True, keep_loose=keep_loose, bad_cases=True)
    assert (tmp_path / "tars" / "files").exists() == keep_loose
    names: list[str] = []
    for tar in sample.tars:
        assert re.fullmatch(r"files_p1\d\.tar\.gz", tar.name)
        infos = tar_members(tar)
        assert_deterministic_members(infos)
        assert all(info.name.startswith(f"files/{tar.name[6:9]}/") or info.name == "files/README.txt" for info in infos)
        names += [info.name for info in infos]
    loose_files = sorted(str(p.relative_to(tmp_path / "loose")) for p in (tmp_path / "loose" / "files").rglob("*"))
    assert sorted(names) == [name for name in loose_files if "." in name.rsplit("/", 1)[1]]
    for a, b in zip(sample.images, loose.images, strict=True):
        assert a.path == b.path and a.tar is not None and (a.file is not None) == keep_loose
        assert sample.read(a) == tar_bytes(a.tar, a.path) == loose.read(b)
    for role in sample.csvs:
        assert sample.csvs[role].read_bytes() == loose.csvs[role].read_bytes()


def test_mimic_jpg_bad_cases(tmp_path: Path) -> None:
    clean = cxr.write_mimic_cxr_jpg(tmp_path / "clean")
    sample = cxr.write_mimic_cxr_jpg(tmp_path / "bad", bad_cases=True)
    root = tmp_path / "bad"
    assert [i.path for i in sample.images] == [i.path for i in clean.images]
    assert all(sample.read(a) == clean.read(b) for a, b in zip(sample.images, clean.images, strict=True))
    _, metadata = read_csv(sample.csvs["metadata"])
    _, splits = read_csv(sample.csvs["split"])
    _, chexpert = read_csv(sample.csvs["chexpert"])
    dicoms = {row["dicom_id"] for row in metadata}
    assert dicoms == {row["dicom_id"] for row in splits}
    labelled = {row["study_id"]: row for row in chexpert}

    (unlabelled,) = sample.bad("unlabelled_image")
    image = unlabelled.image
    assert PATH_V2.match(unlabelled.path) and (root / unlabelled.path).is_file()
    assert image.dicom_id not in dicoms and image.study[1:] not in labelled
    (missing,) = sample.bad("missing_image")
    assert PATH_V2.match(missing.path) and not (root / missing.path).exists()
    assert missing.image.dicom_id in dicoms and missing.image.study[1:] in labelled
    (duplicate,) = sample.bad("duplicate_image")
    copies = sorted(root.rglob(f"{duplicate.image.dicom_id}.jpg"))
    assert len(copies) == 2 and copies[0].read_bytes() == copies[1].read_bytes()
    assert duplicate.path in {str(c.relative_to(root)) for c in copies}
    assert [row["dicom_id"] for row in metadata].count(duplicate.image.dicom_id) == 1
    (not_jpeg,) = sample.bad("not_jpeg")
    assert (root / not_jpeg.path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not_jpeg.image.dicom_id in dicoms
    (truncated,) = sample.bad("truncated_jpeg")
    assert_truncated((root / truncated.path).read_bytes())
    assert truncated.image.dicom_id in dicoms
    assert sorted(c.path for c in sample.bad("unknown_path")) == ["files/README.txt", "files/p10/pX/sY/img.jpg"]
    assert all((root / c.path).is_file() and c.location == root / c.path for c in sample.bad("unknown_path"))
    invalid = sample.bad("invalid_label")
    assert [case.value for case in invalid] == ["2.0", "yes"]
    for case in invalid:
        assert labelled[case.image.study[1:]][case.column] == case.value and case.location == sample.csvs["chexpert"]
    bad_studies = {c.image.study[1:] for c in invalid}
    assert label_cells([r for s, r in labelled.items() if s not in bad_studies], MIMIC_JPG_LABELS) <= set(LABEL_VALUES)


# ---------------------------------------------------------------------------------------------------
# CheXpert


def test_chexpert_layout(tmp_path: Path) -> None:
    sample = cxr.write_chexpert(tmp_path)
    folder = tmp_path / "CheXpert-v1.0-small"
    assert [p.name for p in tmp_path.iterdir()] == ["CheXpert-v1.0-small"]
    assert sorted(p.name for p in folder.iterdir()) == ["train", "train.csv", "valid", "valid.csv"]
    assert sample.data_root == folder and sample.tars == ()
    assert list(CHEXPERT_LABELS) == [
        "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
        "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
        "Fracture", "Support Devices",
    ]  # fmt: skip
    rows = []
    for split in ("train", "valid"):
        header, split_rows = read_csv(folder / f"{split}.csv")
        assert header == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]
        assert all(row["Path"].startswith(f"CheXpert-v1.0-small/{split}/") for row in split_rows)
        rows += split_rows
    files = sorted(str(p.relative_to(tmp_path)) for p in folder.rglob("*.jpg"))
    assert sorted(row["Path"] for row in rows) == files == [image.path for image in sample.images]
    for row in rows:
        image = sample.image(row["Path"])
        assert PATH_CHEXPERT.match(row["Path"])
        assert row["Sex"] in ("Male", "Female") and 18 <= int(row["Age"]) <= 90
        assert row["Frontal/Lateral"] == image.view == row["Path"].rsplit("_", 1)[1][:-4].title()
        assert row["AP/PA"] in (("AP", "PA") if row["Frontal/Lateral"] == "Frontal" else ("",))
        assert {name: row[name] for name in CHEXPERT_LABELS} == image.cells
        assert_jpeg((tmp_path / row["Path"]).read_bytes(), cxr.DEFAULT_SIZE)
    assert label_cells([r for r in rows if "/train/" in r["Path"]], CHEXPERT_LABELS) == set(LABEL_VALUES)
    assert label_cells([r for r in rows if "/valid/" in r["Path"]], CHEXPERT_LABELS) <= {"0.0", "1.0"}
    train_patients = {i.patient for i in sample.images if i.split == "train"}
    valid_patients = {i.patient for i in sample.images if i.split == "valid"}
    assert valid_patients and max(train_patients) < min(valid_patients)  # numbered after train, as released


def test_chexpert_full_folder(tmp_path: Path) -> None:
    sample = cxr.write_chexpert(tmp_path, small=False, patients=1, studies_per_patient=1)
    assert sample.data_root == tmp_path / "CheXpert-v1.0"
    assert all(image.path.startswith("CheXpert-v1.0/train/patient00001/study1/") for image in sample.images)


def test_chexpert_bad_cases(tmp_path: Path) -> None:
    clean = cxr.write_chexpert(tmp_path / "clean")
    sample = cxr.write_chexpert(tmp_path / "bad", bad_cases=True)
    root = tmp_path / "bad"
    assert [i.path for i in sample.images] == [i.path for i in clean.images]
    assert all(sample.read(a) == clean.read(b) for a, b in zip(sample.images, clean.images, strict=True))
    _, rows = read_csv(sample.csvs["train"])
    paths = [row["Path"] for row in rows]

    (unlabelled,) = sample.bad("unlabelled_image")
    assert PATH_CHEXPERT.match(unlabelled.path) and (root / unlabelled.path).is_file() and unlabelled.path not in paths
    (missing,) = sample.bad("missing_image")
    assert missing.path in paths and not (root / missing.path).exists()
    (duplicate,) = sample.bad("duplicate_image")
    assert paths.count(duplicate.path) == 2 and duplicate.path in {i.path for i in sample.images}
    (not_jpeg,) = sample.bad("not_jpeg")
    assert (root / not_jpeg.path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not_jpeg.path in paths
    (truncated,) = sample.bad("truncated_jpeg")
    assert_truncated((root / truncated.path).read_bytes())
    assert truncated.path in paths
    assert sorted(c.path for c in sample.bad("unknown_path")) == [
        "CheXpert-v1.0-small/train/README.txt",
        "CheXpert-v1.0-small/train/patientX/studyY/img.jpg",
    ]
    assert all((root / c.path).is_file() and c.path not in paths for c in sample.bad("unknown_path"))
    invalid = sample.bad("invalid_label")
    assert [case.value for case in invalid] == ["2.0", "yes"]
    by_path = {row["Path"]: row for row in rows}
    for case in invalid:
        assert by_path[case.path][case.column] == case.value and (root / case.path).is_file()
    assert label_cells([r for r in rows if r["Path"] not in {c.path for c in invalid}], CHEXPERT_LABELS) <= set(
        LABEL_VALUES
    )


# ---------------------------------------------------------------------------------------------------
# Determinism, images


@pytest.mark.parametrize("writer", [cxr.write_mimic_cxr_2019, cxr.write_mimic_cxr_jpg, cxr.write_chexpert])
def test_same_seed_same_bytes(tmp_path: Path, writer) -> None:
    a: CxrSample = writer(tmp_path / "a", seed=7, bad_cases=True)
    b: CxrSample = writer(tmp_path / "b", seed=7, bad_cases=True, workers=3)
    c: CxrSample = writer(tmp_path / "c", seed=8, bad_cases=True)
    assert digests(a.root) == digests(b.root)
    assert [i.path for i in a.images] == [i.path for i in b.images]
    assert digests(a.root) != digests(c.root)


def test_mimic_jpg_tars_same_seed_same_bytes(tmp_path: Path) -> None:
    a = cxr.write_mimic_cxr_jpg(tmp_path / "a", as_tars=True, bad_cases=True)
    b = cxr.write_mimic_cxr_jpg(tmp_path / "b", as_tars=True, bad_cases=True, workers=2)
    assert digests(a.root) == digests(b.root)


def test_image_size_and_quality(tmp_path: Path) -> None:
    sample = cxr.write_chexpert(tmp_path, image_size=(200, 160), quality=60, patients=1, studies_per_patient=1)
    image = sample.images[0]
    assert_jpeg(sample.read(image), (200, 160))
    full = cxr.encode_jpeg(cxr.chest_xray(200, 160, cardiomegaly=False, effusion=False, rng=np.random.default_rng(0)))
    assert len(sample.read(image)) < len(full)  # quality 60 is smaller than the default 95


def _bright_fraction(pixels: np.ndarray, threshold: int = 178) -> float:
    return float((pixels > threshold).mean())


@pytest.mark.parametrize("projection", ["frontal", "lateral"])
def test_cardiomegaly_is_a_larger_bright_heart(projection: str) -> None:
    for seed in range(5):
        normal = cxr.chest_xray(
            320, 256, cardiomegaly=False, effusion=False, rng=np.random.default_rng(seed), projection=projection
        )
        enlarged = cxr.chest_xray(
            320, 256, cardiomegaly=True, effusion=False, rng=np.random.default_rng(seed), projection=projection
        )
        assert normal.dtype == np.uint8 and normal.shape == (320, 256)
        assert _bright_fraction(enlarged) > 1.8 * _bright_fraction(normal) > 0


def test_effusion_is_a_flat_bright_level_at_a_lung_base() -> None:
    for seed in range(5):
        dry = cxr.chest_xray(320, 256, cardiomegaly=False, effusion=False, rng=np.random.default_rng(seed))
        wet = cxr.chest_xray(320, 256, cardiomegaly=False, effusion=True, rng=np.random.default_rng(seed))
        rows = slice(int(0.62 * 320), int(0.70 * 320))
        sides = [slice(int(0.24 * 256), int(0.36 * 256)), slice(int(0.64 * 256), int(0.76 * 256))]
        lift = max(wet[rows, side].mean() - dry[rows, side].mean() for side in sides)
        assert lift > 40
        # a flat level: along the fluid's side, the rows above/below the level differ by about as much everywhere
        side = max(sides, key=lambda s: wet[rows, s].mean() - dry[rows, s].mean())
        profile = wet[:, side].astype(float).mean(axis=1) - dry[:, side].astype(float).mean(axis=1)
        level = int(np.argmax(profile > 30))
        columns = wet[level - 6 : level + 6, side].astype(float)
        steps = columns[-3:].mean(axis=0) - columns[:3].mean(axis=0)
        assert steps.min() > 15  # every column crosses the level at the same row


def test_large_image_jpeg_size() -> None:
    """The benchmark's size: ~3000 × 2500 at quality 95 comes out 1-2 MB."""
    pixels = cxr.chest_xray(3000, 2500, cardiomegaly=True, effusion=True, rng=np.random.default_rng(0))
    assert pixels.shape == (3000, 2500)
    assert 1_000_000 < len(cxr.encode_jpeg(pixels, 95)) < 2_000_000
