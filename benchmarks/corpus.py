"""The export benchmark's synthetic DICOM corpus, and the page-cache helpers its timings rely on.

Used by ``bench_dicom_export`` and ``bench_overheads`` (which times on the same X-rays). Deterministic
(seeded, UIDs derived from ``UID_SALT``), generated once under ``OUT/corpus-v1`` and kept between runs:
chest-X-ray-like DX images 2500×2048, 12 bits stored in 16, with WindowCenter/WindowWidth, every fourth
one MONOCHROME1, once uncompressed (Explicit VR Little Endian) and once JPEG Lossless SV1 (same pixels);
and CT slices 512×512 int16 with RescaleIntercept −1024. Bump ``CORPUS_VERSION`` whenever what is written
changes, so that a cached corpus of the old kind is not reused.

Importing this module must not import medbeam: the naive baseline's process uses it too (see
``bench_dicom_export.phase_naive``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

CORPUS_VERSION = "v1"
SEED = 20261122
UID_SALT = "medbeam-bench-" + CORPUS_VERSION

XRAY_ROWS, XRAY_COLS = 2500, 2048
CT_SIZE = 512
CT_SLICES_PER_SERIES = 100

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[UID_SALT, *map(str, parts)])


def xray_pixels(index: int) -> tuple[np.ndarray, float, float]:
    """A chest-X-ray-like 12-bit image (as displayed: MONOCHROME2 sense) + a window (center, width).

    Smooth low-frequency anatomy (torso gradient, two lung fields, mediastinum/spine, rib arcs, random
    blobs) built on a 1/8 grid and upsampled, plus mild Gaussian noise at full resolution, so it
    compresses like a real radiograph (JPEG Lossless ≈ 2.5:1), unlike white noise.
    """
    import cv2

    rng = np.random.default_rng([SEED, 1, index])
    h, w = XRAY_ROWS // 8, XRAY_COLS // 8
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= h
    xx /= w
    base = rng.uniform(1500, 2000)
    img = base + rng.uniform(400, 800) * yy - rng.uniform(200, 500) * (xx - 0.5) ** 2
    # soft tissue falls off towards the edges of the detector
    img -= 900 * np.clip(np.abs(xx - 0.5) - 0.38, 0, None) * 8
    # lung fields (darker), slightly different per image
    for cx in (0.5 - rng.uniform(0.17, 0.23), 0.5 + rng.uniform(0.17, 0.23)):
        d = ((xx - cx) / rng.uniform(0.15, 0.2)) ** 2 + ((yy - rng.uniform(0.4, 0.5)) / rng.uniform(0.25, 0.33)) ** 2
        img -= rng.uniform(800, 1100) * np.exp(-(d**2))
    # mediastinum / spine (brighter vertical band), heart shadow
    img += rng.uniform(500, 800) * np.exp(-(((xx - 0.5) / 0.06) ** 2))
    img += 400 * np.exp(-(((xx - 0.55) / 0.1) ** 2 + ((yy - 0.62) / 0.12) ** 2))
    # rib arcs
    img += rng.uniform(80, 180) * np.sin(yy * 55 + 14 * (xx - 0.5) ** 2 * 10) * (np.abs(xx - 0.5) > 0.07)
    # blobs (nodules, devices, clavicles ...)
    for _ in range(int(rng.integers(8, 20))):
        cx, cy = rng.uniform(0.1, 0.9, size=2)
        r = rng.uniform(0.008, 0.06)
        img += rng.uniform(-300, 600) * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / r**2))
    big = cv2.resize(img.astype(np.float32), (XRAY_COLS, XRAY_ROWS), interpolation=cv2.INTER_CUBIC)
    noise = rng.standard_normal(size=big.shape, dtype=np.float32)
    big += noise * np.float32(rng.uniform(8, 14))
    arr = np.clip(np.rint(big), 0, 4095).astype(np.uint16)
    center = float(round(rng.uniform(1700, 2200)))
    width = float(round(rng.uniform(2200, 3000)))
    return arr, center, width


def ct_pixels(series: int, k: int) -> np.ndarray:
    """A 512×512 CT slice in HU (float32): air, body ellipse, lungs, organs, spine, table, noise."""
    rng = np.random.default_rng([SEED, 2, series, k])
    z = k / CT_SLICES_PER_SERIES
    yy, xx = np.mgrid[0:CT_SIZE, 0:CT_SIZE].astype(np.float32)
    yy = (yy - CT_SIZE / 2) / (CT_SIZE / 2)
    xx = (xx - CT_SIZE / 2) / (CT_SIZE / 2)
    hu = np.full((CT_SIZE, CT_SIZE), -1000.0, np.float32)
    body = (xx / 0.85) ** 2 + (yy / (0.62 + 0.03 * np.sin(series))) ** 2 <= 1
    hu[body] = -80  # fat
    muscle = (xx / 0.78) ** 2 + (yy / 0.55) ** 2 <= 1
    hu[muscle] = 45
    lung_r = 0.25 * np.sin(np.pi * min(max(z, 0.05), 0.95)) + 0.05
    for cx in (-0.38, 0.38):
        lung = ((xx - cx) / (lung_r + 0.05)) ** 2 + ((yy + 0.05) / (lung_r + 0.12)) ** 2 <= 1
        hu[lung] = -850
    hu += 60 * np.exp(-((xx - 0.05) ** 2 + (yy + 0.05) ** 2) / 0.03) * (z > 0.3)  # heart / liver
    spine = (xx / 0.09) ** 2 + ((yy - 0.42) / 0.09) ** 2 <= 1
    hu[spine] = 650
    hu[(xx / 0.05) ** 2 + ((yy - 0.42) / 0.05) ** 2 <= 1] = 250  # marrow
    hu[(np.abs(yy - 0.8) < 0.015) & (np.abs(xx) < 0.9)] = 300  # table
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(-0.5, 0.5, size=2)
        r = rng.uniform(0.01, 0.05)
        hu += rng.uniform(-100, 250) * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / r**2)) * body
    hu += rng.standard_normal(size=hu.shape, dtype=np.float32) * 12
    return hu


def _base_dataset(sop_class: str, sop_uid: str, transfer_syntax: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.Manufacturer = "medbeam synthetic benchmark corpus"
    ds.ReferringPhysicianName = ""
    ds.SamplesPerPixel = 1
    return ds


def _save(ds, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)


def write_xray(index: int, raw_path: Path | None, jpll_path: Path | None) -> None:
    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1

    arr, center, width = xray_pixels(index)
    mono1 = index % 4 == 1
    if mono1:  # stored inverted, displayed inverted again: same picture as MONOCHROME2
        arr = 4095 - arr
        center = 4095 - center
    for path, ts in ((raw_path, ExplicitVRLittleEndian), (jpll_path, JPEGLosslessSV1)):
        if path is None:
            continue
        tag = "raw" if ts == ExplicitVRLittleEndian else "jpll"
        sop = _uid("xray", tag, index, "sop")
        ds = _base_dataset(DX_SOP_CLASS, sop, ts)
        ds.PatientName = f"Synthetic^Chest{index:04d}"
        ds.PatientID = f"BENCH-XR-{tag}-{index:04d}"
        ds.PatientBirthDate = ""
        ds.PatientSex = "MF"[index % 2]
        ds.StudyInstanceUID = _uid("xray", tag, index, "study")
        ds.SeriesInstanceUID = _uid("xray", tag, index, "series")
        ds.StudyID = f"{index}"
        ds.AccessionNumber = f"XR{index:06d}"
        ds.SeriesNumber = 1
        ds.InstanceNumber = 1
        ds.Modality = "DX"
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = "PA"
        ds.PatientOrientation = ["L", "F"]
        ds.ImagerPixelSpacing = [0.139, 0.139]
        ds.PixelSpacing = [0.139, 0.139]
        ds.Rows, ds.Columns = arr.shape
        ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = center
        ds.WindowWidth = width
        ds.VOILUTFunction = "LINEAR"
        if ts == ExplicitVRLittleEndian:
            ds.PixelData = arr.tobytes()
            ds["PixelData"].VR = "OW"
        else:
            frame = imagecodecs.jpeg8_encode(arr, lossless=True, predictor=1, bitspersample=12)
            ds.PixelData = encapsulate([bytes(frame)])
            ds["PixelData"].VR = "OB"
            ds.LossyImageCompression = "00"
        _save(ds, path)


def write_ct(series: int, k: int, path: Path) -> None:
    from pydicom.uid import ExplicitVRLittleEndian

    hu = ct_pixels(series, k)
    stored = np.clip(np.rint(hu + 1024), -1024, 3071).astype(np.int16)
    sop = _uid("ct", series, k, "sop")
    ds = _base_dataset(CT_SOP_CLASS, sop, ExplicitVRLittleEndian)
    ds.PatientName = f"Synthetic^Chest{series:04d}"
    ds.PatientID = f"BENCH-CT-{series:04d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "MF"[series % 2]
    ds.StudyInstanceUID = _uid("ct", series, "study")
    ds.SeriesInstanceUID = _uid("ct", series, "series")
    ds.FrameOfReferenceUID = _uid("ct", series, "for")
    ds.StudyID = f"{series}"
    ds.AccessionNumber = f"CT{series:06d}"
    ds.SeriesNumber = 2
    ds.InstanceNumber = k + 1
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BodyPartExamined = "CHEST"
    ds.KVP = 120
    ds.SliceThickness = 1.25
    ds.PixelSpacing = [0.7, 0.7]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-179.2, -179.2, -1.25 * k]
    ds.SliceLocation = -1.25 * k
    ds.Rows = ds.Columns = CT_SIZE
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    if series % 3 == 2:
        ds.WindowCenter, ds.WindowWidth = -600, 1500  # lung
    else:
        ds.WindowCenter, ds.WindowWidth = 40, 400  # soft tissue
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    _save(ds, path)


def _xray_name(kind: str, i: int) -> str:
    return f"xr_{kind}_{i:04d}.dcm"


def _ct_name(i: int) -> str:
    return f"ct_s{i // CT_SLICES_PER_SERIES:03d}_{i % CT_SLICES_PER_SERIES:03d}.dcm"


def ensure_corpus(root: Path, n_xray: int, n_ct: int) -> dict[str, list[Path]]:
    """Generate (or reuse) ``n_xray`` raw + ``n_xray`` JPEG Lossless X-rays and ``n_ct`` CT slices."""
    xr_dir = root / "xray"
    ct_dir = root / "ct"
    xr_dir.mkdir(parents=True, exist_ok=True)
    ct_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    made = 0
    for i in range(n_xray):
        raw, jpll = xr_dir / _xray_name("raw", i), xr_dir / _xray_name("jpll", i)
        if not (raw.exists() and jpll.exists()):
            write_xray(i, None if raw.exists() else raw, None if jpll.exists() else jpll)
            made += 1
            print(f"\r  corpus: X-ray {i + 1}/{n_xray}", end="", flush=True)
    for i in range(n_ct):
        p = ct_dir / _ct_name(i)
        if not p.exists():
            write_ct(i // CT_SLICES_PER_SERIES, i % CT_SLICES_PER_SERIES, p)
            made += 1
            if made % 50 == 0:
                print(f"\r  corpus: CT {i + 1}/{n_ct}      ", end="", flush=True)
    if made:
        print(f"\r  corpus: generated {made} file(s) in {time.perf_counter() - t0:.1f} s" + " " * 20)
    return {
        "raw": [xr_dir / _xray_name("raw", i) for i in range(n_xray)],
        "jpll": [xr_dir / _xray_name("jpll", i) for i in range(n_xray)],
        "ct": [ct_dir / _ct_name(i) for i in range(n_ct)],
    }


def make_set(sets_root: Path, name: str, files: list[Path]) -> Path:
    """A directory of hard links to exactly ``files`` (so a glob selects exactly this subset)."""
    d = sets_root / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for f in files:
        try:
            os.link(f, d / f.name)
        except OSError:
            shutil.copy2(f, d / f.name)
    return d


def prefetch(files: dict[str, list[Path]]) -> None:
    """Read every corpus file once so that no timed run pays for cold disk reads."""
    for paths in files.values():
        for p in paths:
            with open(p, "rb") as f:
                while f.read(1 << 22):
                    pass


def verify_corpus(files: dict[str, list[Path]]) -> None:
    """Cheap sanity check on one file of each kind: decodable, expected shape/dtype, JPEG == raw."""
    import pydicom

    raw = pydicom.dcmread(files["raw"][0])
    jpll = pydicom.dcmread(files["jpll"][0])
    a, b = raw.pixel_array, jpll.pixel_array
    assert a.shape == (XRAY_ROWS, XRAY_COLS) and a.dtype == np.uint16, (a.shape, a.dtype)
    assert np.array_equal(a, b), "JPEG Lossless round trip differs from the raw pixels"
    assert int(a.max()) <= 4095
    assert jpll.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    ct = pydicom.dcmread(files["ct"][0])
    c = ct.pixel_array
    assert c.shape == (CT_SIZE, CT_SIZE) and c.dtype == np.int16, (c.shape, c.dtype)


def warm_cache(files: list[Path]) -> None:
    """Read this run's own files just before timing it (not timed). This VM keeps only ~1 GB of page
    cache (DAMON reclaim), so an up-front prefetch of the whole corpus does not survive: without this,
    whichever loop runs on evicted files pays disk reads (~30 ms per 10 MB X-ray) that the other does not."""
    prefetch({"run": list(files)})
