"""Part 10 inspection, without Beam: is a file a complete DICOM instance a store can take, and which one?

A header-only read (values left on disk keep their offsets) tells a truncated copy (IncompleteFileError)
and a dataset without usable UIDs (NotSendableError) from a sendable one (a FileRef: path, size, UIDs,
Part 10 or bare, lossy or not). `part10_bytes` wraps a bare dataset as the Part 10 file STOW-RS requires;
`choose_copy` picks the one file to send among copies of one instance.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

from pydicom import uid as uids
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset

from medbeam.dicom.identity import is_lossy
from medbeam.dicom.reader import has_dicm_prefix, read_dataset

_UNDEFINED_LENGTH = 0xFFFFFFFF
_USABLE_UID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")


class FileRef(NamedTuple):
    """One input file that holds a sendable instance: where it is and which instance it holds."""

    path: str
    size: int
    study: str
    series: str
    sop: str
    part10: bool
    lossy: bool
    #: Other input files with the same SOP Instance UID: not sent, they share this file's fate.
    copies: tuple[str, ...] = ()


class IncompleteFileError(ValueError):
    """The file ends before the data its header announces (truncated copy)."""


class NotSendableError(ValueError):
    """A DICOM dataset a store cannot take: a UID that identifies it is missing or unusable."""


def check_complete(ds: Dataset, size: int) -> None:
    """Raise IncompleteFileError if a top-level value runs past the end of the file (`size` bytes).

    Works on a header-only read: values left on disk keep their offsets, so nothing large is loaded.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == uids.DeflatedExplicitVRLittleEndian:
        return  # offsets are in the inflated stream; a cut deflate stream fails to parse anyway
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields elements, and would read deferred values
        element = ds.get_item(tag, keep_deferred=True)
        if not isinstance(element, RawDataElement) or element.length == _UNDEFINED_LENGTH:
            continue
        if element.value is None:
            end = element.value_tell + element.length
            if end > size:
                raise IncompleteFileError(f"truncated: element {tag} needs bytes up to {end}, the file has {size}")
        elif isinstance(element.value, bytes) and len(element.value) < element.length:
            raise IncompleteFileError(
                f"truncated: element {tag} announces {element.length} bytes, the file holds {len(element.value)}"
            )


def _uid(ds: Dataset, keyword: str, fallback: Any = None) -> str:
    value = str(ds.get(keyword, "") or fallback or "").strip(" \x00")
    if not value:
        raise NotSendableError(f"no {keyword}: a DICOMweb store cannot take the instance")
    if not _USABLE_UID.match(value) or ".." in value:
        raise NotSendableError(f"{keyword} {value[:80]!r} is not a usable UID")
    return value


def inspect_file(fp: Any, path: str, size: int) -> FileRef:
    """Header-only look at an open file: is it a complete DICOM instance a store can take, and which?

    Raises NotDicomError, IncompleteFileError or NotSendableError.
    """
    head = fp.read(132)
    fp.seek(0)
    ds = read_dataset(fp)
    check_complete(ds, size)
    meta = getattr(ds, "file_meta", None)
    sop_class_fallback = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    _uid(ds, "SOPClassUID", sop_class_fallback)
    return FileRef(
        path=path,
        size=size,
        study=_uid(ds, "StudyInstanceUID"),
        series=_uid(ds, "SeriesInstanceUID"),
        sop=_uid(ds, "SOPInstanceUID"),
        part10=has_dicm_prefix(head),
        lossy=is_lossy(ds),
    )


def part10_bytes(data: bytes) -> bytes:
    """A bare dataset (no preamble, no file meta) wrapped as a Part 10 file, which STOW-RS requires.

    The dataset's encoding is kept; only the preamble and a file meta group are added.
    """
    ds = read_dataset(io.BytesIO(data), defer_size=None)
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        if implicit:
            meta.TransferSyntaxUID = uids.ImplicitVRLittleEndian
        else:
            meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian if little else uids.ExplicitVRBigEndian
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def choose_copy(refs: Iterable[FileRef]) -> tuple[FileRef, list[FileRef]]:
    """(the copy to send, the others): lossless first, then Part 10, then the smallest path."""
    ordered = sorted(set(refs), key=lambda r: (r.lossy, not r.part10, r.path))
    return ordered[0], ordered[1:]
