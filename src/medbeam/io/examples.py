"""The tf.train.Example contracts medbeam writes, after Google's pipelines (pure: no Beam).

DICOM PNG records: ``study``, ``series``, ``instance`` (bytes) and ``png_bytes``, as Google's png_to_tfrecord
wrote them, plus ``frame`` (int64, 1-based). Generic image records: ``path`` and ``jpg_bytes`` or
``png_bytes``, plus one feature per label column (medbeam.io.labels). Also the dataset-level names: the
output prefix, where its rejects table goes, and which reject stage an image failure belongs to.
"""

from __future__ import annotations

import os
import re
from typing import Any

from medbeam.imaging.codec import (
    JPG,
    PNG,
    FormatMismatchError,
    ImageDecodeError,
    ImageShape,
)
from medbeam.io import files
from medbeam.io import tfrecord as tfr

#: The image feature of a generic image record, by format.
IMAGE_FEATURES = {JPG: "jpg_bytes", PNG: "png_bytes"}


_FRAME = re.compile(r"^(\d{1,9})\.png$", re.IGNORECASE)


def dicom_png_example(study: str, series: str, instance: str, png_bytes: bytes, frame: int = 1) -> bytes:
    """One serialized tf.train.Example with Google's features (study, series, instance, png_bytes) + frame.

    `frame` is 1-based; single-frame instances are frame 1. The DICOM export's --tfrecord-prefix calls this.
    """
    return tfr.encode_example(
        {
            "study": tfr.bytes_feature(study),
            "series": tfr.bytes_feature(series),
            "instance": tfr.bytes_feature(instance),
            "frame": tfr.int64_feature(frame),
            "png_bytes": tfr.bytes_feature(png_bytes),
        }
    )


def dicom_png_feature_specs(shape: ImageShape | None, resize_mode: str = "stretch") -> list[tfr.FeatureSpec]:
    image = {"format": PNG, "height": None, "width": None, "channels": None}
    if shape is not None:
        image.update(height=shape.height, width=shape.width, channels=shape.channels, resize_mode=resize_mode)
    return [
        tfr.FeatureSpec("study", "string", description="StudyInstanceUID"),
        tfr.FeatureSpec("series", "string", description="SeriesInstanceUID"),
        tfr.FeatureSpec("instance", "string", description="SOPInstanceUID"),
        tfr.FeatureSpec("frame", "int64", description="1-based frame number (1 for single-frame instances)"),
        tfr.FeatureSpec("png_bytes", "string", description="PNG-encoded pixels", image=image),
    ]


class LayoutError(ValueError):
    """A file under the input that is not where `medbeam dicom export` puts its PNGs."""


def parse_png_path(relative: str) -> tuple[str, str, str, int]:
    """`study/series/sop.png` → (study, series, sop, 1); `study/series/sop/0007.png` → (…, sop, 7)."""
    parts = relative.split("/")
    if len(parts) == 3 and parts[2].lower().endswith(".png") and len(parts[2]) > 4:
        return parts[0], parts[1], parts[2][:-4], 1
    if len(parts) == 4:
        match = _FRAME.match(parts[3])
        if match and int(match.group(1)) >= 1:
            return parts[0], parts[1], parts[2], int(match.group(1))
    raise LayoutError(
        f"{relative!r} is not {{study}}/{{series}}/{{instance}}.png "
        "nor {study}/{series}/{instance}/{frame}.png"
    )


def normalize_output(prefix: str) -> str:
    tfr.check_prefix(prefix)
    return prefix if files.has_scheme(prefix) else os.path.abspath(os.path.expanduser(prefix))


def tables_dir(prefix: str) -> str:
    """A dataset's own table folder, ``{prefix}_tables/``: one per dataset, so train and valid never mix."""
    return f"{prefix}_tables"


def rejects_location(prefix: str) -> tuple[str, str]:
    """(table_dir, table name) of a dataset's rejects table: ``{prefix}_tables/rejects/``, named `rejects`
    as in every job."""
    return tables_dir(prefix), "rejects"


def record_stats(features: dict[str, Any]) -> dict[str, int]:
    stats = {"records_written": 1}
    stats.update({tfr.present_key(name): 1 for name, value in features.items() if value is not None})
    return stats


def transcode_stage(exc: Exception) -> str:
    return "decode" if isinstance(exc, (ImageDecodeError, FormatMismatchError)) else "resize"
