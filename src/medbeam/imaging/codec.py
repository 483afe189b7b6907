"""Decode, check, resize and re-encode JPEG / PNG bytes, keeping the format (no Beam here).

Choices (measured in shared/PERF-NOTES.md): OpenCV decodes (libjpeg-turbo, libpng) and encodes JPEG;
resizing is `medbeam.imaging.resize.resize_image` (INTER_AREA when shrinking); PNG goes through
`medbeam.imaging.encode.encode_png` (OpenCV, zlib level 1 by default).

* Pixels are decoded as stored (``IMREAD_UNCHANGED``): 16-bit PNGs stay 16-bit, alpha stays, and the EXIF
  orientation of a JPEG is *not* applied — exactly what `tf.io.decode_jpeg` / `decode_png` see.
* Channel conversion (target 1 ↔ 3) uses ITU-R BT.601 luma weights (OpenCV's, the same as
  `tf.image.rgb_to_grayscale`); grey → colour replicates the channel; alpha is dropped.
* Bytes that already have the requested size and channels are returned unchanged (no JPEG generation
  loss), as are all bytes when no shape is asked for.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import cv2
import numpy as np

from medbeam.imaging.encode import encode_png
from medbeam.imaging.resize import fit_image, plan_resize

JPG, PNG = "jpg", "png"
FORMATS = (JPG, PNG)
DEFAULT_JPEG_QUALITY = 95
DEFAULT_PNG_COMPRESSION = 1

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image."""


class FormatMismatchError(ValueError):
    """The bytes are a different format than the one asked for (a PNG among the JPGs)."""


@dataclass(frozen=True)
class ImageShape:
    """Target size; channels None keeps each image's own channel count (grey stays grey)."""

    height: int
    width: int
    channels: int | None = None

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"image {name} must be a positive integer, got {value!r}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (colour), got {self.channels!r}")

    @classmethod
    def parse(cls, values: tuple[int, ...] | list[int] | None) -> ImageShape | None:
        """(H, W) or (H, W, C) → ImageShape; None → None."""
        if values is None:
            return None
        values = tuple(int(v) for v in values)
        if len(values) not in (2, 3):
            raise ValueError(f"a shape is H W or H W C, got {len(values)} numbers: {values}")
        return cls(*values)

    def as_list(self) -> list[int | None]:
        return [self.height, self.width, self.channels]


def normalize_format(fmt: str) -> str:
    value = fmt.lower().lstrip(".")
    value = {"jpeg": JPG}.get(value, value)
    if value not in FORMATS:
        raise ValueError(f"image format must be jpg or png, got {fmt!r}")
    return value


def sniff_format(data: bytes) -> str | None:
    """jpg or png from the file signature; None for anything else."""
    if data[:3] == _JPEG_MAGIC:
        return JPG
    if data[:8] == _PNG_MAGIC:
        return PNG
    return None


def _decode_bgr(data: bytes) -> np.ndarray:
    """HxW, HxWx3 (BGR) or HxWx4 (BGRA), dtype as stored; ImageDecodeError if it does not decode."""
    if not data:
        raise ImageDecodeError("empty file")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageDecodeError(f"not a decodable image ({len(data)} bytes; truncated or corrupt)")
    return img


