"""Tar archives and compressed files, streamed through Beam FileSystems (local, gs://, s3://).

No Beam pipeline code here: plain functions that the `files untar` and `files decompress` jobs wrap in
thin DoFns, tested directly.

Nothing is ever held whole in memory: archives and compressed files are read as streams, members and
outputs are copied in chunks of `CHUNK_SIZE` bytes. Hostile inputs are refused, not trusted:

- tar member names are checked before anything is written (`safe_relative_path`): absolute paths,
  `..` components, control characters and non-UTF-8 names are refused; links, devices and FIFOs are
  refused; directories are skipped (object stores have none, and files create their parents);
- extended (pax / GNU long-name) headers larger than `MAX_EXTENDED_HEADER` are refused, since Python's
  tarfile reads them into memory;
- decompression bombs are stopped while streaming (`Limits`), and partial outputs are deleted;
- a truncated or corrupt archive is detected even where Python's tarfile would silently stop early
  (a missing end-of-archive marker, a bad header after the first member, a bad gzip CRC).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import posixpath
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from medbeam.io import files
from medbeam.io.files import Storage

try:  # zlib-ng inflates ~20-25 % faster than zlib (a gzipped tar of JPEGs: ~2.5 ms saved per 1.8 MB image)
    from zlib_ng.gzip_ng import GzipNGFile as _GzipReader
    from zlib_ng.zlib_ng import error as _GzipError
except ImportError:  # pragma: no cover - the same stream API, from the standard library
    _GzipReader = gzip.GzipFile  # type: ignore[misc,assignment]
    _GzipError = zlib.error  # type: ignore[misc,assignment]

CHUNK_SIZE = 1 << 20
#: Python's tarfile reads pax and GNU long-name headers whole; larger ones are refused.
MAX_EXTENDED_HEADER = 1 << 20
#: After the end-of-archive marker, read at most this much more to let gzip/bz2/xz/zstd check their CRC.
MAX_TRAILER_DRAIN = 16 << 20
#: Compression formats by their magic bytes.
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
_ARCHIVE_SUFFIXES = (
    ".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tar.zstd",
    ".tgz", ".tbz2", ".tbz", ".txz", ".tzst", ".tar",
)  # fmt: skip
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:[/\\]")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)b?\s*$", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------
# Errors: each names the stage that the rejects table records


class FileJobError(Exception):
    """A refusal or failure that becomes one rejects-table row; `stage` says which step refused."""

    stage = "read"


class UnknownFormatError(FileJobError):
    stage = "detect"


class UnsafeMemberError(FileJobError):
    stage = "unsafe"


class DecompressionBombError(FileJobError):
    stage = "bomb"


class CorruptArchiveError(FileJobError):
    stage = "read"


class NotATarError(FileJobError):
    stage = "open"


class OutputPathError(FileJobError):
    stage = "path"


class SameAsInputError(OutputPathError):
    """The output path is the input path."""


class WriteError(FileJobError):
    stage = "write"


# ---------------------------------------------------------------------------------------------------
# Sizes and limits


def parse_size(text: str | int | None) -> int | None:
    """'64GiB', '10MB', '1.5g', '123' → bytes (binary multiples: k = 1024); '0', 'none', '' → None."""
    if text is None or isinstance(text, int):
        return text or None
    if text.strip().lower() in ("", "0", "none", "unlimited", "off"):
        return None
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (try 123, 10MiB, 64GiB, or none)")
    number, unit = float(m.group(1)), m.group(2).lower()
    return int(number * 1024 ** " kmgtp".index(unit or " ")) or None


def format_size(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


#: Most expanded bytes per compressed input byte before a stream counts as a decompression bomb.
DEFAULT_MAX_RATIO = 1000.0

@dataclass(frozen=True)
class Limits:
    """Decompression-bomb guard, checked while streaming.

    `max_bytes`: most bytes one input may expand to (a compressed file's output; a tar's members in
    total). `max_ratio`: most expanded bytes per compressed input byte; it applies only once the output
    passes `ratio_min_bytes`, so tiny, very compressible files are not refused. None switches a check off.
    """

    max_bytes: int | None = None
    max_ratio: float | None = DEFAULT_MAX_RATIO
    ratio_min_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError("the size limit must be positive (or None for no limit)")
        if self.max_ratio is not None and self.max_ratio <= 0:
            raise ValueError("the ratio limit must be positive (or None for no limit)")

    def check(self, expanded: int, compressed_size: int) -> None:
        """Raise DecompressionBombError if `expanded` bytes from a `compressed_size`-byte input is too much."""
        if self.max_bytes is not None and expanded > self.max_bytes:
            raise DecompressionBombError(
                f"expands past the limit of {format_size(self.max_bytes)} "
                f"({format_size(compressed_size)} compressed); raise the size limit if this is expected"
            )
        if (
            self.max_ratio is not None
            and expanded > self.ratio_min_bytes
            and expanded > self.max_ratio * max(compressed_size, 1)
        ):
            raise DecompressionBombError(
                f"expands more than {self.max_ratio:g}:1 ({format_size(compressed_size)} compressed, "
                f"over {format_size(expanded)} expanded); raise the ratio limit if this is expected"
            )


# ---------------------------------------------------------------------------------------------------
# Paths


def is_under(path: str, directory: str) -> bool:
    """`path` is `directory` itself or inside it (component-wise: /out2 is not under /out)."""
    directory = directory.rstrip("/")
    return path == directory or path.startswith(directory + "/")


def safe_relative_path(name: str) -> str:
    """A member name (or any relative path from untrusted data) → a normalised relative path, or refuse.

    Refused: empty names, absolute paths (`/x`, `\\x`, `C:/x`), any `..` component (also with `\\`),
    control characters, and names that are not valid UTF-8. `./a//b/` becomes `a/b`.
    """
    if not name or not name.strip("/."):
        raise UnsafeMemberError(f"empty path {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeMemberError(f"name is not valid UTF-8: {name!r}") from None
    if _CONTROL.search(name):
        raise UnsafeMemberError(f"control character in name {name!r}")
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise UnsafeMemberError(f"absolute path {name!r} would land outside the output directory")
    if ".." in re.split(r"[/\\]", name):
        raise UnsafeMemberError(f"'..' in {name!r} could land outside the output directory")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        raise UnsafeMemberError(f"empty path {name!r}")
    return "/".join(parts)


def archive_stem(path: str) -> str:
    """`gs://b/train_p10.tar.gz` → `train_p10` (any of the tar suffixes; else the name without extension)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    lower = name.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    stem = posixpath.splitext(name)[0]
    return stem or name


