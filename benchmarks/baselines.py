"""Baselines the export benchmark measures medbeam against.

``naive_render`` is what a one-off script would do with pydicom and Pillow, one file at a time:
``pixel_array`` → ``apply_modality_lut`` → ``apply_voi_lut`` → 0–255 → Pillow LANCZOS (when resizing) →
Pillow PNG. It must never import medbeam (medbeam registers a pydicom decoder plugin and changes pydicom's
validation mode at import; the baseline must not profit from either): ``bench_dicom_export`` runs it in a
process of its own and checks that.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def naive_render(path: Path, out_path: Path, resize: tuple[int, int] | None) -> None:
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds)
    # apply_voi_lut's windowing output spans [y_min, y_max] (PS3.3 C.11.2.1.2; pydicom's own convention)
    if ds.PixelRepresentation == 0:
        y_min, y_max = 0.0, float(2**ds.BitsStored - 1)
    else:
        y_min, y_max = float(-(2 ** (ds.BitsStored - 1))), float(2 ** (ds.BitsStored - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        y_min = y_min * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        y_max = y_max * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    img = np.clip(np.rint((arr - y_min) / (y_max - y_min) * 255.0), 0, 255).astype(np.uint8)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        img = 255 - img
    im = Image.fromarray(img)
    if resize is not None:
        im = im.resize(resize, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    out_path.write_bytes(buf.getvalue())