def decode_image(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG bytes into HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA), dtype as stored."""
    img = _decode_bgr(data)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    return img


def channels_of(img: np.ndarray) -> int:
    return 1 if img.ndim == 2 else img.shape[2]


def convert_channels(img: np.ndarray, channels: int | None, order: str = "rgb") -> np.ndarray:
    """To 1 channel (HxW) or 3 channels (HxWx3, in `order`), dropping alpha; None keeps the image as is."""
    if channels is None:
        return img
    have = channels_of(img)
    if have == 1 and img.ndim == 3:
        img, have = img[:, :, 0], 1
    if channels == 1:
        if have == 1:
            return img
        code = {
            ("rgb", 3): cv2.COLOR_RGB2GRAY,
            ("bgr", 3): cv2.COLOR_BGR2GRAY,
            ("rgb", 4): cv2.COLOR_RGBA2GRAY,
            ("bgr", 4): cv2.COLOR_BGRA2GRAY,
        }[(order, have)]
        return cv2.cvtColor(img, code)
    if channels == 3:
        if have == 3:
            return img
        if have == 4:
            return np.ascontiguousarray(img[:, :, :3])
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)  # replication: the same for either order
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def encode_jpeg(img: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY, order: str = "rgb") -> bytes:
    """Baseline JPEG (4:2:0 for colour) of an 8-bit grey or 3-channel image at `quality` 1-100."""
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be an integer 1-100, got {quality!r}")
    if img.dtype != np.uint8:
        raise ValueError(f"JPEG holds 8-bit samples, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        if img.shape[2] != 3:
            raise ValueError(f"JPEG holds 1 or 3 channels, got shape {img.shape}")
        if order == "rgb":
            img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {img.dtype} image of shape {img.shape} as JPEG")
    return buffer.tobytes()


def check_format(data: bytes, fmt: str) -> None:
    """FormatMismatchError unless the bytes' signature is the expected format's."""
    found = sniff_format(data)
    if found != fmt:
        what = f"a {found.upper()} file" if found else "not a JPEG or PNG file"
        raise FormatMismatchError(f"expected {fmt.upper()}, found {what}")


def transcode(
    data: bytes,
    fmt: str,
    shape: ImageShape | None = None,
    *,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    png_compression: int = DEFAULT_PNG_COMPRESSION,
    verify: bool = True,
    resize_mode: str = "stretch",
) -> bytes:
    """Check `data` is a `fmt` image, resize/convert it to `shape`, and encode it in the same format.

    Without a shape the bytes come back unchanged, after a full decode when `verify` (else only the file
    signature is checked). `resize_mode` (stretch, pad, crop: see medbeam.imaging.resize) says how an
    image of another aspect ratio reaches the shape; padding is black. Raises FormatMismatchError or
    ImageDecodeError for bad input; ValueError from the encoder (e.g. a 16-bit image asked to become JPEG
    cannot happen: JPEG input is 8-bit).
    """
    fmt = normalize_format(fmt)
    check_format(data, fmt)
    if shape is None and not verify:
        return data
    img = _decode_bgr(data)
    if shape is None:
        return data
    have = channels_of(img)
    if img.shape[:2] == (shape.height, shape.width) and shape.channels in (None, have):
        return data
    if shape.channels == 1 or (shape.channels == 3 and have == 4):
        img = convert_channels(img, shape.channels, order="bgr")  # fewer channels to resize
    img = fit_image(img, shape.height, shape.width, resize_mode)
    img = convert_channels(img, shape.channels, order="bgr")
    if fmt == JPG:
        return encode_jpeg(img, jpeg_quality, order="bgr")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return encode_png(img, png_compression)


def shrink_jpeg(
    data: bytes, height: int, width: int, *, resize_mode: str = "stretch", quality: int = DEFAULT_JPEG_QUALITY
) -> bytes:
    """JPEG bytes → a height × width JPEG, grey staying grey: decoded at the smallest libjpeg DCT scale
    (1/2, 1/4, 1/8) that still covers the target (Pillow's `draft`), then the anti-aliased area resize.

    Why: a 3000 × 2500 quality-95 chest X-ray to 320 × 320 spends most of its time decoding; DCT scaling
    skips most of the inverse transform and all of the full-size pixels (PERF-NOTES: 33 ms vs 45 ms per
    image, one core). The scaled decode is itself an average over 2^k × 2^k blocks, so the result is as
    smooth as a full decode + area resize. Raises FormatMismatchError or ImageDecodeError for bad input.
    """
    from PIL import Image, UnidentifiedImageError

    check_format(data, JPG)
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode not in ("L", "RGB"):
                img.draft("RGB", None)
            plan = plan_resize(img.height, img.width, height, width, resize_mode)
            crop_h, crop_w = plan.crop[2], plan.crop[3]
            shrink = max(1.0, min(crop_h / plan.inner[0], crop_w / plan.inner[1]))
            img.draft(img.mode, (math.ceil(img.width / shrink), math.ceil(img.height / shrink)))
            # One decoder call over the whole file, not one per 64 KiB (Pillow's default): each call re-joins
            # the unconsumed bytes; ~2 ms less per 1.8 MB JPEG, and one GIL release instead of ~28.
            img.decodermaxblock = max(len(data), 1 << 16)
            pixels = np.asarray(img.convert("L" if img.mode == "L" else "RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"not a decodable JPEG ({len(data)} bytes): {exc}") from None
    return encode_jpeg(fit_image(pixels, height, width, resize_mode), quality, order="rgb")
