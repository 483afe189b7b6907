"""Beam steps of the file jobs (files untar, files decompress): thin wrappers around medbeam.io.archives.

Counters go to each job's Beam Metrics namespace, read back by its run() through the shared runner.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from medbeam.io import archives, files
from medbeam.transforms.errors import reject
from medbeam.transforms.outputs import own_dir
from medbeam.transforms.progress import ProgressTicker

UNTAR_NAMESPACE = "medbeam.untar"
DECOMPRESS_NAMESPACE = "medbeam.decompress"
WRITTEN, REJECTS = "written", "rejects"


# ---------------------------------------------------------------------------------------------------
# untar


def member_uri(archive: str, member: str) -> str:
    return f"{archive}!{member}"

class UntarFn(beam.DoFn):
    """(archive path, size) → written (output path, archive!member) pairs (main) and rejects."""

    def __init__(
        self,
        output_dir: str,
        archive_subdir: bool,
        limits: archives.Limits,
        reserved_dir: str,
        storage: files.Storage,
        ticker: ProgressTicker | None = None,
    ):
        self._ticker = ticker or ProgressTicker(None)
        self._output_dir = output_dir
        self._storage = storage
        self._archive_subdir = archive_subdir
        self._limits = limits
        self._reserved_dir = reserved_dir
        self._archives_in = Metrics.counter(UNTAR_NAMESPACE, "archives_in")
        self._archives_rejected = Metrics.counter(UNTAR_NAMESPACE, "archives_rejected")
        self._written = Metrics.counter(UNTAR_NAMESPACE, "members_written")
        self._rejected = Metrics.counter(UNTAR_NAMESPACE, "members_rejected")
        self._skipped = Metrics.counter(UNTAR_NAMESPACE, "dirs_skipped")
        self._bytes = Metrics.counter(UNTAR_NAMESPACE, "bytes_written")

    def _reserved(self, output: str) -> bool:
        """medbeam's own folders (rejects table, output manifest) never take members."""
        return archives.is_under(output, self._reserved_dir) or archives.is_under(output, own_dir(self._output_dir))

    def process(self, element: tuple[str, int]) -> Iterator[Any]:
        yield from self._untar(*element)
        self._ticker.tick()

    def _untar(self, archive: str, size: int) -> Iterator[Any]:
        self._archives_in.inc()

        def output_path_for(member_path: str) -> str:
            owner = archive if self._archive_subdir else None
            return archives.member_output_path(self._output_dir, member_path, owner)

        try:
            for event in archives.untar(archive, size, output_path_for, self._limits, self._reserved, self._storage):
                if event.kind == "written":
                    self._written.inc()
                    self._bytes.inc(event.size)
                    yield event.output, member_uri(archive, event.member)
                elif event.kind == "rejected":
                    self._rejected.inc()
                    _stage_counter(event.error.stage).inc()
                    yield TaggedOutput(
                        REJECTS, reject(member_uri(archive, event.member), event.error.stage, event.error)
                    )
                else:
                    self._skipped.inc()
        except archives.ArchiveFailure as failure:
            self._archives_rejected.inc()
            _stage_counter(failure.error.stage).inc()
            uri = member_uri(archive, failure.member) if failure.member else archive
            yield TaggedOutput(REJECTS, reject(uri, failure.error.stage, failure.error))
        except Exception as exc:  # noqa: BLE001 - e.g. unreadable: this archive's reject, the run goes on
            self._archives_rejected.inc()
            _stage_counter("open").inc()
            yield TaggedOutput(REJECTS, reject(archive, "open", exc))

def _stage_counter(stage: str):
    return Metrics.counter(UNTAR_NAMESPACE, f"rejected.{stage}")

class ReportCollisionsFn(beam.DoFn):
    """(output path, {written: [archive!member…], archive: [None if the path is an input archive]}) → rows."""

    def __init__(self, namespace: str = UNTAR_NAMESPACE):
        self._collisions = Metrics.counter(namespace, "collisions")

    def process(self, element: tuple[str, dict[str, Iterable]]) -> Iterator[dict[str, str]]:
        path, groups = element
        sources = list(groups["written"])
        is_input = any(True for _ in groups["archive"])
        distinct = sorted(set(sources))
        if not sources or (not is_input and len(sources) == 1):
            return
        self._collisions.inc()
        for source in distinct:
            if is_input:
                message = f"wrote {path}, which is one of this run's input archives"
            elif len(distinct) == 1:
                message = f"{path}: this member appears {len(sources)} times in its archive; the last copy remains"
            else:
                others = ", ".join(s for s in distinct if s != source)
                message = f"{path} was also written from {others}; which copy remains is unspecified"
            yield reject(source, "collision", message, "OutputCollision")

