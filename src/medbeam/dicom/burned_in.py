"""Burned-in text: which instances to check, find text in their pixels (Tesseract OCR), fill it, re-encode.

No Beam. Why Tesseract (the Debian package `tesseract-ocr`, run as a process): it is a mature OCR engine
whose models come with the package (nothing is fetched at run time), it runs on CPU anywhere the package
is installed (a worker image on a cluster), and speaking to it through its TSV output needs no Python
binding. An ONNX OCR from PyPI would ship its models too, but detects scene text with larger models and
more CPU per image; for the overlays of ultrasound and secondary captures (printed, horizontal text)
Tesseract's sparse-text mode finds the words and their boxes.

Safety rule: an instance that should be checked and cannot be (pixels that do not decode, a transfer
syntax we cannot write again, OCR that fails) raises RedactionError and is rejected by the caller; it is
never passed through unredacted. Lossless stays lossless: uncompressed pixels are rewritten as they were,
RLE / JPEG 2000 / JPEG-LS are encoded again in the same syntax (pydicom's encoders; lossy JPEG 2000 at
PSNR 80 dB), JPEG Lossless (which pydicom cannot write) as RLE Lossless, lossy JPEG baseline again as
JPEG baseline (Pillow), still marked lossy. JPEG extended (12-bit lossy) cannot be written: rejected.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
from pydicom import uid as uids
from pydicom.dataset import Dataset

NONE, FLAGGED, ALL = "none", "flagged", "all"
MODES = (NONE, FLAGGED, ALL)
#: Modalities whose images usually carry text in their pixels.
TEXT_MODALITIES = frozenset({"US", "SC", "OT", "XC", "ES", "GM", "DOC", "SM", "IVUS"})
#: SOP classes that usually carry text: ultrasound, secondary capture, VL photographs, documents.
TEXT_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.6.1",  # US Image
        "1.2.840.10008.5.1.4.1.1.3.1",  # US Multi-frame
        "1.2.840.10008.5.1.4.1.1.6",  # US Image (retired)
        "1.2.840.10008.5.1.4.1.1.3",  # US Multi-frame (retired)
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
        "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic
        "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL Endoscopic
    }
)
#: Encapsulated documents (PDF, CDA, STL, …): their content cannot be checked here, so they are rejected.
DOCUMENT_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.104."
#: Words OCR reads with at least this confidence (0–100) are filled; low-confidence noise is left.
MIN_CONFIDENCE = 20.0
#: Pixels added around each word box.
PAD = 3
#: Images narrower than this are upscaled ×2 for OCR (small overlay fonts read better).
UPSCALE_BELOW = 1024
_REENCODED = {
    uids.RLELossless,
    uids.JPEG2000Lossless,
    uids.JPEGLSLossless,
    uids.JPEG2000,
    uids.JPEGLSNearLossless,
}
#: Lossless syntaxes pydicom cannot write (JPEG Lossless; JPEG-LS without pyjpegls): written as RLE Lossless.
_LOSSLESS_FALLBACK = {uids.JPEGLossless, uids.JPEGLosslessSV1, uids.JPEGLSLossless}
#: Quality of a lossy JPEG 2000 written again (PSNR, dB): visually the same, still lossy.
J2K_PSNR = 80.0


class RedactionError(ValueError):
    """The pixels could not be checked or written again; the instance must be rejected. No values inside."""


@dataclass(frozen=True)
class Box:
    left: int
    top: int
    width: int
    height: int


def tesseract_path() -> str | None:
    return shutil.which("tesseract")


def ocr_problem() -> str | None:
    """Why OCR cannot run here (no tesseract, or no English model), or None: checked once before a run."""
    exe = tesseract_path()
    if exe is None:
        return "Tesseract is not installed"
    try:
        done = subprocess.run([exe, "--list-langs"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"tesseract does not run ({type(exc).__name__})"
    langs = done.stdout.decode(errors="replace").split()
    return None if "eng" in langs else "Tesseract has no English model (package tesseract-ocr-eng)"


def is_document(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")).startswith(DOCUMENT_SOP_PREFIX) or "EncapsulatedDocument" in ds


def needs_check(ds: Dataset, mode: str) -> bool:
    """Should this instance's pixels be searched for text under `mode`?"""
    if mode == NONE or "PixelData" not in ds:
        return False
    if mode == ALL:
        return True
    return (
        str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"
        or str(ds.get("Modality", "")).strip().upper() in TEXT_MODALITIES
        or str(ds.get("SOPClassUID", "")).strip() in TEXT_SOP_CLASSES
    )


