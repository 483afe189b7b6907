"""Recognise and read DICOM files by content, whatever their name."""

from __future__ import annotations

import io
import struct
import warnings
from typing import BinaryIO

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError

#: Values larger than this stay on disk until asked for: a header read never loads pixel data.
DEFER_SIZE = 4096
_KNOWN_FIRST_GROUPS = {0x0002, 0x0008}


class NotDicomError(ValueError):
    """The bytes are neither a DICOM file (preamble + 'DICM') nor a bare DICOM dataset."""


def has_dicm_prefix(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def looks_like_bare_dataset(head: bytes) -> bool:
    """A dataset written without preamble starts with a group 0002 or 0008 tag, little or big endian."""
    if len(head) < 8:
        return False
    group_le, element_le = struct.unpack("<HH", head[:4])
    group_be, element_be = struct.unpack(">HH", head[:4])
    return (group_le in _KNOWN_FIRST_GROUPS and element_le < 0x0100) or (
        group_be in _KNOWN_FIRST_GROUPS and element_be < 0x0100
    )


class _RemoteStream:
    """read/seek/tell of a buffered remote stream (Beam's S3 reader), without passing for a local file.

    pydicom treats any io.BufferedReader as a local file and asks for its `.name`, which S3 streams lack.
    Keeping the buffered reader (not its raw stream) keeps pydicom's many small reads out of S3 requests.
    """

    def __init__(self, fp: BinaryIO):
        self._fp = fp

    def read(self, size: int = -1) -> bytes:
        return self._fp.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()


def read_dataset(fp: BinaryIO, *, defer_size: int | None = DEFER_SIZE) -> FileDataset:
    """Read a DICOM file from an open binary stream; raise NotDicomError for anything else.

    With the default `defer_size`, large values (pixel data) are not read: the stream must stay open
    while such a value is used.
    """
    if isinstance(fp, io.BufferedReader) and not isinstance(fp.raw, io.FileIO):
        fp = _RemoteStream(fp)  # type: ignore[assignment]
    head = fp.read(132)
    fp.seek(0)
    if not has_dicm_prefix(head) and not looks_like_bare_dataset(head):
        raise NotDicomError("no 'DICM' prefix at byte 128 and no DICOM tag at byte 0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(fp, defer_size=defer_size, force=not has_dicm_prefix(head))
        except InvalidDicomError as exc:
            raise NotDicomError(str(exc)) from exc
    # ds.keys(), not ds: iterating a pydicom Dataset yields its elements (and would read deferred values).
    if not any(tag.group > 0x0002 for tag in ds.keys()):  # noqa: SIM118
        raise NotDicomError("no DICOM attribute could be read after the file meta group (truncated or corrupt)")
    if not any(is_standard_attribute(tag) for tag in ds.keys()):  # noqa: SIM118
        raise NotDicomError(
            "no standard DICOM attribute after the file meta group (no SOP Class/Instance UID, study, series "
            "or any other): the bytes after 'DICM' are not a dataset"
        )
    return ds


def is_standard_attribute(tag: int) -> bool:
    """A public data-dictionary attribute of the dataset proper (not file meta, group length or private)."""
    group, element = tag >> 16, tag & 0xFFFF
    return group > 0x0002 and group % 2 == 0 and element != 0 and bool(keyword_for_tag(tag))
