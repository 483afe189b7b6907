"""Chest X-ray datasets as published: what an image's path says, what a label row says, in Google's encoding.

Three layouts (`LAYOUTS`), each from the dataset's own documentation:
- ``mimic-cxr-2019``: the early MIMIC-CXR release Google's prepare_mimic_cxr.py read: tar members
  ``(train|valid)/p<patient>/s<study>/view<n>_(frontal|lateral|other).jpg``; ``train.csv.gz`` /
  ``valid.csv.gz`` with ``path, view`` and the 14 labels. Joined on the path.
- ``mimic-cxr-jpg`` (v2.0.0 / v2.1.0): ``files/p10/p10000032/s50414267/<dicom_id>.jpg``, plus the metadata,
  split and chexpert (or negbio) CSVs. Images join the metadata and split rows on dicom_id; the labels are one
  row per study, fanned out to the study's images.
- ``chexpert`` (CheXpert-v1.0 and -small): ``train.csv`` / ``valid.csv`` with ``Path, Sex, Age,
  Frontal/Lateral, AP/PA`` and the 14 labels. Joined on the path.

Labels are mapped by name, never by position (v2's columns are alphabetical and say "Lung Opacity"; so does
CheXpert's). One schema covers all layouts: "Lung Opacity" fills ``airspace_opacity``, the 2019 name.
Label cells: empty → 0 not mentioned, 0.0 → 1 negative, -1.0 → 2 uncertain, 1.0 → 3 positive (Google's
encoding); anything else is a LabelValueError, which the pipeline turns into a reject of that row.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

MIMIC_2019 = "mimic-cxr-2019"
MIMIC_JPG = "mimic-cxr-jpg"
CHEXPERT = "chexpert"
LAYOUTS = (MIMIC_2019, MIMIC_JPG, CHEXPERT)

#: The 14 CheXpert labels in the 2019 CSV's order, and their columns (snake case) in records and tables.
LABEL_NAMES = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Airspace Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)  # fmt: skip
LABEL_COLUMNS = tuple(name.lower().replace(" ", "_") for name in LABEL_NAMES)
_LABEL_ALIASES = {"lung opacity": "airspace_opacity"}
_BY_NAME = {name.lower(): column for name, column in zip(LABEL_NAMES, LABEL_COLUMNS, strict=True)} | _LABEL_ALIASES

NOT_MENTIONED, NEGATIVE, UNCERTAIN, POSITIVE = 0, 1, 2, 3
_LABEL_VALUES = {"": NOT_MENTIONED, "0": NEGATIVE, "-1": UNCERTAIN, "1": POSITIVE}

#: Record fields `view` and `dataset`, as Google's records had them (other views kept, as 2).
FRONTAL, LATERAL, OTHER = 0, 1, 2
VIEW_NAMES = ("frontal", "lateral", "other")
VIEWS = {name: index for index, name in enumerate(VIEW_NAMES)}
DATASETS = {"train": 0, "valid": 1, "validate": 1, "test": 2}

#: ViewPosition values (DICOM, as MIMIC-CXR-JPG's metadata has them) and what they are.
_FRONTAL_POSITIONS = {"PA", "AP", "AP AXIAL", "PA RLD", "PA LLD", "AP RLD", "AP LLD"}


class CxrError(ValueError):
    """Input that does not fit the layout; the message says how (the pipeline makes it a reject)."""


class UnknownPathError(CxrError):
    stage = "path"


class LabelValueError(CxrError):
    stage = "labels"


def label_column(header: str) -> str | None:
    """A CSV header's label column (`Lung Opacity` → `airspace_opacity`), or None if it is not a label."""
    return _BY_NAME.get(header.strip().lower())


def encode_label(text: str | None) -> int:
    """A label cell in Google's encoding: '' → 0, 0.0 → 1, -1.0 → 2, 1.0 → 3 (LabelValueError otherwise)."""
    value = (text or "").strip()
    if value:
        try:
            number = float(value)
        except ValueError:
            raise LabelValueError(f"label value {text!r} is not one of '', 0.0, -1.0, 1.0") from None
        value = str(int(number)) if number in (0.0, 1.0, -1.0) else value
    try:
        return _LABEL_VALUES[value]
    except KeyError:
        raise LabelValueError(f"label value {text!r} is not one of '', 0.0, -1.0, 1.0") from None


