"""File access through Beam's FileSystems, so local paths, gs:// and s3:// work alike."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any, BinaryIO

from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems

_GLOB_CHARS = set("*?[")


def has_scheme(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base.rstrip("/") if has_scheme(base) else base, *parts)


#: What a remote input that is neither a glob nor ends in '/' means: one object ("file", the export and
#: import), a folder ("folder", `tfrecord from-images`: gs://b/jpgs is a directory of images) or a
#: prefix ("prefix", `files decompress` as Google's decompress_gcs.py: gs://b/raw/p1 matches …/p10/x).
INPUT_MODES = ("file", "folder", "prefix")


def input_pattern(value: str, remote: str = "file") -> str:
    """The one input normaliser: an --input (file, folder, glob; local, gs://, s3://) → a match pattern.

    Globs are kept (local ones made absolute); a folder (local, or a URI ending in '/') means every file
    below it, recursively; a local file is itself; a local path that does not exist stays as it is, or is
    a prefix in "prefix" mode; a remote URI without glob or '/' is read as `remote` says (INPUT_MODES).
    """
    if remote not in INPUT_MODES:
        raise ValueError(f"input mode must be one of {', '.join(INPUT_MODES)}, got {remote!r}")
    if has_scheme(value):
        if is_glob(value):
            return value
        if value.endswith("/"):
            return value + "**"
        return {"file": value, "folder": value + "/**", "prefix": value + "**"}[remote]
    local = os.path.abspath(os.path.expanduser(value))
    if is_glob(value) or os.path.isfile(local):
        return local
    if os.path.isdir(local):
        return os.path.join(local, "**")
    return local + "**" if remote == "prefix" else local


def parent_dir(path: str) -> str:
    """The folder a file path (or output prefix) lives in, on any filesystem."""
    if has_scheme(path):
        return path.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))


def is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


class CredentialsError(ValueError):
    """A cloud store used without the credentials it needs: found before any work starts."""


GCS_HELP = (
    "gs:// needs Google credentials: run `gcloud auth application-default login`, or set "
    "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file; for a local emulator set "
    "STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT"
)


def check_gcs_credentials(paths: list[str]) -> None:
    """Fail fast, with how to authenticate, when gs:// is used without credentials.

    Why: without Application Default Credentials Beam's GCS client retries for minutes before it fails
    with a credentials traceback. google-auth answers in seconds (it gives up on the metadata server
    quickly off Google Cloud). An emulator (STORAGE_EMULATOR_HOST) takes anonymous requests: no check.
    """
    if not any(p.startswith("gs://") for p in paths) or os.environ.get("STORAGE_EMULATOR_HOST"):
        return
    try:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
    except ImportError:
        raise CredentialsError("gs:// needs the gcp extra: pip install 'medbeam[gcp]'") from None
    try:
        google.auth.default()
    except DefaultCredentialsError:
        raise CredentialsError(GCS_HELP) from None


def check_inputs_exist(patterns: list[str], option: str = "--input") -> None:
    """Each input pattern must match at least one file: a typo'd path, an empty folder or a glob that finds
    nothing is a mistake worth stopping for (FileNotFoundError naming it), not a run that reports `0 in`.

    One listing call per pattern, stopped at its first file (cheap on gs:// and s3:// too).
    """
    check_gcs_credentials(patterns)
    for pattern in patterns:
        if not is_glob(pattern) and not has_scheme(pattern) and not os.path.exists(pattern):
            raise FileNotFoundError(f"no such input: {pattern}")
        try:
            found = FileSystems.match([pattern], limits=[2])[0].metadata_list
        except Exception as exc:  # noqa: BLE001 - Beam raises when nothing matches a plain path
            raise FileNotFoundError(f"{option} {pattern} matches no file ({type(exc).__name__}: {exc})") from None
        if not any(not m.path.endswith("/") for m in found):
            raise FileNotFoundError(f"{option} {pattern} matches no file")


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
    return [path for path, _ in list_files_with_sizes(pattern)]


def list_files_with_sizes(pattern: str) -> list[tuple[str, int]]:
    """(path, size in bytes) of every file matching `pattern` (no directories), sorted by path."""
    result = FileSystems.match([pattern])[0]
    return sorted((m.path, m.size_in_bytes) for m in result.metadata_list if not m.path.endswith("/"))


def matched_files(pattern: str) -> Iterator[tuple[str, int]]:
    """(path, size) of every file `pattern` matches (folders left out). Like Beam's MatchAll by default, a
    pattern without a wildcard that matches nothing is an error (a glob may match nothing)."""
    found = False
    for match in FileSystems.match([pattern])[0].metadata_list:
        found = True
        yield from path_and_size(match)
    if not found and not is_glob(pattern):
        raise FileNotFoundError(f"no file matches {pattern}")


def path_and_size(match: FileMetadata) -> Iterator[tuple[str, int]]:
    """A match's (path, size), unless it is a folder (object stores list `prefix/` placeholders)."""
    if not match.path.endswith("/"):
        yield match.path, match.size_in_bytes


def delete_files(paths: list[str]) -> None:
    if paths:
        FileSystems.delete(paths)


def delete_tree(path: str) -> None:
    """Delete a folder and everything below it, if it is there (a prefix, on an object store)."""
    if not has_scheme(path):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        return
    delete_files([m.path for m in FileSystems.match([path.rstrip("/") + "/**"])[0].metadata_list])


def delete_if_exists(path: str) -> bool:
    """Delete one file; False when it is already gone (a rerun after a partial cleanup)."""
    if not FileSystems.exists(path):
        return False
    FileSystems.delete([path])
    return True


def remove_empty_parents(path: str, stop_at: str) -> None:
    """Local only: remove the now-empty folders above a deleted file, up to (not including) `stop_at`.

    Object stores have no folders to leave behind.
    """
    if has_scheme(path):
        return
    stop = os.path.abspath(stop_at)
    parent = os.path.dirname(os.path.abspath(path))
    while parent.startswith(stop + os.sep):
        try:
            os.rmdir(parent)
        except OSError:  # not empty (or gone): the folders above are not empty either
            return
        parent = os.path.dirname(parent)


class OutputLocationError(ValueError):
    """An output location that cannot be written: found before any work starts."""


_PROBE_NAME = ".medbeam-write-check"


def check_writable_dir(path: str, option: str) -> None:
    """Raise OutputLocationError (one line) unless a file can be created in directory `path` (made if missing).

    Local paths: created, then a probe file is written and removed (a read-only folder, or a path under a
    regular file, fails here rather than on every image). gs:// and s3://: a probe object is written and
    deleted, which checks the bucket and the credentials.
    """
    check_gcs_credentials([path])
    probe = join(path, _PROBE_NAME)
    try:
        if not has_scheme(path):
            if os.path.exists(path) and not os.path.isdir(path):
                raise OutputLocationError(f"{option} {path} is a file, not a directory")
            os.makedirs(path, exist_ok=True)
            with open(probe, "wb"):
                pass
            os.remove(probe)
        else:
            write_bytes(probe, b"medbeam write check")  # not empty: Beam's S3 writer fails on 0 bytes
            FileSystems.delete([probe])
    except OutputLocationError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the filesystem says, as one line
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        raise OutputLocationError(f"{option} {path} is not writable: {reason}") from None


class Storage:
    """Opens inputs and creates outputs through Beam FileSystems, with one exception: on s3:// it reuses
    one S3 client per worker. Beam's S3 filesystem builds a new boto3 client for every file it opens
    (about half a second of CPU each), which would dominate a job writing many small members.

    `s3_options` are the pipeline's S3Options as a dict (see `s3_options_of`); picklable.
    """

    def __init__(self, s3_options: dict | None = None):
        self._s3_options = dict(s3_options or {})
        self._s3 = None

    def __getstate__(self) -> dict:
        return {"_s3_options": self._s3_options, "_s3": None}

    def _s3io(self):
        if self._s3 is None:
            from apache_beam.io.aws import s3io
            from apache_beam.options.pipeline_options import PipelineOptions

            self._s3 = s3io.S3IO(options=PipelineOptions.from_dictionary(self._s3_options))
        return self._s3

    def open(self, path: str) -> BinaryIO:
        """Raw bytes, whatever the extension. Local files skip Beam's wrapper (~2 ms on a 10 MB read)."""
        if path.startswith("s3://"):
            return self._s3io().open(path, "r")
        if not has_scheme(path):
            return open(path, "rb")
        return open_for_read(path)

    def create(self, path: str) -> BinaryIO:
        """A new file (replacing any earlier one); local parents are created."""
        if path.startswith("s3://"):
            return self._s3io().open(path, "w")
        if not has_scheme(path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            return open(path, "wb")
        return FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)

    def move(self, source: str, target: str) -> None:
        """Rename a finished file into place (replacing any earlier one; local parents are created).

        Local: one rename. gs:// and s3://: a copy and a delete (what object stores offer). A retry that
        finds the source gone and the target there takes the move as done.
        """
        if not has_scheme(source) and not has_scheme(target):
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            try:
                os.replace(source, target)
            except FileNotFoundError:
                if not os.path.exists(source) and os.path.exists(target):
                    return
                raise
            return
        if not FileSystems.exists(source) and FileSystems.exists(target):
            return
        if source.startswith("s3://") and target.startswith("s3://"):
            self._s3io().rename(source, target)
            return
        FileSystems.rename([source], [target])

    def delete_if_exists(self, path: str) -> None:
        if not has_scheme(path):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            return
        if FileSystems.exists(path):
            FileSystems.delete([path])


def s3_options_of(options) -> dict:
    """The S3Options set in `options` (a PipelineOptions), as a picklable dict for `Storage`: those whose
    value is not the option's default, what `get_all_options(drop_default=True)` keeps of them. Read from
    the S3Options view, not from get_all_options, which parses every option of every class (~6 ms a run)."""
    from apache_beam.options.pipeline_options import S3Options

    view = options.view_as(S3Options)
    values = {name: getattr(view, name) for name, default in _s3_defaults().items()}
    return {name: value for name, value in values.items() if value != _s3_defaults()[name]}


@functools.cache
def _s3_defaults() -> dict[str, Any]:
    """S3Options' flags (their `dest` names starting with s3_) and their defaults, from its own parser."""
    import argparse

    from apache_beam.options.pipeline_options import S3Options

    parser = argparse.ArgumentParser(add_help=False)
    S3Options._add_argparse_args(parser)  # noqa: SLF001 - the class's one list of its flags
    return {a.dest: a.default for a in parser._actions if a.dest.startswith("s3_")}  # noqa: SLF001