def match_inputs(p: beam.Pipeline, patterns: list[str], exclude_dir: str) -> beam.PCollection:
    """(path, size) of every file matching any pattern, once, except those under `exclude_dir`."""
    return (
        p
        | "Patterns" >> beam.Create(patterns)
        | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
        | "Files only" >> beam.FlatMap(files.path_and_size)
        | "Not our tables" >> beam.Filter(lambda kv: not archives.is_under(kv[0], exclude_dir))
        | "Distinct" >> beam.Distinct()
    )


# ---------------------------------------------------------------------------------------------------
# decompress


def _decompress_counter(name: str):
    return Metrics.counter(DECOMPRESS_NAMESPACE, name)

class PlanFn(beam.DoFn):
    """(path, (input index, size)) → (output path, (path, size)), or a `path` reject."""

    def __init__(self, pattern: str, repl: str, bases: list[str], output_dir: str | None):
        self._pattern = pattern
        self._repl = repl
        self._bases = bases
        self._output_dir = output_dir
        self._regex: re.Pattern[str] | None = None
        self._files_in = _decompress_counter("files_in")
        self._rejected = _decompress_counter("rejected")

    def setup(self) -> None:
        self._regex = re.compile(self._pattern)

    def process(self, element: tuple[str, tuple[int, int]]) -> Iterator[Any]:
        path, (index, size) = element
        self._files_in.inc()
        try:
            output = archives.decompressed_path(path, self._regex, self._repl, self._bases[index], self._output_dir)
        except archives.FileJobError as exc:
            self._rejected.inc()
            _decompress_counter(f"rejected.{exc.stage}").inc()
            yield TaggedOutput(REJECTS, reject(path, exc.stage, exc))
            return
        yield output, (path, size)

class ResolveFn(beam.DoFn):
    """(output path, {plans: [(path, size)…], input: [None if the output path is itself an input]}) →
    the one (path, size, output) to decompress, and rejects for the others."""

    def __init__(self):
        self._rejected = _decompress_counter("rejected")
        self._collision = _decompress_counter("rejected.collision")

    def process(self, element: tuple[str, dict[str, Iterable]]) -> Iterator[Any]:
        output, groups = element
        plans = sorted(groups["plans"])
        if not plans:
            return
        if any(True for _ in groups["input"]):
            for path, _size in plans:
                self._rejected.inc()
                self._collision.inc()
                yield TaggedOutput(
                    REJECTS,
                    reject(
                        path,
                        "collision",
                        f"output {output} is another input of this run; decompressing into it would "
                        "overwrite a file while it is read",
                        "OutputCollision",
                    ),
                )
            return
        (path, size), losers = plans[0], plans[1:]
        yield path, size, output
        for loser, _size in losers:
            self._rejected.inc()
            self._collision.inc()
            yield TaggedOutput(
                REJECTS,
                reject(
                    loser,
                    "collision",
                    f"output {output} is also the output of {path}, which was kept",
                    "OutputCollision",
                ),
            )

class DecompressFn(beam.DoFn):
    """(path, size, output) → the output path (tag WRITTEN) on success; a reject otherwise (partial output deleted)."""

    def __init__(self, limits: archives.Limits, storage: files.Storage, ticker: ProgressTicker | None = None):
        self._ticker = ticker or ProgressTicker(None)
        self._limits = limits
        self._storage = storage
        self._written = _decompress_counter("written")
        self._rejected = _decompress_counter("rejected")
        self._bytes_in = _decompress_counter("bytes_in")
        self._bytes_out = _decompress_counter("bytes_out")

    def process(self, element: tuple[str, int, str]) -> Iterator[Any]:
        yield from self._decompress(*element)
        self._ticker.tick()

    def _decompress(self, path: str, size: int, output: str) -> Iterator[Any]:
        try:
            _fmt, written = archives.decompress_file(path, size, output, self._limits, self._storage)
        except archives.FileJobError as exc:
            stage, error = exc.stage, exc
        except Exception as exc:  # noqa: BLE001 - e.g. unreadable: this file's reject, the run goes on
            stage, error = "read", exc
        else:
            self._written.inc()
            self._bytes_in.inc(size)
            self._bytes_out.inc(written)
            yield TaggedOutput(WRITTEN, output)
            return
        self._rejected.inc()
        _decompress_counter(f"rejected.{stage}").inc()
        yield reject(path, stage, error)

def indexed_files(match, index: int) -> Iterator[tuple[str, tuple[int, int]]]:
    if not match.path.endswith("/"):
        yield match.path, (index, match.size_in_bytes)