def normalize_dir(path: str) -> str:
    """An output directory: local ones absolute (workers may run elsewhere), no trailing slash."""
    if files.has_scheme(path):
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def member_output_path(output_dir: str, member_path: str, archive: str | None = None) -> str:
    """`{output_dir}/{member path}`, or `{output_dir}/{archive stem}/{member path}` when `archive` is given."""
    if archive is not None:
        return files.join(output_dir, archive_stem(archive), member_path)
    return files.join(output_dir, member_path)


def input_base(path: str) -> str:
    """The directory that an input's relative paths start from, with a trailing '/'.

    As with rsync, a trailing slash means "the contents of": `gs://b/raw/` and `gs://b/raw/*.gz` →
    `gs://b/raw/`, while `gs://b/raw` (a prefix, or a directory named without the slash) → `gs://b/`, so
    its outputs keep the `raw/` level. Local paths are made absolute first.
    """
    if not files.has_scheme(path):
        path = os.path.abspath(os.path.expanduser(path)) + ("/" if path.endswith(("/", os.sep)) else "")
    cut = min((path.index(c) for c in "*?[" if c in path), default=len(path))
    return path[: path.rfind("/", 0, cut) + 1]


def check_substitution(pattern: str, repl: str) -> re.Pattern[str]:
    """Compile the path pattern and check that the replacement only names groups it has."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"--path-sub-pattern is not a valid regular expression: {exc}") from None
    try:
        probe = re.compile(pattern + "|")  # same groups; the empty branch always matches
    except re.error:
        return regex
    try:
        probe.sub(repl, "", count=1)
    except (re.error, IndexError) as exc:
        raise ValueError(f"--path-sub-repl does not fit --path-sub-pattern: {exc}") from None
    return regex


def decompressed_path(
    source: str, regex: re.Pattern[str], repl: str, base: str | None = None, output_dir: str | None = None
) -> str:
    """Output path of one compressed file: `re.sub(pattern, repl, source)` as in Google's decompress_gcs.py,
    then, with `output_dir`, its part below `base` placed under `output_dir`.

    Raises OutputPathError for a path that cannot be written (a directory name, outside the input base,
    `..` components, or the source itself).
    """
    try:
        out = regex.sub(repl, source)
    except (re.error, IndexError) as exc:
        raise OutputPathError(f"--path-sub-repl failed on this path: {exc}") from None
    if not out or out.endswith("/"):
        raise OutputPathError(f"the path pattern turns {source!r} into a directory name {out!r}")
    if not files.has_scheme(out):
        out = os.path.normpath(os.path.abspath(out))
    if output_dir is not None:
        if base is None or not out.startswith(base):
            raise OutputPathError(
                f"output {out!r} is not under the input's base {base!r}, so it has no place under --output-dir"
            )
        try:
            relative = safe_relative_path(out[len(base) :])
        except UnsafeMemberError as exc:
            raise OutputPathError(str(exc)) from None
        out = files.join(output_dir, relative)
    if out == source:
        raise SameAsInputError(
            f"the output path is the input path {source!r}: the file would be overwritten while it is read; "
            "change --path-sub-pattern/--path-sub-repl or give --output-dir"
        )
    return out


# ---------------------------------------------------------------------------------------------------
# Streams


class _Prefixed(io.RawIOBase):
    """A read-only stream: `head` bytes already read, then the rest of `raw` (which it does not close)."""

    def __init__(self, head: bytes, raw: BinaryIO):
        super().__init__()
        self._head = head
        self._raw = raw

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._head:
            if size is None or size < 0:
                data, self._head = self._head + self._raw.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            if len(data) < size:
                data += self._raw.read(size - len(data))
            return data
        return self._raw.read(-1 if size is None else size)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _ForwardReader(io.RawIOBase):
    """A forward-only stream that knows its position: what tarfile's random-access mode needs of a file
    (`tell`, `read`, `seek` forward, which reads on), over a stream that cannot seek (a decompressor).

    Why not tarfile's stream mode (`r|`): its buffer hands a member's data over in 10 KiB pieces, each
    joined and sliced again (~180 Python calls and ~5 copies for a 1.8 MB JPEG: ~3 ms, as long as the
    JPEG's DCT-scaled decode takes a tenth of); here a member is one read of the decompressed stream.
    Seeking backwards raises, as stream mode's does."""

    def __init__(self, raw: BinaryIO):
        super().__init__()
        self._raw = raw
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(-1 if size is None else size)
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._pos + offset if whence == io.SEEK_CUR else None
        if target is None or target < self._pos:
            raise tarfile.StreamError("seeking backwards is not allowed")
        while self._pos < target:
            if not self.read(min(CHUNK_SIZE, target - self._pos)):
                break  # the end of the data: the next read finds it
        return self._pos


def _read_exactly(raw: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = raw.read(size - len(data))
        if not more:
            break
        data += more
    return data


def detect_format(head: bytes) -> str | None:
    """'gzip', 'bzip2', 'xz', 'zstd' from the first bytes, or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic) and (name != "bzip2" or head[3:4].isdigit()):
            return name
    return None


def open_decompressed(raw: BinaryIO) -> tuple[str | None, BinaryIO]:
    """(format or None, a stream of the decompressed bytes) — the bytes themselves when not compressed.

    Multi-member gzip, multi-stream bzip2/xz and multi-frame zstd files are read whole.
    """
    head = _read_exactly(raw, 6)
    stream = _Prefixed(head, raw)
    fmt = detect_format(head)
    if fmt == "gzip":
        return fmt, _GzipReader(fileobj=stream, mode="rb")  # type: ignore[arg-type]
    if fmt == "bzip2":
        return fmt, bz2.BZ2File(stream, "rb")  # type: ignore[arg-type]
    if fmt == "xz":
        return fmt, lzma.LZMAFile(stream, "rb")  # type: ignore[arg-type]
    if fmt == "zstd":
        # Arrow's decoder, not python-zstandard's stream_reader: the latter ends quietly at a truncated frame.
        return fmt, pa.CompressedInputStream(pa.PythonFile(stream, mode="r"), "zstd")  # type: ignore[return-value]
    return None, stream  # type: ignore[return-value]


def _is_data_error(exc: BaseException) -> bool:
    """Errors that mean 'this input is corrupt' rather than a bug of ours."""
    return isinstance(
        exc,
        (OSError, EOFError, zlib.error, _GzipError, tarfile.TarError, lzma.LZMAError, pa.ArrowException, UnicodeError),
    )


def delete_quietly(path: str) -> None:
    try:
        FileSystems.delete([path])
    except Exception:  # noqa: BLE001 - best effort: it may never have been created
        pass


def _copy_stream(src: BinaryIO, dst_path: str, storage: Storage, on_chunk: Callable[[int], None] | None = None) -> int:
    """Copy `src` to a new file at `dst_path` in chunks; on any failure delete the partial output.

    Read failures propagate as they are; write failures become WriteError. `on_chunk(total)` may raise
    (the bomb guard) to stop the copy.
    """
    total = 0
    try:
        dst = storage.create(dst_path)
    except Exception as exc:  # noqa: BLE001 - e.g. a local file where a directory should be
        raise WriteError(f"cannot create {dst_path}: {type(exc).__name__}: {exc}") from exc
    try:
        with dst:
            while True:
                chunk = src.read(CHUNK_SIZE)
                if not chunk:
                    break
                total += len(chunk)
                if on_chunk is not None:
                    on_chunk(total)
                try:
                    dst.write(chunk)
                except Exception as exc:  # noqa: BLE001
                    raise WriteError(f"cannot write {dst_path}: {type(exc).__name__}: {exc}") from exc
    except BaseException:
        delete_quietly(dst_path)
        raise
    return total


# ---------------------------------------------------------------------------------------------------
# Decompress one file


def decompress_file(
    source: str, source_size: int, output: str, limits: Limits, storage: Storage | None = None
) -> tuple[str, int]:
    """Stream-decompress `source` into `output`; return (format, bytes written).

    Raises UnknownFormatError (not gzip/bzip2/xz/zstd, or empty), DecompressionBombError (limits, checked
    per chunk; the partial output is deleted), CorruptArchiveError (bad data, truncated), WriteError.
    """
    storage = storage or Storage()
    with storage.open(source) as raw:
        fmt, stream = open_decompressed(raw)
        if fmt is None:
            head = stream.read(4)
            what = "an empty file" if not head else f"starts with {head!r}"
            raise UnknownFormatError(f"not gzip, bzip2, xz or zstd data: {what}")
        try:
            written = _copy_stream(stream, output, storage, lambda total: limits.check(total, source_size))
        except FileJobError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            if _is_data_error(exc):
                raise CorruptArchiveError(f"corrupt or truncated {fmt} data: {type(exc).__name__}: {exc}") from exc
            raise
        return fmt, written


# ---------------------------------------------------------------------------------------------------
# Untar one archive


class _GuardedTarInfo(tarfile.TarInfo):
    """Records how the archive ended, and refuses extended headers too large to read into memory."""

    @classmethod
    def fromtarfile(cls, tf):  # type: ignore[override]
        tf.medbeam_end = None
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            tf.medbeam_end = "eof"
            raise
        except tarfile.EmptyHeaderError:
            tf.medbeam_end = "end of data"
            raise
        except tarfile.TruncatedHeaderError:
            tf.medbeam_end = "truncated header"
            raise
        except tarfile.InvalidHeaderError as exc:
            tf.medbeam_end = f"invalid header ({exc})"
            raise

    def _proc_member(self, tf):  # type: ignore[override]
        if self.type in _EXTENDED and self.size > MAX_EXTENDED_HEADER:
            raise CorruptArchiveError(
                f"extended header of {format_size(self.size)} at offset {self.offset} is larger than "
                f"{format_size(MAX_EXTENDED_HEADER)}: refusing to read it into memory"
            )
        return super()._proc_member(tf)


_EXTENDED = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
             tarfile.SOLARIS_XHDTYPE)  # fmt: skip


@dataclass(frozen=True)
class MemberEvent:
    """What happened to one tar member: 'written', 'rejected' (with `error`) or 'skipped' (a directory)."""

    kind: str
    member: str
    output: str | None = None
    size: int = 0
    error: FileJobError | None = None
    #: read_members: the member's bytes (its safe relative path is `output`).
    data: bytes | None = None


class ArchiveFailure(Exception):
    """The archive could not be read on (or was stopped); `member` names the member being read, if any;
    `offset` is where in the tar stream it happened (that member's header, else the next header's place)."""

    def __init__(self, error: FileJobError, member: str | None = None, offset: int = 0):
        super().__init__(str(error))
        self.error = error
        self.member = member
        self.offset = offset


#: (first, end) offsets in the tar stream: a window takes the members whose header starts in [first, end);
#: end None: to the end of the archive.
Window = tuple[int, "int | None"]


def tar_windows(archive_size: int, parts: int) -> list[Window]:
    """`parts` windows that cover an archive of `archive_size` bytes: every member falls in exactly one.

    The cut points are fractions of the (compressed) file size, applied to offsets in the tar stream:
    for tars of JPEGs the two are nearly equal; otherwise the last window gets more. Correct either way.
    """
    parts = max(1, parts)
    cuts = [archive_size * i // parts for i in range(1, parts)]
    starts = [0, *cuts]
    return [(start, end) for start, end in zip(starts, [*cuts, None], strict=True)]


#: A tar much larger than the typical one is read in parts (`tar_parts`), at most this many.
MAX_TAR_PARTS = 4


def tar_parts(size: int, sizes: list[int], max_parts: int = MAX_TAR_PARTS) -> int:
    """How many readers share a tar of `size` bytes, given every tar's size: about size / the typical size
    (the median; at least two parts in all), so that no reader gets several tars' worth of work (the 2019
    release's valid tar beside its train tars; a dataset in one tar). Each part of a compressed tar
    inflates what comes before it, so the count is capped."""
    ordered = sorted(sizes)
    if not ordered or size <= 0:
        return 1
    typical = min(ordered[len(ordered) // 2], sum(ordered) / 2)
    return max(1, min(max_parts, round(size / typical)))


#: A piece of a tar: (path, size, window), the window None for the whole tar.
TarPiece = tuple[str, int, "Window | None"]


def deal_tars(tars: list[tuple[str, int]], bins: int, min_piece: float = 0.02) -> list[list[TarPiece]]:
    """Tars dealt into `bins` lists of about equal bytes, each a worker's share, cutting at most `bins` - 1
    tars in two (windows of it, `tar_windows`' convention): the largest tars first, each bin filled to its
    cumulative share before the next one starts. Why: a runner that deals its elements out statically (the
    DirectRunner: round-robin) balances only elements of equal work, and one bin per worker is exactly that;
    each cut of a compressed tar costs the later piece an inflation of what comes before it, so cuts are few.

    A cut leaving a piece under `min_piece` of a share is not made (that bin takes the tar whole)."""
    bins = max(1, bins)
    ordered = sorted(((path, max(0, size)) for path, size in tars), key=lambda t: (-t[1], t[0]))
    share = sum(size for _, size in ordered) / bins
    slack = min_piece * share
    dealt: list[list[TarPiece]] = [[] for _ in range(bins)]
    current, filled = 0, 0.0
    for path, size in ordered:
        start = 0
        while True:
            room = share * (current + 1) - filled
            rest = size - start
            if current == bins - 1 or rest <= room + slack:
                dealt[current].append((path, size, None if start == 0 else (start, None)))
                filled += rest
                break
            if room < slack:  # this bin is full enough: the next one takes what is left
                current += 1
                continue
            cut = start + int(room)
            dealt[current].append((path, size, (start, cut)))
            filled += cut - start
            start, current = cut, current + 1
    return dealt


def window_owns(window: Window | None, offset: int) -> bool:
    """Whether a failure at `offset` is this window's to report (exactly one window owns any offset)."""
    if window is None:
        return True
    first, end = window
    return offset >= first and (end is None or offset < end)


def _member_kind_refusal(info: tarfile.TarInfo) -> str | None:
    if info.issym():
        return f"symbolic link (to {info.linkname!r})"
    if info.islnk():
        return f"hard link (to {info.linkname!r})"
    if info.ischr() or info.isblk():
        return "device file"
    if info.isfifo():
        return "FIFO"
    if not info.isreg():
        return f"unsupported member type {info.type!r}"
    return None


def untar(
    archive: str,
    archive_size: int,
    output_path_for: Callable[[str], str],
    limits: Limits,
    reserved: Callable[[str], bool] = lambda path: False,
    storage: Storage | None = None,
) -> Iterator[MemberEvent]:
    """Stream the members of one tar archive (plain, gzip, bzip2, xz or zstd) into files.

    `output_path_for(safe member path)` gives each regular member's output path; `reserved(output)` may
    refuse some (e.g. the job's own rejects directory). Yields one MemberEvent per member; raises
    ArchiveFailure when the archive cannot be opened, is corrupt or truncated (members before that point
    stay written; a member cut short is deleted), or trips the bomb guard (no further member is read).
    """
    storage = storage or Storage()

    def write(info: tarfile.TarInfo, relative: str, source: BinaryIO) -> MemberEvent:
        output = output_path_for(relative)
        if reserved(output):
            raise UnsafeMemberError(f"{info.name!r} would overwrite this job's own tables at {output}")
        try:
            size = _copy_stream(source, output, storage)
        except WriteError as exc:
            return MemberEvent("rejected", info.name, output=output, error=exc)
        return MemberEvent("written", info.name, output=output, size=size)

    yield from _members(archive, archive_size, limits, storage, write)


def read_members(
    archive: str,
    archive_size: int,
    limits: Limits,
    max_member_bytes: int,
    storage: Storage | None = None,
    window: Window | None = None,
) -> Iterator[MemberEvent]:
    """Stream the members of one tar archive into memory, one at a time: a 'read' MemberEvent per regular
    member with its bytes in `data` and its safe relative path in `output`; unsafe members and members over
    `max_member_bytes` are 'rejected'. The same guards and failures (ArchiveFailure) as untar().

    With a `window` (one of `tar_windows`), only the members whose header starts in it: the ones before
    are passed over unread (a compressed stream still inflates them), and reading stops at its end. So
    several workers can share one large archive; a failure is raised only by the window that owns its
    offset (`window_owns`), the others end quietly."""
    storage = storage or Storage()

    def read(info: tarfile.TarInfo, relative: str, source: BinaryIO) -> MemberEvent:
        if info.size > max_member_bytes:
            limit = format_size(max_member_bytes)
            raise UnsafeMemberError(f"{format_size(info.size)}, larger than the {limit} a member may have here")
        data = _read_exactly(source, info.size)
        return MemberEvent("read", info.name, output=relative, size=len(data), data=data)

    try:
        yield from _members(archive, archive_size, limits, storage, read, window)
    except ArchiveFailure as failure:
        if window_owns(window, failure.offset):
            raise


def _members(
    archive: str,
    archive_size: int,
    limits: Limits,
    storage: Storage,
    handle: Callable[[tarfile.TarInfo, str, BinaryIO], MemberEvent],
    window: Window | None = None,
) -> Iterator[MemberEvent]:
    """Open one archive and hand each safe regular member (in `window`, if given) to `handle(info, safe
    relative path, stream)`."""
    with storage.open(archive) as raw:
        fmt, stream = open_decompressed(raw)
        try:
            # tarfile's random-access mode over a forward-only stream (_ForwardReader), not its stream mode.
            tf = tarfile.open(
                fileobj=_ForwardReader(stream), mode="r:", tarinfo=_GuardedTarInfo, encoding="utf-8",
                errors="surrogateescape",
            )
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, CorruptArchiveError):
                raise ArchiveFailure(exc) from exc
            if not _is_data_error(exc):
                raise
            if isinstance(exc, tarfile.ReadError):  # the first header: what was read is not tar
                layer = f"{fmt} data" if fmt else "file"
                error: FileJobError = NotATarError(f"not a tar archive ({layer}): {exc}")
            else:  # the compression layer failed (tarfile reads ahead: small archives fail here)
                error = CorruptArchiveError(f"corrupt or truncated {fmt} data: {type(exc).__name__}: {exc}")
            raise ArchiveFailure(error) from exc
        yield from _each_member(tf, stream, fmt, archive_size, limits, handle, window)


def _each_member(tf, stream, fmt, archive_size, limits, handle, window=None) -> Iterator[MemberEvent]:
    expanded = 0
    current: str | None = None
    # Where a failure is placed (ArchiveFailure.offset): the member being read, else the last member's
    # header (what next() fails in: the rest of its data or the header after it), else 0. Every window's
    # reader places one failure alike, and only the window of that member owns it.
    offset = last = 0
    first, end_at = window if window is not None else (0, None)
    try:
        while True:
            current, offset = None, last
            info = tf.next()
            if info is None:
                break
            tf.members.clear()  # stream mode keeps every TarInfo otherwise: memory grows with member count
            current, offset = info.name, info.offset
            last = info.offset
            expanded += max(info.size, 0)
            limits.check(expanded, archive_size)
            if end_at is not None and info.offset >= end_at:
                return  # the next window's first member: its reader takes it from here
            if info.offset < first:
                continue  # the previous window's (tarfile skips its data)
            if info.isdir():
                yield MemberEvent("skipped", info.name)
                continue
            try:
                refusal = _member_kind_refusal(info)
                if refusal is not None:
                    raise UnsafeMemberError(f"{refusal}: refused")
                relative = safe_relative_path(info.name)
                event = handle(info, relative, tf.extractfile(info))
            except UnsafeMemberError as exc:
                yield MemberEvent("rejected", info.name, error=exc)
                continue
            yield event
        current = None
        end = getattr(tf, "medbeam_end", None)
        if end != "eof":
            offset = last
        if end != "eof":
            raise CorruptArchiveError(
                f"archive ends without an end-of-archive marker ({end} at offset {tf.offset}): truncated or "
                "corrupt; members before this point were written"
            )
        _drain(stream)
    except ArchiveFailure:
        raise
    except FileJobError as exc:
        raise ArchiveFailure(exc, current, offset) from exc
    except Exception as exc:  # noqa: BLE001
        if not _is_data_error(exc):
            raise
        layer = f"{fmt} " if fmt else ""
        raise ArchiveFailure(
            CorruptArchiveError(f"corrupt or truncated {layer}tar: {type(exc).__name__}: {exc}"), current, offset
        ) from exc


def _drain(stream: BinaryIO) -> None:
    """Read what follows the end-of-archive marker (padding), so the compression layer checks its CRC."""
    left = MAX_TRAILER_DRAIN
    while left > 0:
        chunk = stream.read(min(CHUNK_SIZE, left))
        if not chunk:
            return
        left -= len(chunk)
