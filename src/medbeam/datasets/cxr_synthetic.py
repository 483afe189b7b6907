"""Small synthetic chest X-ray datasets in the exact on-disk layouts of three published collections.

Tests, `make demo`, the benchmarks and the tutorial need chest X-ray collections whose paths, CSV headers, ID
formats and archives are exactly those of the real releases (which cannot be shipped: they need credentialed
access), with labels a model can learn from the pixels. Everything here is pure Python (numpy + Pillow, no
Beam) and deterministic: the same arguments and seed give byte-identical files, tars and gzip included
(gzip mtime 0 and no file name; tar members sorted, mtime fixed, uid/gid 0, no user or group names).

Writers (each returns a `CxrSample` manifest of what it wrote):

* `write_mimic_cxr_2019(root, ...)`: the early MIMIC-CXR release. Tars `train_p10.tar.gz`, `train_p11.tar.gz`
  ... (one per first-two-digits prefix of the patient id, `train_tars` of them) and `valid.tar.gz` (`.tar`
  when `compress=False`), members `(train|valid)/p<8 digits>/s<2 digits>/view<n>_(frontal|lateral|other).jpg`;
  labels `train.csv.gz` and `valid.csv.gz` with header `path,view,` + `LABELS_2019`.
* `write_mimic_cxr_jpg(root, ...)`: MIMIC-CXR-JPG v2.0.0/v2.1.0. `files/p10/p10000032/s50414267/<dicom_id>.jpg`
  (or, with `as_tars`, tars `files_p10.tar.gz` ... of those same member paths; `keep_loose` writes both) and
  beside `files/`: `mimic-cxr-2.0.0-metadata.csv.gz` (`METADATA_COLUMNS`), `mimic-cxr-2.0.0-chexpert.csv.gz`
  and `mimic-cxr-2.0.0-negbio.csv.gz` (`subject_id,study_id,` + `MIMIC_JPG_LABELS`, one row per study) and
  `mimic-cxr-2.0.0-split.csv.gz` (`dicom_id,study_id,subject_id,split`, split train/validate/test per subject).
* `write_chexpert(root, ...)`: CheXpert-v1.0-small (or CheXpert-v1.0 with `small=False`): `<folder>/train.csv`
  and `<folder>/valid.csv` (plain CSV, header `Path,Sex,Age,Frontal/Lateral,AP/PA,` + `CHEXPERT_LABELS`) and
  the images at the `Path`s, relative to `root`. Like the real release, valid.csv has only `0.0`/`1.0` cells.

Label cells are `""` (not mentioned), `0.0`, `-1.0` (uncertain) or `1.0`; labels are drawn per study and
repeated on each of its images. Two labels are drawn into the pixels (see `chest_xray`): Cardiomegaly `1.0`
gives a clearly larger cardiac silhouette, Pleural Effusion `1.0` a flat bright fluid level at the base of a
lung; every other value (and every other label) leaves the image unmarked.

`bad_cases=True` (or a collection of `BAD_CASE_KINDS`) adds, always on top of the good images (which stay
byte-identical with or without them): an image with no label row (`unlabelled_image`), a label row with no
image (`missing_image`), a duplicate (`duplicate_image`: 2019, the same member path in a second train tar, or
twice in the one tar; v2, a second file with an existing dicom_id under another study folder of the same
subject, no rows of its own; CheXpert, a train.csv row repeated), a real PNG named .jpg (`not_jpeg`: decoders
that sniff the content, OpenCV's imdecode and Pillow's open, read it; only a format check rejects it), the
first half of a JPEG (`truncated_jpeg`: Pillow's `load()` raises, OpenCV's imdecode returns None), a README.txt
and a JPEG at a path that matches no pattern (`unknown_path`, two cases), and label cells `2.0` and `yes`
(`invalid_label`, two cases). Bad cases that have label rows (missing, not_jpeg, truncated, invalid) are new
train patients of their own, so each is rejected for one reason only.

Keywords every writer takes: `patients` (4), `studies_per_patient` (2), `image_size` ((height, width), 320 ×
256; the benchmark's ~3000 × 2500 at quality 95 gives ~1.8 MB JPEGs at ~0.3 s each), `quality` (JPEG, 95),
`seed` (0), `bad_cases` (False) and `workers` (1; more render images ahead in threads, same bytes).

The manifest lists the good images (`CxrSample.images`: ids, split, intended labels, what was drawn, where the
bytes are) and each bad case (`CxrSample.bad_cases`: kind, path, the file holding it, the affected record), so
tests can compare pipeline output and rejects to it exactly. `CxrSample.read(...)` returns an image's bytes.

`chest_xray(height, width, cardiomegaly=..., effusion=..., rng=...)` is the image model on its own (a uint8
array), `encode_jpeg` its encoder; `format_label` writes a cell.
"""

from __future__ import annotations

import csv
import datetime
import gzip
import io
import re
import tarfile
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "BAD_CASE_KINDS",
    "CHEXPERT_LABELS",
    "LABELS_2019",
    "LABEL_VALUES",
    "METADATA_COLUMNS",
    "MIMIC_JPG_LABELS",
    "BadCase",
    "CxrImage",
    "CxrSample",
    "chest_xray",
    "encode_jpeg",
    "format_label",
    "write_chexpert",
    "write_mimic_cxr_2019",
    "write_mimic_cxr_jpg",
]

#: The 14 labels in the 2019 MIMIC-CXR CSVs' order (that release says "Airspace Opacity").
LABELS_2019: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Airspace Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
#: CheXpert's own order and names ("Lung Opacity").
CHEXPERT_LABELS: tuple[str, ...] = tuple("Lung Opacity" if n == "Airspace Opacity" else n for n in LABELS_2019)
#: MIMIC-CXR-JPG v2's chexpert/negbio CSVs: CheXpert's names, alphabetical.
MIMIC_JPG_LABELS: tuple[str, ...] = tuple(sorted(CHEXPERT_LABELS))
#: Every cell a good label row holds: not mentioned, negative, uncertain, positive.
LABEL_VALUES: tuple[str, ...] = ("", "0.0", "-1.0", "1.0")
METADATA_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
CHEXPERT_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS)
SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")
BAD_CASE_KINDS: tuple[str, ...] = (
    "unlabelled_image",
    "missing_image",
    "duplicate_image",
    "not_jpeg",
    "truncated_jpeg",
    "unknown_path",
    "invalid_label",
)
#: The mtime of every tar member (2019-01-01T00:00:00Z): fixed, so archives are byte-identical per seed.
TAR_MTIME = 1_546_300_800
DEFAULT_SIZE = (320, 256)  # (height, width): portrait, like the real ones

