"""File access through Beam's FileSystems, so local paths, gs:// and s3:// work alike."""

from __future__ import annotations

import os
from typing import BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

_GLOB_CHARS = set("*?[")


def has_scheme(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base.rstrip("/") if has_scheme(base) else base, *parts)


def normalize_input_pattern(pattern: str) -> str:
    """A directory (local, or a URI ending in '/') means every file under it, recursively."""
    if has_scheme(pattern):
        return pattern + "**" if pattern.endswith("/") else pattern
    pattern = os.path.abspath(os.path.expanduser(pattern))
    if os.path.isdir(pattern):
        return os.path.join(pattern, "**")
    return pattern


def is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


def open_for_read(path: str) -> BinaryIO:
    """Raw bytes, whatever the extension (Beam would otherwise gunzip '.gz' files behind our back)."""
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def write_bytes(path: str, data: bytes, mime_type: str = "application/octet-stream") -> None:
    """Write a whole file, replacing any earlier one: reruns overwrite rather than duplicate."""
    if not has_scheme(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with FileSystems.create(path, mime_type=mime_type, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    with open_for_read(path) as f:
        return f.read()


def list_files(pattern: str) -> list[str]:
    """Every file matching `pattern` (no directories), sorted; [] when nothing matches."""
    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list if not m.path.endswith("/"))


def delete_files(paths: list[str]) -> None:
    if paths:
        FileSystems.delete(paths)
