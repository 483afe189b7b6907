"""A pydicom 3 decoder plugin that decodes JPEG Lossless with imagecodecs (libjpeg-turbo 3).

Why: a 2500x2048 12-bit JPEG Lossless frame decodes in ~40 ms with libjpeg-turbo's lossless support
versus ~190 ms with pylibjpeg-libjpeg and ~200 ms with GDCM (whose binding also copies the pixels out
as a Python str). The module follows pydicom's plugin contract (DECODER_DEPENDENCIES, is_available,
a frame decoding function) so pydicom still does everything around the decode: frame splitting,
sign and unused-bit correction, reshaping.

It is also registered for greyscale JPEG Extended (12-bit lossy), where pydicom tries it after its own
plugins: GDCM and Pillow refuse 12-bit lossy JPEG and pylibjpeg rejects some real-world streams
(e.g. NEMA's NM1_JPLY with out-of-range scan parameters) that libjpeg-turbo decodes.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
from pydicom import uid
from pydicom.pixels import get_decoder

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner

try:
    import imagecodecs
except ImportError:  # pragma: no cover - imagecodecs is a declared dependency
    imagecodecs = None

PLUGIN_NAME = "imagecodecs"
JPEG_LOSSLESS_SYNTAXES = (uid.JPEGLossless, uid.JPEGLosslessSV1)
SUPPORTED_SYNTAXES = (*JPEG_LOSSLESS_SYNTAXES, uid.JPEGExtended12Bit)

DECODER_DEPENDENCIES = {tsyntax: ("imagecodecs>=2024.1",) for tsyntax in SUPPORTED_SYNTAXES}

# Start-of-frame markers (SOF0-SOF15 minus DHT 0xC4, JPG 0xC8 and DAC 0xCC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field.
_STANDALONE_MARKERS = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})


def is_available(tsyntax: str) -> bool:
    """True when imagecodecs is installed with a libjpeg-turbo that decodes lossless JPEG (>= 3)."""
    if tsyntax not in DECODER_DEPENDENCIES or imagecodecs is None:
        return False
    try:
        if not imagecodecs.JPEG8.available:
            return False
        version = imagecodecs.jpeg8_version()  # e.g. "libjpeg_turbo 3.1.3/8.0"
    except Exception:  # noqa: BLE001 - an odd build simply means "not available"
        return False
    name, _, numbers = version.partition(" ")
    try:
        major = int(numbers.split(".", 1)[0])
    except ValueError:
        return False
    return name == "libjpeg_turbo" and major >= 3


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytearray:
    """Decode one JPEG frame into a new bytearray (pydicom's plugin contract).

    The samples are returned as decoded (no colour conversion: lossless JPEG never has one), 8-bit
    containers for precision <= 8, else 16-bit; the runner's bits_allocated is updated to match, as
    pydicom's own plugins do.
    """
    if runner.transfer_syntax not in JPEG_LOSSLESS_SYNTAXES and runner.samples_per_pixel != 1:
        # Lossy colour JPEG carries colour-transform conventions pydicom's own plugins handle.
        raise NotImplementedError("the imagecodecs plugin decodes lossy JPEG for greyscale only")
    header = jpeg_frame_header(src)
    if header is None:
        raise ValueError("no JPEG start-of-frame header found in the frame's codestream")
    precision, rows, columns, components = header
    rows = rows or runner.rows  # 0 rows means "given later by a DNL marker"
    if (rows, columns, components) != (runner.rows, runner.columns, runner.samples_per_pixel):
        raise ValueError(
            f"JPEG frame is {rows}x{columns}x{components} but the dataset says "
            f"{runner.rows}x{runner.columns}x{runner.samples_per_pixel}"
        )
    dtype = np.dtype(np.uint8 if precision <= 8 else np.uint16)
    shape = (rows, columns) if components == 1 else (rows, columns, components)
    buffer = bytearray(rows * columns * components * dtype.itemsize)
    out = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    colorspace = "GRAYSCALE" if components == 1 else "RGB"  # same in and out: no conversion
    imagecodecs.jpeg8_decode(src, colorspace=colorspace, outcolorspace=colorspace, out=out)

    if runner.bits_allocated != 8 * dtype.itemsize:
        runner.set_option("bits_allocated", 8 * dtype.itemsize)
    return buffer


def jpeg_frame_header(src: bytes) -> tuple[int, int, int, int] | None:
    """(precision, rows, columns, components) from a JPEG codestream's SOF marker, or None."""
    if src[:2] != b"\xff\xd8":
        return None
    position, end = 2, len(src)
    while position + 4 <= end:
        if src[position] != 0xFF:
            return None
        marker = src[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE_MARKERS:
            position += 2
            continue
        if marker in _SOF_MARKERS:
            if position + 10 > end:
                return None
            precision = src[position + 4]
            rows = int.from_bytes(src[position + 5 : position + 7], "big")
            columns = int.from_bytes(src[position + 7 : position + 9], "big")
            return precision, rows, columns, src[position + 9]
        if marker == 0xDA:  # start of scan before any frame header: not a valid stream
            return None
        position += 2 + int.from_bytes(src[position + 2 : position + 4], "big")
    return None


_registered = False
_REGISTER_LOCK = threading.Lock()


def register_decoder_plugins() -> bool:
    """Add this plugin to pydicom's JPEG Lossless and JPEG Extended decoders; safe to call many times.

    Returns True when the plugin is available for use (imagecodecs with libjpeg-turbo >= 3).
    render.py calls it before its first decode, not at import: importing medbeam leaves pydicom's plugin
    registry as it was. pydicom's add_plugin is not thread-safe, hence the lock.
    """
    global _registered
    if not _registered:
        with _REGISTER_LOCK:
            if not _registered:
                for tsyntax in SUPPORTED_SYNTAXES:
                    decoder = get_decoder(tsyntax)
                    try:
                        decoder.add_plugin(PLUGIN_NAME, (__name__, "_decode_frame"))
                    except ValueError as exc:
                        if "already has a plugin" not in str(exc):
                            raise
                _registered = True
    return all(PLUGIN_NAME in get_decoder(t).available_plugins for t in JPEG_LOSSLESS_SYNTAXES)