Labels = Mapping[str, float | None]


# ---------------------------------------------------------------------------------------------------
# The manifest


@dataclass(frozen=True)
class CxrImage:
    """One image (or, for a `missing_image` case, one label row) as the generator meant it.

    `path` is the image as its label file names it (2019: the tar member path; v2: `files/p10/.../<dicom_id>.jpg`;
    CheXpert: the `Path` cell, relative to the folder holding `CheXpert-v1.0-small/`). `patient` and `study`
    are the path components (`p10524315`/`s01`, `p10000032`/`s50414267`, `patient00001`/`study1`). `view` is
    the layout's own view value (2019 frontal/lateral/other; v2 ViewPosition, possibly empty; CheXpert
    Frontal/Lateral), `projection` what was drawn (frontal or lateral). `labels` maps the layout's label
    columns, in CSV order, to 1.0/0.0/-1.0/None (empty cell). `metadata` holds the row's other cells
    (v2: the metadata CSV row; CheXpert: Sex, Age, Frontal/Lateral, AP/PA; 2019: view).
    """

    path: str
    split: str
    patient: str
    study: str
    view: str
    projection: str
    labels: Labels
    height: int
    width: int
    cardiomegaly: bool
    effusion: bool
    dicom_id: str = ""
    file: Path | None = None
    tar: Path | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    negbio: Labels | None = None  # v2 only: the negbio CSV's labels (the chexpert CSV's are `labels`)
    seed: int = 0  # the image's own seed: its pixels do not depend on what else is generated

    @property
    def subject_id(self) -> int:
        """v2's integer subject_id (the digits after the `p`)."""
        return int(self.patient[1:])

    @property
    def study_id(self) -> int:
        """v2's integer study_id (the digits after the `s`)."""
        return int(self.study[1:])

    @property
    def cells(self) -> dict[str, str]:
        """The label cells as the CSV writes them."""
        return {name: format_label(value) for name, value in self.labels.items()}


@dataclass(frozen=True)
class BadCase:
    """One deliberately broken item: `kind` (one of BAD_CASE_KINDS), the `path` as a member, file or label row
    names it, `location` (the tar, image file or CSV holding the bad part), `image` (the affected record: its
    ids and intended labels, empty for an unlabelled image; None for unknown paths), and for invalid labels the
    `column` and the `value` written instead of the intended one."""

    kind: str
    path: str
    location: Path
    image: CxrImage | None = None
    column: str = ""
    value: str = ""
    detail: str = ""


@dataclass(frozen=True)
class CxrSample:
    """What a writer wrote: `root` (the folder given), `data_root` (v2: `root/files`; CheXpert:
    `root/CheXpert-v1.0-small`; 2019: `root`), the tars, the label/metadata CSVs by role (2019 and CheXpert:
    `train`, `valid`; v2: `metadata`, `chexpert`, `negbio`, `split`), the label columns in CSV order, the good
    images (sorted by path) and the bad cases."""

    layout: str
    root: Path
    data_root: Path
    tars: tuple[Path, ...]
    csvs: Mapping[str, Path]
    label_names: tuple[str, ...]
    images: tuple[CxrImage, ...]
    bad_cases: tuple[BadCase, ...] = ()

    def image(self, path: str) -> CxrImage:
        """The good image its label file names `path`."""
        for image in self.images:
            if image.path == path:
                return image
        raise KeyError(path)

    def bad(self, kind: str) -> list[BadCase]:
        """The bad cases of one kind."""
        if kind not in BAD_CASE_KINDS:
            raise ValueError(f"unknown bad case {kind!r}; one of {', '.join(BAD_CASE_KINDS)}")
        return [case for case in self.bad_cases if case.kind == kind]

    def split(self, name: str) -> list[CxrImage]:
        """The good images of one split (train/valid; v2 train/validate/test)."""
        return [image for image in self.images if image.split == name]

    def read(self, image: CxrImage) -> bytes:
        """An image's bytes, from its loose file or else its tar (the last member of that name)."""
        if image.file is not None:
            return image.file.read_bytes()
        if image.tar is None:
            raise FileNotFoundError(f"{image.path} was not written")
        with tarfile.open(image.tar) as tar:
            member = tar.extractfile(image.path)
            assert member is not None
            return member.read()


def format_label(value: float | None) -> str:
    """A label cell: None → empty, else one decimal (`1.0`, `0.0`, `-1.0`)."""
    return "" if value is None else f"{value:.1f}"


# ---------------------------------------------------------------------------------------------------
# Images


_COARSE = 512  # shapes are drawn at most this size, then scaled: large images stay fast


def _soft(x: np.ndarray, edge: float) -> np.ndarray:
    """A smooth 0→1 step at x = 0, `edge` wide: soft-edged anatomy, no aliasing."""
    return (1.0 / (1.0 + np.exp(-np.clip(x / edge, -30.0, 30.0)))).astype(np.float32)


def _ellipse(u: np.ndarray, v: np.ndarray, cx: float, cy: float, a: float, b: float, edge: float) -> np.ndarray:
    return _soft(1.0 - ((u - cx) / a) ** 2 - ((v - cy) / b) ** 2, edge)


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise (lung markings, uneven exposure): a few random cells, bicubic-scaled."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC))


