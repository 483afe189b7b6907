"""Helpers the test modules share: where the DICOM test files are, the files every job must reject, free ports,
file digests and trees, and reading back DuckDB tables and rejects.

`tests/conftest.py` loads the server fixtures (tests.emulators, tests.orthanc) and the corpus fixtures built
from these; test modules import the helpers they call from here.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import shutil
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pydicom
import pytest

#: pydicom's own test files (installed with pydicom).
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

#: A SOP Instance UID no test file has: the truncated copy of CT_small is an instance of its own.
TRUNCATED_SOP = "1.2.826.0.1.3680043.8.498.999"


@functools.cache
def data_store() -> Path:
    """pydicom-data's files (the `demo` extra, part of `test`): missing, it is an error, never a skip."""
    import data_store as package

    return Path(package.__file__).parent / "data"


def dicom_file(name: str) -> Path:
    """A DICOM test file by name, from pydicom's test files or pydicom-data."""
    for folder in (TEST_FILES, data_store()):
        if (folder / name).exists():
            return folder / name
    pytest.fail(f"{name} is neither in pydicom's test files nor in pydicom-data", pytrace=False)


def copy_dicom(files: Mapping[str, str], root: Path) -> Path:
    """Copy test files into `root`: relative destination → test file name (see dicom_file)."""
    for relative, name in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(dicom_file(name), root / relative)
    return root


def truncated_ct_bytes() -> bytes:
    """CT_small with a SOP Instance UID of its own, the last 20,000 bytes (pixel data) cut off."""
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.SOPInstanceUID = TRUNCATED_SOP
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()[:-20000]


def write_unusable_files(root: Path) -> None:
    """The three files a DICOM corpus adds to be rejected: text, 'DICM' then garbage, truncated pixels."""
    (root / "notes.txt").write_text("not an image\n" * 20)
    (root / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 300)
    (root / "truncated.dcm").write_bytes(truncated_ct_bytes())


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (a server may still take it before its user binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digests(root: Path, pattern: str = "*", skip: Callable[[Path], bool] = lambda p: False) -> dict[str, str]:
    """Relative path → SHA-256 of every file under `root` matching `pattern`, but those `skip` names."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob(pattern))
        if p.is_file() and not skip(p)
    }


def tree(root: Path, skip_medbeam: bool = False) -> dict[str, bytes]:
    """Relative path → bytes of every file under `root`; optionally not the jobs' own `_medbeam/` files."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not (skip_medbeam and "_medbeam" in p.relative_to(root).parts)
    }


def query(duckdb_path: Path | str, sql: str) -> list[tuple]:
    import duckdb

    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        return con.execute(sql).fetchall()


def read_rejects(table_dir: Path | str) -> list[dict]:
    """The rows of the `rejects` table (Parquet shards and manifest) under `table_dir`."""
    from medbeam.io import tables

    return tables.read_table(str(table_dir), "rejects").to_pylist()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zst(data: bytes) -> bytes:
    """One zstd frame (Arrow's codec; the zstd CLI reads it)."""
    import pyarrow as pa

    return pa.Codec("zstd").compress(data, asbytes=True)


def transform_labels(pipeline: Any) -> set[str]:
    """Every applied transform's full label in a built (not run) Beam pipeline, nested ones included."""
    labels, pending = set(), list(pipeline.transforms_stack[0].parts)
    while pending:
        applied = pending.pop()
        labels.add(applied.full_label)
        pending += applied.parts
    return labels