# ---------------------------------------------------------------------------------------------------
# Image paths


@dataclass(frozen=True)
class ImageKey:
    """What an image's path says. `key` joins it to its label row (2019, CheXpert: the layout's own path;
    v2: the dicom_id); `relpath` places its resized JPG; fields the path does not carry are None."""

    key: str
    relpath: str
    patient: int
    study: int
    image: int | None = None
    view: int | None = None
    dataset: int | None = None
    dicom_id: str | None = None


_2019_PATH = re.compile(r"(?:^|[/!])((train|valid)/p(\d+)/s(\d+)/view(\d+)_(frontal|lateral|other)\.jpg)$")
_JPG_PATH = re.compile(
    r"(?:^|[/!])(files/p\d\d/p(\d{8})/s(\d{8})/([0-9a-f]{8}(?:-[0-9a-f]{8}){4})\.jpg)$"
)
_CHEXPERT_PATH = re.compile(
    r"(?:^|[/!])((CheXpert-v1\.0(?:-small)?)/(train|valid|test)/patient(\d+)/study(\d+)/view(\d+)_(frontal|lateral)\.jpg)$"
)
_EXPECTED = {
    MIMIC_2019: "(train|valid)/p<patient>/s<study>/view<n>_(frontal|lateral|other).jpg",
    MIMIC_JPG: "files/pNN/p<subject 8 digits>/s<study 8 digits>/<dicom_id>.jpg",
    CHEXPERT: "CheXpert-v1.0[-small]/(train|valid)/patient<n>/study<n>/view<n>_(frontal|lateral).jpg",
}


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout


def parse_image_path(layout: str, path: str) -> ImageKey:
    """The ids an image's path (a tar member, a file path or URI) carries; UnknownPathError otherwise."""
    text = path.replace("\\", "/")
    if layout == MIMIC_2019:
        m = _2019_PATH.search(text)
        if m:
            rel, split, patient, study, image, view = m.groups()
            return ImageKey(rel, rel, int(patient), int(study), int(image), VIEWS[view], DATASETS[split])
    elif layout == MIMIC_JPG:
        m = _JPG_PATH.search(text)
        if m:
            rel, subject, study, dicom_id = m.groups()
            if rel.split("/")[1] != f"p{subject[:2]}":
                raise UnknownPathError(f"{path}: folder {rel.split('/')[1]} is not p + the subject's first two digits")
            return ImageKey(dicom_id, rel, int(subject), int(study), dicom_id=dicom_id)
    elif layout == CHEXPERT:
        m = _CHEXPERT_PATH.search(text)
        if m:
            rel, _, split, patient, study, image, view = m.groups()
            return ImageKey(rel, rel, int(patient), int(study), int(image), VIEWS[view], DATASETS[split])
    else:
        check_layout(layout)
    raise UnknownPathError(f"{path}: not an image path of layout {layout} ({_EXPECTED[layout]})")


# ---------------------------------------------------------------------------------------------------
# Label files


def read_csv(data: bytes) -> Iterator[dict[str, str]]:
    """The rows of a CSV file's bytes (gzip-compressed or not), as {header: cell}."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    text = data.decode("utf-8-sig")
    yield from csv.DictReader(io.StringIO(text, newline=""))


@dataclass(frozen=True)
class LabelRow:
    """One label row: its join key, its labels (LABEL_COLUMNS → code) and the layout's other columns."""

    key: str
    labels: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)