def ocr_boxes(gray: np.ndarray, timeout: float = 120.0) -> list[Box]:
    """Word boxes Tesseract finds in an 8-bit grey image (sparse text mode), in the image's coordinates."""
    from PIL import Image

    exe = tesseract_path()
    if exe is None:
        raise RedactionError("tesseract is not installed (scripts/ensure-tesseract.sh); cannot check for text")
    scale = 2 if gray.shape[1] < UPSCALE_BELOW else 1
    image = Image.fromarray(gray)
    if scale != 1:
        image = image.resize((gray.shape[1] * scale, gray.shape[0] * scale), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    try:
        done = subprocess.run(
            [exe, "stdin", "stdout", "--psm", "11", "-l", "eng", "tsv"],
            input=buffer.getvalue(),
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RedactionError(f"OCR failed ({type(exc).__name__})") from None
    if done.returncode != 0:
        raise RedactionError(f"OCR failed (tesseract exit status {done.returncode})")
    boxes = []
    for row in csv.DictReader(
        io.StringIO(done.stdout.decode("utf-8", "replace")), delimiter="\t", quoting=csv.QUOTE_NONE
    ):
        text = (row.get("text") or "").strip()
        try:
            conf = float(row.get("conf") or -1)
        except ValueError:
            continue
        if not text or conf < MIN_CONFIDENCE or not any(c.isalnum() for c in text):
            continue
        left, top, width, height = (int(row[k]) // scale for k in ("left", "top", "width", "height"))
        boxes.append(Box(left, top, max(1, width), max(1, height)))
    return boxes


def _to_gray8(frame: np.ndarray) -> np.ndarray:
    """A frame as 8-bit grey for OCR: colour averaged, values stretched min–max."""
    values = frame.astype(np.float32)
    if values.ndim == 3:
        values = values.mean(axis=2)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return ((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _frames(ds: Dataset) -> np.ndarray:
    """All frames as (frames, rows, cols[, samples]), colour as RGB."""
    try:
        array = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure means: cannot be checked
        raise RedactionError(f"pixel data cannot be decoded ({type(exc).__name__})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        array = array[np.newaxis]
    if array.ndim != (4 if samples > 1 else 3):
        raise RedactionError("pixel data has an unexpected shape")
    return array


def ensure_transfer_syntax(ds: Dataset) -> uids.UID:
    """The dataset's transfer syntax; a bare dataset (no file meta) gets the one it was read in, so that
    its pixels can be decoded."""
    from pydicom.dataset import FileMetaDataset

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = getattr(ds, "original_encoding", (False, True))
        meta.TransferSyntaxUID = (
            uids.ImplicitVRLittleEndian
            if implicit
            else (uids.ExplicitVRLittleEndian if little else uids.ExplicitVRBigEndian)
        )
    return meta.TransferSyntaxUID


def redact(ds: Dataset) -> int:
    """Fill every text box OCR finds in `ds`'s frames and write the pixels back; returns the box count.

    Raises RedactionError when the instance cannot be checked or written again.
    """
    syntax = ensure_transfer_syntax(ds)
    if int(ds.get("BitsAllocated", 8)) == 1:
        raise RedactionError("1-bit pixel data cannot be redacted")
    writable = _REENCODED | _LOSSLESS_FALLBACK | {uids.JPEGBaseline8Bit}
    if syntax is not None and syntax.is_compressed and syntax not in writable:
        raise RedactionError(f"pixels in {syntax.name} cannot be written again after redaction")
    frames = np.array(_frames(ds), copy=True)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    fill = frames.max() if photometric == "MONOCHROME1" else frames.min()
    total = 0
    rows, cols = frames.shape[1], frames.shape[2]
    for index in range(frames.shape[0]):
        for box in ocr_boxes(_to_gray8(frames[index])):
            top, left = max(0, box.top - PAD), max(0, box.left - PAD)
            bottom, right = min(rows, box.top + box.height + PAD), min(cols, box.left + box.width + PAD)
            frames[index, top:bottom, left:right] = fill
            total += 1
    if total:
        _write_pixels(ds, frames, syntax, photometric)
    return total


def _write_pixels(ds: Dataset, frames: np.ndarray, syntax: uids.UID | None, photometric: str) -> None:
    array = frames[0] if frames.shape[0] == 1 and int(ds.get("NumberOfFrames", 1) or 1) == 1 else frames
    if syntax is None or not syntax.is_compressed:
        if photometric.startswith("YBR"):  # decoded as RGB: written back as RGB
            ds.PhotometricInterpretation = "RGB"
        data = array
        if int(ds.get("SamplesPerPixel", 1) or 1) > 1 and int(ds.get("PlanarConfiguration", 0) or 0) == 1:
            data = np.moveaxis(array, -1, -3)  # colour-by-plane
        dtype = np.dtype(f"{'i' if int(ds.get('PixelRepresentation', 0)) else 'u'}{int(ds.BitsAllocated) // 8}")
        raw = np.ascontiguousarray(data.astype(dtype.newbyteorder("<" if syntax != uids.ExplicitVRBigEndian else ">")))
        payload = raw.tobytes()
        ds.PixelData = payload + (b"\0" if len(payload) % 2 else b"")
        return
    if syntax == uids.JPEGBaseline8Bit:
        _write_jpeg_baseline(ds, frames)
        return
    target, extra = syntax, {}
    if syntax in _LOSSLESS_FALLBACK and not _can_encode(syntax):
        target = uids.RLELossless  # still lossless; the syntax changes, the pixels do not
    if target == uids.JPEG2000:
        extra = {"j2k_psnr": [J2K_PSNR]}
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        ds.PhotometricInterpretation = "RGB"  # decoded as RGB (YBR_ICT/RCT/FULL converted)
        ds.PlanarConfiguration = 0
    try:
        ds.compress(target, array, generate_instance_uid=False, **extra)
    except Exception as exc:  # noqa: BLE001
        raise RedactionError(f"pixels could not be encoded again in {target.name} ({type(exc).__name__})") from None


def _can_encode(syntax: uids.UID) -> bool:
    from pydicom.pixels import get_encoder

    try:
        return get_encoder(syntax).is_available
    except NotImplementedError:  # pydicom has no encoder for it at all (JPEG Lossless)
        return False


def _write_jpeg_baseline(ds: Dataset, frames: np.ndarray) -> None:
    """Lossy in, lossy out: each frame JPEG-encoded again (quality 95), colour as YBR_FULL_422."""
    from PIL import Image
    from pydicom.encaps import encapsulate

    if int(ds.get("BitsAllocated", 8)) != 8:
        raise RedactionError("JPEG baseline pixels other than 8-bit cannot be written again")
    encoded = []
    colour = frames.ndim == 4
    for frame in frames:
        buffer = io.BytesIO()
        image = Image.fromarray(frame.astype(np.uint8), "RGB" if colour else "L")
        image.save(buffer, format="JPEG", quality=95, subsampling=1 if colour else 0)
        encoded.append(buffer.getvalue())
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    if colour:
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PlanarConfiguration = 0
    ds.LossyImageCompression = "01"