def chest_xray(
    height: int,
    width: int,
    *,
    cardiomegaly: bool,
    effusion: bool,
    rng: np.random.Generator,
    projection: str = "frontal",
    noise: float = 2.5,
) -> np.ndarray:
    """A chest-X-ray-like grayscale image (uint8, height × width) with the two drawn labels' signatures.

    Dark background, soft-tissue torso, two darker-than-tissue (brighter-than-air) lung fields with rib bands
    and markings, a bright mediastinum and cardiac silhouette, smooth exposure gradients and per-pixel noise
    (`noise`, in grey levels: it keeps JPEG sizes realistic, ~1.8 MB at 3000 × 2500, quality 95). Cardiomegaly
    makes the heart about 1.7× wider; an effusion fills one lung's base below a flat, sharp fluid level.
    `projection="lateral"` draws a lateral view (one lung field, spine behind, heart in front). Shapes are
    drawn on a grid of at most ~512 px and scaled up, so a 3000 × 2500 image takes a fraction of a second.
    """
    if projection not in ("frontal", "lateral"):
        raise ValueError(f"projection is frontal or lateral, not {projection!r}")
    big = max(height, width) > _COARSE * 1.25
    scale = max(height, width) / _COARSE if big else 1.0
    ch, cw = max(8, round(height / scale)), max(8, round(width / scale))
    v = ((np.arange(ch, dtype=np.float32) + 0.5) / ch)[:, None]
    u = ((np.arange(cw, dtype=np.float32) + 0.5) / cw)[None, :]

    def jitter(spread: float) -> float:
        return float(rng.uniform(-spread, spread))

    background, mid = 0.05 + jitter(0.02), 0.5 + jitter(0.02)
    if projection == "frontal":
        half = 0.11 + (0.35 + jitter(0.03)) * _soft(v - 0.10, 0.025)  # neck, then shoulders
        body = _soft(half - np.abs(u - mid), 0.012)
        img = background + (0.36 + 0.14 * v + jitter(0.03) - background) * body
        cy, b = 0.46 + jitter(0.02), 0.28 + jitter(0.02)
        sides = [(mid + side * (0.2 + jitter(0.015)), 0.15 + jitter(0.015)) for side in (-1.0, 1.0)]
        lungs = np.maximum(*(_ellipse(u, v, cx, cy, a, b, 0.06) for cx, a in sides))
        img = img * (1.0 - (0.42 + 0.03 * _smooth_field(rng, ch, cw, 12)) * lungs)
        ribs = (0.5 + 0.5 * np.sin((v - 0.9 * (u - mid) ** 2) * (2 * np.pi * (11 + jitter(1))) + jitter(3))) ** 3
        img = img + 0.07 * ribs * lungs
        clavicles = _soft(0.012 - np.abs(v - (0.13 + 0.25 * np.abs(u - mid) ** 1.5)), 0.004)
        img = img + 0.12 * clavicles * _soft(0.3 - np.abs(u - mid), 0.02) * body
        mediastinum = _soft(0.06 - np.abs(u - mid), 0.01) * _soft(v - 0.03, 0.02)
        img = img + (0.64 - img) * mediastinum
        trachea = _soft(0.014 - np.abs(u - mid), 0.004) * _soft(0.36 - v, 0.02) * _soft(v - 0.05, 0.02)
        img = img - 0.18 * trachea
        hx, hy = mid + 0.045 + jitter(0.015), 0.64 + jitter(0.015)
        ha, hb = (0.225 + jitter(0.015), 0.165 + jitter(0.01)) if cardiomegaly else (0.13 + jitter(0.012), 0.115)
        img = img + (0.74 - img) * _ellipse(u, v, hx, hy, ha, hb, 0.1)
        if effusion:
            cx, a = sides[int(rng.integers(2))]
            level = cy + b * (0.3 + jitter(0.12))
            fluid = _ellipse(u, v, cx, cy, a, b, 0.06) * _soft(v - level, 0.003)
            img = img + (0.66 - img) * fluid
    else:
        half = 0.2 + (0.24 + jitter(0.03)) * _soft(v - 0.08, 0.03)
        body = _soft(half - np.abs(u - mid), 0.015)
        img = background + (0.4 + 0.12 * v + jitter(0.03) - background) * body
        cx, cy, a, b = mid + 0.02 + jitter(0.02), 0.46 + jitter(0.02), 0.29 + jitter(0.02), 0.3 + jitter(0.02)
        lung = _ellipse(u, v, cx, cy, a, b, 0.06)
        img = img * (1.0 - (0.38 + 0.03 * _smooth_field(rng, ch, cw, 12)) * lung)
        spine_x = mid + 0.27 + jitter(0.015)
        spine = _soft(0.05 - np.abs(u - spine_x), 0.008) * (0.8 + 0.2 * np.sin(v * (2 * np.pi * 14))) ** 2
        img = img + (0.62 - img) * spine
        hx, hy = mid - 0.12 + jitter(0.015), 0.63 + jitter(0.015)
        ha, hb = (0.23 + jitter(0.015), 0.19 + jitter(0.01)) if cardiomegaly else (0.14 + jitter(0.012), 0.13)
        img = img + (0.72 - img) * _ellipse(u, v, hx, hy, ha, hb, 0.1)
        if effusion:  # posterior costophrenic recess
            level = cy + b * (0.35 + jitter(0.1))
            img = img + (0.66 - img) * (lung * _soft(v - level, 0.003) * _soft(u - cx, 0.02))
    img = img * (1.0 + jitter(0.08) * (u - 0.5) + jitter(0.08) * (v - 0.5))
    img = (img * 255.0).astype(np.float32)
    if big:
        img = np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR))
    img = img + rng.standard_normal((height, width), dtype=np.float32) * np.float32(noise)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    """Baseline 8-bit grayscale JPEG (Pillow; deterministic for a given libjpeg)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _render(image: CxrImage, quality: int) -> bytes:
    rng = np.random.default_rng(image.seed)
    pixels = chest_xray(
        image.height,
        image.width,
        cardiomegaly=image.cardiomegaly,
        effusion=image.effusion,
        rng=rng,
        projection=image.projection,
    )
    return encode_jpeg(pixels, quality)


def _png_bytes(image: CxrImage) -> bytes:
    """A not_jpeg case's content: a real PNG (so only the extension lies)."""
    pixels = chest_xray(
        image.height, image.width, cardiomegaly=False, effusion=False, rng=np.random.default_rng(image.seed)
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _bad_bytes(kind: str, image: CxrImage, quality: int) -> bytes:
    if kind == "not_jpeg":
        return _png_bytes(image)
    data = _render(image, quality)
    return data[: len(data) // 2] if kind == "truncated_jpeg" else data


# ---------------------------------------------------------------------------------------------------
# Labels

_PATHOLOGIES = tuple(name for name in CHEXPERT_LABELS if name != "No Finding")
_VALUES: tuple[float | None, ...] = (None, 0.0, -1.0, 1.0)
_VALUE_P = (0.6, 0.2, 0.08, 0.12)
_SIGNATURE_P = (0.3, 0.25, 0.1, 0.35)
#: The first studies' (Cardiomegaly, Pleural Effusion): every value of both appears in any dataset of ≥ 5 studies.
_FORCED: tuple[tuple[float | None, float | None], ...] = (
    (1.0, None),
    (0.0, 1.0),
    (-1.0, 0.0),
    (None, -1.0),
    (1.0, 1.0),
)


def _draw_labels(rng: np.random.Generator, index: int, *, definite: bool = False) -> dict[str, float | None]:
    """One study's labels in CheXpert's names (No Finding first). `definite`: 0.0/1.0 only (CheXpert valid).

    The draws per study are the same whatever `index` is, so forcing the first studies' signature labels
    does not shift anyone else's labels."""
    normal = rng.random() < 0.25
    labels: dict[str, float | None] = {}
    for name in _PATHOLOGIES:
        signature = name in ("Cardiomegaly", "Pleural Effusion")
        value = _VALUES[int(rng.choice(4, p=_SIGNATURE_P if signature else _VALUE_P))]
        labels[name] = None if normal and value in (1.0, -1.0) else value
    if index < len(_FORCED):
        labels["Cardiomegaly"], labels["Pleural Effusion"] = _FORCED[index]
    if definite:
        labels = {name: 1.0 if value == 1.0 else 0.0 for name, value in labels.items()}
    findings = any(labels[name] in (1.0, -1.0) for name in _PATHOLOGIES if name != "Support Devices")
    no_finding = (0.0 if definite else None) if findings else 1.0
    return {"No Finding": no_finding, **labels}


def _in_order(labels: Labels, names: Sequence[str]) -> dict[str, float | None]:
    """CheXpert-named labels → the layout's columns, in its order (2019 says Airspace Opacity)."""
    return {name: labels["Lung Opacity" if name == "Airspace Opacity" else name] for name in names}


def _negbio(rng: np.random.Generator, labels: Labels) -> dict[str, float | None]:
    """NegBio disagrees with CheXpert now and then, never on the labels drawn into the pixels."""
    out = dict(labels)
    for name in labels:
        flip = rng.random() < 0.15
        value = _VALUES[int(rng.integers(4))]
        if flip and name not in ("Cardiomegaly", "Pleural Effusion", "No Finding"):
            out[name] = value
    return out


def _signatures(labels: Labels) -> tuple[bool, bool]:
    return labels["Cardiomegaly"] == 1.0, labels["Pleural Effusion"] == 1.0


# ---------------------------------------------------------------------------------------------------
# Files


def _invalid_cells(cases: Iterable[BadCase]) -> dict[str, tuple[str, str]]:
    """image path → (column, bad value) of the `invalid_label` cases."""
    return {c.image.path: (c.column, c.value) for c in cases if c.kind == "invalid_label" and c.image is not None}


def _with_bad_cells(cells: dict[str, str], image: CxrImage, invalid: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """An image's label cells, its invalid_label case's bad value written in."""
    if image.path in invalid:
        column, value = invalid[image.path]
        cells = {**cells, column: value}
    return cells


def _csv_bytes(header: Sequence[str], rows: Iterable[Sequence[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _gzip(data: bytes) -> bytes:
    """gzip with mtime 0 and no file name: the same bytes every run."""
    return gzip.compress(data, compresslevel=6, mtime=0)


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Path:
    data = _csv_bytes(header, rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_gzip(data) if path.name.endswith(".gz") else data)
    return path


Member = tuple[str, Callable[[], bytes]]  # a path and what renders its bytes


def _contents(members: Iterable[Member], workers: int) -> Iterator[tuple[str, bytes]]:
    """Each member's bytes, sorted by name (same-named members keep their order). With `workers` > 1 they are
    rendered ahead in threads (numpy and Pillow release the GIL), at most 2 × workers at a time; the order,
    hence every byte written, is the same either way."""
    ordered = sorted(members, key=lambda member: member[0])
    if workers <= 1:
        yield from ((name, content()) for name, content in ordered)
        return
    with ThreadPoolExecutor(workers) as pool:
        window: deque[tuple[str, Future[bytes]]] = deque()
        for name, content in ordered:
            window.append((name, pool.submit(content)))
            if len(window) >= 2 * workers:
                done, future = window.popleft()
                yield done, future.result()
        while window:
            done, future = window.popleft()
            yield done, future.result()


def _write_tar(path: Path, members: Iterable[Member], workers: int = 1) -> Path:
    """A ustar archive (gzip-compressed if the name ends .gz) of the members, rendered as they are written:
    large images never sit in memory together."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw:
        compress = path.name.endswith(".gz")
        # GzipFile writes its header at once: only made for .gz. Its file name is left out, its mtime is 0.
        target = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) if compress else raw
        try:
            with tarfile.open(fileobj=target, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for name, data in _contents(members, workers):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(data))
        finally:
            if compress:
                target.close()
    return path


def _write_files(root: Path, members: Iterable[Member], workers: int = 1) -> None:
    for name, data in _contents(members, workers):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def _bad_kinds(bad_cases: bool | Collection[str]) -> frozenset[str]:
    if bad_cases is True:
        return frozenset(BAD_CASE_KINDS)
    if bad_cases is False:
        return frozenset()
    unknown = set(bad_cases) - set(BAD_CASE_KINDS)
    if unknown:
        raise ValueError(f"unknown bad cases {sorted(unknown)}; one of {', '.join(BAD_CASE_KINDS)}")
    return frozenset(bad_cases)


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The good images' and the bad cases' generators: bad cases never change a good image."""
    good, bad = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(good), np.random.default_rng(bad)


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**63))


def _unique(rng: np.random.Generator, used: set[int], low: int, high: int) -> int:
    """A random integer in [low, high) no earlier call returned into `used`."""
    while True:
        value = int(rng.integers(low, high))
        if value not in used:
            used.add(value)
            return value


def _split_counts(patients: int, held_out: int) -> list[int]:
    """Patients per held-out split (each ≥ 1 when there are patients to spare, ~10-20 % each)."""
    counts = []
    left = patients
    for _ in range(held_out):
        n = max(1, round(patients * (0.2 if held_out == 1 else 0.1))) if left >= 2 else 0
        counts.append(n)
        left -= n
    return [left, *counts]


def _natural(path: str) -> tuple[str | int, ...]:
    """Sort key that puts study2 before study10, as the releases' CSVs do."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path))


def _check(patients: int, studies_per_patient: int, image_size: tuple[int, int], quality: int) -> None:
    if patients < 1 or studies_per_patient < 1:
        raise ValueError("patients and studies_per_patient must be ≥ 1")
    if min(image_size) < 16:
        raise ValueError(f"image_size is (height, width), each ≥ 16: {image_size}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality is 1-100: {quality}")


# ---------------------------------------------------------------------------------------------------
# MIMIC-CXR 2019


def _views_2019(rng: np.random.Generator, index: int) -> list[str]:
    lateral, other = rng.random() < 0.6, rng.random() < 0.1
    if index == 0:
        lateral = True
    if index == 1:
        lateral = other = True
    return ["frontal", *(["lateral"] if lateral else []), *(["other"] if other else [])]


def write_mimic_cxr_2019(
    root: Path,
    *,
    patients: int = 4,
    studies_per_patient: int = 2,
    image_size: tuple[int, int] = DEFAULT_SIZE,
    quality: int = 95,
    seed: int = 0,
    bad_cases: bool | Collection[str] = False,
    workers: int = 1,
    train_tars: int = 2,
    compress: bool = True,
) -> CxrSample:
    """The early MIMIC-CXR release under `root`: `train_p1<k>.tar[.gz]` (k < `train_tars`, patients
    `p1<k>......`), `valid.tar[.gz]`, `train.csv.gz`, `valid.csv.gz`. About a fifth of the patients (≥ 1 when
    there are ≥ 2) are valid; each study has a frontal view, often a lateral, now and then an `other`."""
    _check(patients, studies_per_patient, image_size, quality)
    if not 1 <= train_tars <= 10:
        raise ValueError("train_tars is 1-10 (one per patient-id prefix p10-p19)")
    root = Path(root)
    height, width = image_size
    good, bad = _rngs(seed)
    used: set[int] = set()
    n_train, _ = _split_counts(patients, 1)
    suffix = ".tar.gz" if compress else ".tar"
    train_tar_paths = [root / f"train_p{10 + k}{suffix}" for k in range(train_tars)]
    valid_tar = root / f"valid{suffix}"
    names = LABELS_2019

    def patient_id(rng: np.random.Generator, tar_index: int | None) -> str:
        prefix = 10 + tar_index if tar_index is not None else int(rng.integers(10, 20))
        return f"p{_unique(rng, used, prefix * 1_000_000, (prefix + 1) * 1_000_000)}"

    def record(split: str, patient: str, study: str, n: int, view: str, labels: Labels, tar: Path, seed_: int):
        cardiomegaly, effusion = _signatures(labels)
        return CxrImage(
            path=f"{split}/{patient}/{study}/view{n}_{view}.jpg",
            split=split,
            patient=patient,
            study=study,
            view=view,
            projection="lateral" if view == "lateral" else "frontal",
            labels=_in_order(labels, names),
            height=height,
            width=width,
            cardiomegaly=cardiomegaly,
            effusion=effusion,
            tar=tar,
            metadata={"view": view},
            seed=seed_,
        )

    images: list[CxrImage] = []
    study_index = 0
    for p in range(patients):
        split = "train" if p < n_train else "valid"
        tar_index = p % train_tars if split == "train" else None
        patient = patient_id(good, tar_index)
        tar = train_tar_paths[tar_index] if tar_index is not None else valid_tar
        for s in range(studies_per_patient):
            labels = _draw_labels(good, study_index)
            for n, view in enumerate(_views_2019(good, study_index), start=1):
                images.append(record(split, patient, f"s{s + 1:02d}", n, view, labels, tar, _seed(good)))
            study_index += 1

    kinds = _bad_kinds(bad_cases)
    cases: list[BadCase] = []
    extra_rows: list[CxrImage] = []  # label rows beside the good images' (missing image, bad bytes, bad labels)
    members: dict[Path, list[Member]] = {tar: [] for tar in (*train_tar_paths, valid_tar)}
    first_tar, last_tar = train_tar_paths[0], train_tar_paths[-1]
    train_csv, valid_csv = root / "train.csv.gz", root / "valid.csv.gz"

    def bad_image() -> CxrImage:
        """A bad case's own record: a new train patient in the first train tar, one frontal view."""
        labels = _draw_labels(bad, len(_FORCED))
        return record("train", patient_id(bad, 0), "s01", 1, "frontal", labels, first_tar, _seed(bad))

    for kind in BAD_CASE_KINDS:
        if kind not in kinds:
            continue
        if kind == "unlabelled_image":
            image = replace(bad_image(), labels={})
            members[first_tar].append((image.path, lambda image=image: _render(image, quality)))
            cases.append(BadCase(kind, image.path, first_tar, image, detail="member with no label row"))
        elif kind == "missing_image":
            image = replace(bad_image(), tar=None)
            extra_rows.append(image)
            cases.append(BadCase(kind, image.path, train_csv, image, detail="label row, no member anywhere"))
        elif kind == "duplicate_image":
            original = next(image for image in images if image.tar == first_tar)
            copy = replace(original, tar=last_tar)
            members[last_tar].append((copy.path, lambda image=original: _render(image, quality)))
            where = "again in the same tar" if last_tar == first_tar else f"in {first_tar.name} and {last_tar.name}"
            cases.append(BadCase(kind, copy.path, last_tar, copy, detail=f"same member path and bytes {where}"))
        elif kind in ("not_jpeg", "truncated_jpeg"):
            image = bad_image()
            extra_rows.append(image)
            members[first_tar].append((image.path, lambda image=image, kind=kind: _bad_bytes(kind, image, quality)))
            detail = "PNG bytes" if kind == "not_jpeg" else "the first half of a JPEG"
            cases.append(BadCase(kind, image.path, first_tar, image, detail=detail))
        elif kind == "unknown_path":
            readme = b"Synthetic MIMIC-CXR sample: not an image.\n"
            members[first_tar].append(("train/README.txt", lambda: readme))
            stray = replace(bad_image(), labels={})
            members[first_tar].append(("train/pX/sY/img.jpg", lambda image=stray: _render(image, quality)))
            cases.append(BadCase(kind, "train/README.txt", first_tar, None, detail="not an image"))
            cases.append(BadCase(kind, "train/pX/sY/img.jpg", first_tar, None, detail="a JPEG at no known path"))
        elif kind == "invalid_label":
            for value in ("2.0", "yes"):
                image = bad_image()
                column = names[int(bad.integers(len(names)))]
                extra_rows.append(image)
                members[first_tar].append((image.path, lambda image=image: _render(image, quality)))
                cases.append(BadCase(kind, image.path, train_csv, image, column=column, value=value))

    for image in images:
        assert image.tar is not None
        members[image.tar].append((image.path, lambda image=image: _render(image, quality)))
    tars = tuple(_write_tar(tar, members[tar], workers) for tar in (*train_tar_paths, valid_tar))

    invalid = _invalid_cells(cases)

    def row(image: CxrImage) -> list[str]:
        cells = _with_bad_cells(image.cells, image, invalid)
        return [image.path, image.view, *(cells[name] for name in names)]

    rows = sorted([*images, *extra_rows], key=lambda image: image.path)
    _write_csv(train_csv, ("path", "view", *names), (row(i) for i in rows if i.split == "train"))
    _write_csv(valid_csv, ("path", "view", *names), (row(i) for i in rows if i.split == "valid"))
    return CxrSample(
        layout="mimic-cxr-2019",
        root=root,
        data_root=root,
        tars=tars,
        csvs={"train": train_csv, "valid": valid_csv},
        label_names=names,
        images=tuple(sorted(images, key=lambda image: image.path)),
        bad_cases=tuple(cases),
    )


# ---------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG v2


_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}


def _dicom_id(rng: np.random.Generator, used: set[str]) -> str:
    """Five dash-separated groups of 8 lowercase hex digits (MIMIC's de-identified DICOM ids)."""
    while True:
        digits = rng.bytes(20).hex()
        dicom_id = "-".join(digits[i : i + 8] for i in range(0, 40, 8))
        if dicom_id not in used:
            used.add(dicom_id)
            return dicom_id


@dataclass(frozen=True)
class _StudyKind:
    procedure: str
    positions: tuple[str, ...]  # as drawn; the metadata leaves the last one empty when `blank`
    orientation: str
    blank: bool


def _study_kind_v2(rng: np.random.Generator, index: int) -> _StudyKind:
    """PA + lateral (LATERAL or LL), or one portable AP. The first four studies show every variant: PA +
    LATERAL, portable AP, PA + LL, and PA + a lateral whose ViewPosition is empty."""
    portable, left_lateral, recumbent, blank = (rng.random() < p for p in (0.35, 0.3, 0.7, 0.05))
    if index < 4:
        portable, left_lateral, blank = index == 1, index == 2, index == 3
    if portable:
        return _StudyKind("CHEST (PORTABLE AP)", ("AP",), "Recumbent" if recumbent else "Erect", False)
    return _StudyKind("CHEST (PA AND LAT)", ("PA", "LL" if left_lateral else "LATERAL"), "Erect", blank)


def _study_time(rng: np.random.Generator, index: int) -> str:
    """HHMMSS.fff as the real metadata holds it: a float, so no leading zero before 10:00 (as in the second
    study) and trailing zeros dropped (`213014.5`)."""
    seconds = int(rng.integers(24 * 3600))
    if index == 1:
        seconds = 8 * 3600 + seconds % 3600
    hhmmss = seconds // 3600 * 10000 + seconds % 3600 // 60 * 100 + seconds % 60
    return repr(round(hhmmss + int(rng.integers(1000)) / 1000, 3))


def write_mimic_cxr_jpg(
    root: Path,
    *,
    patients: int = 4,
    studies_per_patient: int = 2,
    image_size: tuple[int, int] = DEFAULT_SIZE,
    quality: int = 95,
    seed: int = 0,
    bad_cases: bool | Collection[str] = False,
    workers: int = 1,
    as_tars: bool = False,
    keep_loose: bool = False,
    compress: bool = True,
) -> CxrSample:
    """MIMIC-CXR-JPG v2 under `root`: `files/p1x/p1xxxxxxx/s5xxxxxxx/<dicom_id>.jpg` and the four
    `mimic-cxr-2.0.0-*.csv.gz` beside `files/`. With `as_tars` the images go into `files_p1x.tar[.gz]` (one
    per top folder, members `files/p1x/...`) instead, or as well with `keep_loose`. Splits are per subject:
    ~10 % validate and ~10 % test (each ≥ 1 when there are ≥ 3 subjects). A study is either PA + lateral
    (LATERAL or LL; CHEST (PA AND LAT), Erect) or one portable AP (CHEST (PORTABLE AP), mostly Recumbent)."""
    _check(patients, studies_per_patient, image_size, quality)
    root = Path(root)
    height, width = image_size
    good, bad = _rngs(seed)
    used_subjects: set[int] = set()
    used_studies: set[int] = set()
    used_dicoms: set[str] = set()
    n_train, n_validate, _ = _split_counts(patients, 2)
    loose = not as_tars or keep_loose
    files_root = root / "files"
    suffix = ".tar.gz" if compress else ".tar"

    def subject(rng: np.random.Generator) -> tuple[str, datetime.date]:
        first = datetime.date(int(rng.integers(2100, 2190)), 1, 1) + datetime.timedelta(int(rng.integers(365)))
        return f"p{_unique(rng, used_subjects, 10_000_000, 20_000_000)}", first

    def study(rng: np.random.Generator, patient: str, date: datetime.date, index: int, split: str) -> list[CxrImage]:
        study_id = f"s{_unique(rng, used_studies, 50_000_000, 60_000_000)}"
        kind = _study_kind_v2(rng, index)
        time = _study_time(rng, index)
        drawn = _draw_labels(rng, index)
        negbio = _negbio(rng, drawn)
        cardiomegaly, effusion = _signatures(drawn)
        out = []
        for n, position in enumerate(kind.positions):
            blank = kind.blank and n == len(kind.positions) - 1
            dicom_id = _dicom_id(rng, used_dicoms)
            path = f"files/{patient[:3]}/{patient}/{study_id}/{dicom_id}.jpg"
            metadata = {
                "dicom_id": dicom_id,
                "subject_id": patient[1:],
                "study_id": study_id[1:],
                "PerformedProcedureStepDescription": kind.procedure,
                "ViewPosition": "" if blank else position,
                "Rows": str(height),
                "Columns": str(width),
                "StudyDate": date.strftime("%Y%m%d"),
                "StudyTime": time,
                "ProcedureCodeSequence_CodeMeaning": kind.procedure,
                "ViewCodeSequence_CodeMeaning": _VIEW_MEANING[position],
                "PatientOrientationCodeSequence_CodeMeaning": kind.orientation,
            }
            out.append(
                CxrImage(
                    path=path,
                    split=split,
                    patient=patient,
                    study=study_id,
                    view=metadata["ViewPosition"],
                    projection="frontal" if position in ("PA", "AP") else "lateral",
                    labels=_in_order(drawn, MIMIC_JPG_LABELS),
                    height=height,
                    width=width,
                    cardiomegaly=cardiomegaly,
                    effusion=effusion,
                    dicom_id=dicom_id,
                    file=root / path if loose else None,
                    metadata=metadata,
                    negbio=_in_order(negbio, MIMIC_JPG_LABELS),
                    seed=_seed(rng),
                )
            )
        return out

    images: list[CxrImage] = []
    study_index = 0
    for p in range(patients):
        split = "train" if p < n_train else "validate" if p < n_train + n_validate else "test"
        patient, date = subject(good)
        for _ in range(studies_per_patient):
            images.extend(study(good, patient, date, study_index, split))
            date += datetime.timedelta(int(good.integers(1, 400)))
            study_index += 1

    csv_names = {role: root / f"mimic-cxr-2.0.0-{role}.csv.gz" for role in ("metadata", "chexpert", "negbio", "split")}
    kinds = _bad_kinds(bad_cases)
    cases: list[BadCase] = []
    written: list[Member] = [(image.path, lambda image=image: _render(image, quality)) for image in images]
    rows: list[CxrImage] = list(images)  # every image with metadata, split and label rows

    def bad_study() -> CxrImage:
        """A bad case's own record: a new train subject with one study, its first image."""
        patient, date = subject(bad)
        return study(bad, patient, date, len(_FORCED), "train")[0]

    for kind in BAD_CASE_KINDS:
        if kind not in kinds:
            continue
        if kind == "unlabelled_image":
            image = replace(bad_study(), labels={}, negbio=None, metadata={})
            written.append((image.path, lambda image=image: _render(image, quality)))
            cases.append(BadCase(kind, image.path, root / image.path, image, detail="no metadata, split or label row"))
        elif kind == "missing_image":
            image = replace(bad_study(), file=None)
            rows.append(image)
            cases.append(BadCase(kind, image.path, csv_names["metadata"], image, detail="rows, no file"))
        elif kind == "duplicate_image":
            original = images[0]
            other_study = f"s{_unique(bad, used_studies, 50_000_000, 60_000_000)}"
            path = f"files/{original.patient[:3]}/{original.patient}/{other_study}/{original.dicom_id}.jpg"
            copy = replace(original, path=path, study=other_study, file=root / path if loose else None)
            written.append((path, lambda image=original: _render(image, quality)))
            cases.append(BadCase(kind, path, root / path, copy, detail=f"dicom_id of {original.path}, same bytes"))
        elif kind in ("not_jpeg", "truncated_jpeg"):
            image = bad_study()
            rows.append(image)
            written.append((image.path, lambda image=image, kind=kind: _bad_bytes(kind, image, quality)))
            cases.append(BadCase(kind, image.path, root / image.path, image))
        elif kind == "unknown_path":
            readme = b"Synthetic MIMIC-CXR-JPG sample: not an image.\n"
            stray = replace(bad_study(), labels={})
            written.append(("files/README.txt", lambda: readme))
            written.append(("files/p10/pX/sY/img.jpg", lambda image=stray: _render(image, quality)))
            cases.append(BadCase(kind, "files/README.txt", root / "files/README.txt", None, detail="not an image"))
            stray_path = "files/p10/pX/sY/img.jpg"
            cases.append(BadCase(kind, stray_path, root / stray_path, None, detail="a JPEG at no known path"))
        elif kind == "invalid_label":
            for value in ("2.0", "yes"):
                image = bad_study()
                column = MIMIC_JPG_LABELS[int(bad.integers(len(MIMIC_JPG_LABELS)))]
                rows.append(image)
                written.append((image.path, lambda image=image: _render(image, quality)))
                cases.append(BadCase(kind, image.path, csv_names["chexpert"], image, column=column, value=value))

    tars: list[Path] = []
    if as_tars:
        groups: dict[str, list[Member]] = {}
        for member in written:
            top = member[0].split("/")[1] if member[0].count("/") > 1 else "p10"
            groups.setdefault(top, []).append(member)
        tars = [_write_tar(root / f"files_{top}{suffix}", groups[top], workers) for top in sorted(groups)]
        tar_of = {member[0]: root / f"files_{top}{suffix}" for top, group in groups.items() for member in group}
        images = [replace(image, tar=tar_of[image.path]) for image in images]

        def in_tar(case: BadCase) -> BadCase:
            tar = tar_of.get(case.path)
            if tar is None:  # a label row's image that was never written
                return case
            image = replace(case.image, tar=tar) if case.image is not None else None
            return replace(case, location=case.location if loose else tar, image=image)

        cases = [in_tar(case) for case in cases]
    if loose:
        _write_files(root, written, workers)

    invalid = _invalid_cells(cases)
    rows.sort(key=lambda image: (image.subject_id, image.study_id, image.dicom_id))
    _write_csv(csv_names["metadata"], METADATA_COLUMNS, ([i.metadata[c] for c in METADATA_COLUMNS] for i in rows))
    _write_csv(csv_names["split"], SPLIT_COLUMNS, ([i.dicom_id, i.study[1:], i.patient[1:], i.split] for i in rows))
    studies = {image.study: image for image in rows}  # one row per study; sorted, as rows are

    def label_row(image: CxrImage, labels: Labels, bad_cells: bool) -> list[str]:
        cells = {name: format_label(value) for name, value in labels.items()}
        cells = _with_bad_cells(cells, image, invalid if bad_cells else {})
        return [image.patient[1:], image.study[1:], *(cells[name] for name in MIMIC_JPG_LABELS)]

    header = ("subject_id", "study_id", *MIMIC_JPG_LABELS)
    _write_csv(csv_names["chexpert"], header, (label_row(i, i.labels, True) for i in studies.values()))
    _write_csv(csv_names["negbio"], header, (label_row(i, i.negbio or {}, False) for i in studies.values()))
    return CxrSample(
        layout="mimic-cxr-jpg",
        root=root,
        data_root=files_root,
        tars=tuple(tars),
        csvs=csv_names,
        label_names=MIMIC_JPG_LABELS,
        images=tuple(sorted(images, key=lambda image: image.path)),
        bad_cases=tuple(cases),
    )


# ---------------------------------------------------------------------------------------------------
# CheXpert


def write_chexpert(
    root: Path,
    *,
    patients: int = 4,
    studies_per_patient: int = 2,
    image_size: tuple[int, int] = DEFAULT_SIZE,
    quality: int = 95,
    seed: int = 0,
    bad_cases: bool | Collection[str] = False,
    workers: int = 1,
    small: bool = True,
) -> CxrSample:
    """CheXpert under `root`: `CheXpert-v1.0-small/` (`CheXpert-v1.0/` if not `small`) holding `train.csv`,
    `valid.csv` and `train|valid/patientNNNNN/studyN/viewN_frontal|lateral.jpg`. About a fifth of the
    patients are valid (numbered after the train ones, as in the release), their cells only 0.0/1.0."""
    _check(patients, studies_per_patient, image_size, quality)
    root = Path(root)
    height, width = image_size
    folder = "CheXpert-v1.0-small" if small else "CheXpert-v1.0"
    good, bad = _rngs(seed)
    n_train, _ = _split_counts(patients, 1)
    train_csv, valid_csv = root / folder / "train.csv", root / folder / "valid.csv"

    def patient_images(rng: np.random.Generator, number: int, split: str, first_index: int) -> list[CxrImage]:
        sex = "Male" if rng.random() < 0.5 else "Female"
        age = int(rng.integers(18, 91))
        out = []
        for s in range(studies_per_patient if first_index >= 0 else 1):
            index = first_index + s if first_index >= 0 else len(_FORCED)
            labels = _draw_labels(rng, index, definite=split == "valid")
            cardiomegaly, effusion = _signatures(labels)
            lateral = rng.random() < 0.5 or index == 0
            ap = "AP" if rng.random() < 0.7 else "PA"
            for n, view in enumerate(["Frontal", "Lateral"] if lateral else ["Frontal"], start=1):
                path = f"{folder}/{split}/patient{number:05d}/study{s + 1}/view{n}_{view.lower()}.jpg"
                out.append(
                    CxrImage(
                        path=path,
                        split=split,
                        patient=f"patient{number:05d}",
                        study=f"study{s + 1}",
                        view=view,
                        projection=view.lower(),
                        labels=_in_order(labels, CHEXPERT_LABELS),
                        height=height,
                        width=width,
                        cardiomegaly=cardiomegaly,
                        effusion=effusion,
                        file=root / path,
                        metadata={
                            "Sex": sex,
                            "Age": str(age),
                            "Frontal/Lateral": view,
                            "AP/PA": ap if view == "Frontal" else "",
                        },
                        seed=_seed(rng),
                    )
                )
        return out

    images: list[CxrImage] = []
    for p in range(patients):
        images.extend(patient_images(good, p + 1, "train" if p < n_train else "valid", p * studies_per_patient))

    kinds = _bad_kinds(bad_cases)
    cases: list[BadCase] = []
    written: list[Member] = [(image.path, lambda image=image: _render(image, quality)) for image in images]
    rows: list[CxrImage] = list(images)
    next_number = patients + 1

    def bad_image() -> CxrImage:
        nonlocal next_number
        next_number += 1
        return patient_images(bad, next_number - 1, "train", -1)[0]

    for kind in BAD_CASE_KINDS:
        if kind not in kinds:
            continue
        if kind == "unlabelled_image":
            image = replace(bad_image(), labels={})
            written.append((image.path, lambda image=image: _render(image, quality)))
            cases.append(BadCase(kind, image.path, root / image.path, image, detail="file with no CSV row"))
        elif kind == "missing_image":
            image = replace(bad_image(), file=None)
            rows.append(image)
            cases.append(BadCase(kind, image.path, train_csv, image, detail="CSV row, no file"))
        elif kind == "duplicate_image":
            original = next(image for image in images if image.split == "train")
            rows.append(original)
            cases.append(BadCase(kind, original.path, train_csv, original, detail="the same row twice in train.csv"))
        elif kind in ("not_jpeg", "truncated_jpeg"):
            image = bad_image()
            rows.append(image)
            written.append((image.path, lambda image=image, kind=kind: _bad_bytes(kind, image, quality)))
            cases.append(BadCase(kind, image.path, root / image.path, image))
        elif kind == "unknown_path":
            readme_path, stray_path = f"{folder}/train/README.txt", f"{folder}/train/patientX/studyY/img.jpg"
            stray = replace(bad_image(), labels={})
            written.append((readme_path, lambda: b"Synthetic CheXpert sample: not an image.\n"))
            written.append((stray_path, lambda image=stray: _render(image, quality)))
            cases.append(BadCase(kind, readme_path, root / readme_path, None, detail="not an image"))
            cases.append(BadCase(kind, stray_path, root / stray_path, None, detail="a JPEG at no known path"))
        elif kind == "invalid_label":
            for value in ("2.0", "yes"):
                image = bad_image()
                column = CHEXPERT_LABELS[int(bad.integers(len(CHEXPERT_LABELS)))]
                rows.append(image)
                written.append((image.path, lambda image=image: _render(image, quality)))
                cases.append(BadCase(kind, image.path, train_csv, image, column=column, value=value))

    _write_files(root, written, workers)
    invalid = _invalid_cells(cases)

    def row(image: CxrImage) -> list[str]:
        cells = _with_bad_cells(image.cells, image, invalid)
        return [image.path, *(image.metadata[c] for c in CHEXPERT_COLUMNS[1:5]), *(cells[n] for n in CHEXPERT_LABELS)]

    rows.sort(key=lambda image: _natural(image.path))
    _write_csv(train_csv, CHEXPERT_COLUMNS, (row(i) for i in rows if i.split == "train"))
    _write_csv(valid_csv, CHEXPERT_COLUMNS, (row(i) for i in rows if i.split == "valid"))
    return CxrSample(
        layout="chexpert",
        root=root,
        data_root=root / folder,
        tars=(),
        csvs={"train": train_csv, "valid": valid_csv},
        label_names=CHEXPERT_LABELS,
        images=tuple(sorted(images, key=lambda image: image.path)),
        bad_cases=tuple(cases),
    )