def _labels(row: dict[str, str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for header, cell in row.items():
        column = label_column(header or "")
        if column is not None:
            try:
                found[column] = encode_label(cell)
            except LabelValueError as exc:
                raise LabelValueError(f"{header}: {exc}") from None
    missing = [c for c in LABEL_COLUMNS if c not in found]
    if missing:
        raise LabelValueError(f"no column for label(s) {', '.join(missing)}")
    return {column: found[column] for column in LABEL_COLUMNS}


def label_columns_missing(headers: list[str]) -> list[str]:
    """The label columns a CSV header lacks (checked once per file: a wrong file fails the run early)."""
    have = {label_column(h) for h in headers}
    return [c for c in LABEL_COLUMNS if c not in have]


def parse_label_row(layout: str, row: dict[str, str]) -> LabelRow:
    """A row of the layout's label CSV (2019: train/valid.csv.gz; v2: chexpert/negbio; CheXpert: train/
    valid.csv). LabelValueError or UnknownPathError for a row that does not fit."""
    if layout == MIMIC_JPG:
        subject, study = _int(row, "subject_id"), _int(row, "study_id")
        return LabelRow(study_key(subject, study), _labels(row), {"subject_id": subject, "study_id": study})
    if layout == MIMIC_2019:
        image = parse_image_path(layout, _cell(row, "path"))
        return LabelRow(image.key, _labels(row), {"csv_view": (row.get("view") or "").strip() or None})
    if layout == CHEXPERT:
        image = parse_image_path(layout, _cell(row, "Path"))
        age = (row.get("Age") or "").strip()
        extra = {
            "sex": (row.get("Sex") or "").strip() or None,
            "age": int(age) if age.isdigit() else None,
            "frontal_lateral": (row.get("Frontal/Lateral") or "").strip() or None,
            "ap_pa": (row.get("AP/PA") or "").strip() or None,
        }
        return LabelRow(image.key, _labels(row), extra)
    check_layout(layout)
    raise AssertionError(layout)


def study_key(subject: int, study: int) -> str:
    return f"p{subject:08d}/s{study:08d}"


def _cell(row: dict[str, str], name: str) -> str:
    value = (row.get(name) or "").strip()
    if not value:
        raise LabelValueError(f"no {name}")
    return value


def _int(row: dict[str, str], name: str) -> int:
    value = _cell(row, name)
    try:
        return int(value)
    except ValueError:
        raise LabelValueError(f"{name} {value!r} is not an integer") from None


# ---------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG metadata and split


@dataclass(frozen=True)
class ImageMetadata:
    """One row of mimic-cxr-2.0.0-metadata.csv.gz, typed (dates as dates, Rows/Columns as integers)."""

    dicom_id: str
    subject_id: int
    study_id: int
    view: int
    columns: dict[str, Any]


METADATA_COLUMNS = (
    ("PerformedProcedureStepDescription", "string"),
    ("ViewPosition", "string"),
    ("Rows", "int"),
    ("Columns", "int"),
    ("StudyDate", "date"),
    ("StudyTime", "time"),
    ("ProcedureCodeSequence_CodeMeaning", "string"),
    ("ViewCodeSequence_CodeMeaning", "string"),
    ("PatientOrientationCodeSequence_CodeMeaning", "string"),
)


def view_of(view_position: str | None, view_code_meaning: str | None) -> int:
    """Frontal, lateral or other, from ViewPosition, else from ViewCodeSequence's code meaning."""
    position = (view_position or "").strip().upper()
    if position:
        if position in _FRONTAL_POSITIONS:
            return FRONTAL
        return LATERAL if position in ("LL", "RL") or "LATERAL" in position else OTHER
    meaning = (view_code_meaning or "").strip().lower()
    if meaning in ("postero-anterior", "antero-posterior"):
        return FRONTAL
    return LATERAL if "lateral" in meaning else OTHER


def parse_metadata_row(row: dict[str, str]) -> ImageMetadata:
    dicom_id = _cell(row, "dicom_id")
    columns: dict[str, Any] = {}
    for name, kind in METADATA_COLUMNS:
        text = (row.get(name) or "").strip()
        columns[name] = _typed(name, text, kind) if text else None
    view = view_of(columns["ViewPosition"], columns["ViewCodeSequence_CodeMeaning"])
    return ImageMetadata(dicom_id, _int(row, "subject_id"), _int(row, "study_id"), view, columns)


def _typed(name: str, text: str, kind: str) -> Any:
    try:
        if kind == "int":
            return int(float(text))
        if kind == "date":
            return dt.datetime.strptime(text, "%Y%m%d").date()
        if kind == "time":
            whole, _, fraction = text.partition(".")
            parsed = dt.datetime.strptime(whole.zfill(6), "%H%M%S").time()
            return parsed.replace(microsecond=int((fraction + "000000")[:6]) if fraction else 0)
    except ValueError:
        raise LabelValueError(f"{name} {text!r} is not a {kind}") from None
    return text


def parse_split_row(row: dict[str, str]) -> tuple[str, int]:
    """(dicom_id, dataset code) of a mimic-cxr-2.0.0-split.csv.gz row."""
    split = _cell(row, "split").lower()
    if split not in DATASETS:
        raise LabelValueError(f"split {split!r} is not train, validate or test")
    return _cell(row, "dicom_id"), DATASETS[split]


# ---------------------------------------------------------------------------------------------------
# Records and the labels table


@dataclass(frozen=True)
class CxrRecord:
    """One image that joined its label row: the ids, the labels, the layout's extra columns, the JPG."""

    uri: str
    image: ImageKey  # view, dataset and image filled in
    labels: dict[str, int]
    extra: dict[str, Any]
    jpg: bytes

    @property
    def view_name(self) -> str:
        return VIEW_NAMES[self.image.view if self.image.view is not None else OTHER]


def _ids(image: ImageKey) -> dict[str, Any]:
    """The int64 ids of records and rows: what a prediction joins its label row on."""
    return {"patient": image.patient, "study": image.study, "image": image.image, "view": image.view,
            "dataset": image.dataset}  # fmt: skip


def record_features(layout: str, record: CxrRecord) -> dict[str, Any]:
    """The tf.train.Example features (Google's names): jpg_bytes, the int64 ids, one int64 per label; v2
    adds dicom_id and view_position, CheXpert sex and age (absent when unknown). `path` (the image's path in
    the dataset) is medbeam's addition: it joins a record to the labels table without the ids."""
    image = record.image
    features: dict[str, Any] = {"jpg_bytes": record.jpg, "path": image.relpath, **_ids(image), **record.labels}
    if layout == MIMIC_JPG:
        features["dicom_id"] = image.dicom_id
        features["view_position"] = record.extra.get("ViewPosition")
    elif layout == CHEXPERT:
        features["sex"] = record.extra.get("sex")
        features["age"] = record.extra.get("age")
    return features


#: The record features of each layout: (name, TensorFlow dtype, description).
_COMMON_FEATURES = [
    ("jpg_bytes", "string", "JPEG-encoded image (grey stays grey)"),
    ("path", "string", "the image's path in the dataset (the labels table's path)"),
    ("patient", "int64", "patient (subject) id"),
    ("study", "int64", "study id"),
    ("image", "int64", "image number within the study (2019, CheXpert: view<n>; v2: rank of dicom_id)"),
    ("view", "int64", "0 frontal, 1 lateral, 2 other"),
    ("dataset", "int64", "0 train, 1 valid/validate, 2 test"),
]
_EXTRA_FEATURES = {
    MIMIC_2019: [],
    MIMIC_JPG: [("dicom_id", "string", "the image's dicom_id"), ("view_position", "string", "ViewPosition")],
    CHEXPERT: [("sex", "string", "Sex (Male/Female)"), ("age", "int64", "Age")],
}


def feature_names(layout: str) -> list[tuple[str, str, str]]:
    labels = [(c, "int64", "0 not mentioned, 1 negative, 2 uncertain, 3 positive") for c in LABEL_COLUMNS]
    return _COMMON_FEATURES + labels + _EXTRA_FEATURES[check_layout(layout)]


def table_columns(layout: str) -> list[tuple[str, str]]:
    """The labels table's columns as (name, kind): kind one of string, int, date, time."""
    columns = [("path", "string"), ("uri", "string"), ("patient", "int"), ("study", "int"), ("image", "int"),
               ("view", "int"), ("view_name", "string"), ("dataset", "int")]  # fmt: skip
    columns += [(c, "int") for c in LABEL_COLUMNS]
    if layout == MIMIC_2019:
        columns += [("csv_view", "string")]
    elif layout == MIMIC_JPG:
        columns += [("dicom_id", "string"), ("split", "string")]
        columns += [(name, kind) for name, kind in METADATA_COLUMNS]
    elif layout == CHEXPERT:
        columns += [("sex", "string"), ("age", "int"), ("frontal_lateral", "string"), ("ap_pa", "string")]
    return columns


SPLIT_NAMES = {0: "train", 1: "validate", 2: "test"}


def table_row(layout: str, record: CxrRecord) -> dict[str, Any]:
    image = record.image
    row: dict[str, Any] = {"path": image.relpath, "uri": record.uri, **_ids(image), "view_name": record.view_name}
    row.update(record.labels)
    if layout == MIMIC_JPG:
        row["dicom_id"] = image.dicom_id
        row["split"] = SPLIT_NAMES.get(image.dataset) if image.dataset is not None else None
    for name, _ in table_columns(layout):
        row.setdefault(name, record.extra.get(name))
    return row
