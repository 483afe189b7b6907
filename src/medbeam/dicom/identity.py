"""Which instance a file holds, where its PNGs go, and which of several copies renders them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from pydicom import uid as uids
from pydicom.dataset import Dataset

#: Transfer syntaxes whose pixels are exactly the original ones.
LOSSLESS_TRANSFER_SYNTAXES = {
    uids.ImplicitVRLittleEndian,
    uids.ExplicitVRLittleEndian,
    uids.ExplicitVRBigEndian,
    uids.DeflatedExplicitVRLittleEndian,
    uids.RLELossless,
    uids.JPEGLossless,
    uids.JPEGLosslessSV1,
    uids.JPEGLSLossless,
    uids.JPEG2000Lossless,
    uids.JPEG2000MCLossless,
    uids.HTJ2KLossless,
    uids.HTJ2KLosslessRPCL,
}
#: UIDs become path segments: allow UID characters only, so a crafted value can never leave png_dir.
_SAFE_UID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")


class InstanceIdentityError(ValueError):
    """A Study/Series/SOP Instance UID holds characters that cannot be a path segment."""


@dataclass(frozen=True, order=True)
class RenderSource:
    """One file that could render an instance's PNGs; ordering puts the preferred file first."""

    lossy: bool
    path: str


def instance_key(ds: Dataset, source_uri: str) -> tuple[str, str, str]:
    """(StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID), each safe as a path segment.

    A missing UID still renders: `_no-study-uid`, `_no-series-uid`, or for the instance `_file-` + a hash
    of the source URI (unique and stable). The leading underscore can never start a real UID.
    """
    key = []
    for keyword, fallback in (
        ("StudyInstanceUID", "_no-study-uid"),
        ("SeriesInstanceUID", "_no-series-uid"),
        ("SOPInstanceUID", "_file-" + hashlib.sha1(source_uri.encode("utf-8")).hexdigest()[:20]),
    ):
        value = str(ds.get(keyword, "") or "").strip(" \x00")
        if not value:
            key.append(fallback)
            continue
        if not _SAFE_UID.match(value) or ".." in value:
            raise InstanceIdentityError(f"{keyword} {value[:80]!r} is not a usable UID")
        key.append(value)
    return key[0], key[1], key[2]


def is_lossy(ds: Dataset) -> bool:
    """Lossy if the transfer syntax is, or the header says the pixels were lossy-compressed before."""
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if transfer_syntax is not None and transfer_syntax not in LOSSLESS_TRANSFER_SYNTAXES:
        return True
    return str(ds.get("LossyImageCompression", "")).strip() == "01"


def png_paths(png_dir: str, key: tuple[str, str, str], frame_count: int) -> list[str]:
    """`{study}/{series}/{sop}.png` for one frame; `{study}/{series}/{sop}/{frame:04d}.png` (1-based) for more."""
    study, series, sop = key
    base = f"{png_dir.rstrip('/')}/{study}/{series}/{sop}"
    if frame_count == 1:
        return [base + ".png"]
    return [f"{base}/{frame:04d}.png" for frame in range(1, frame_count + 1)]
