"""Tar archives (plain, .gz, .bz2, .xz, .zst) → their members as files under one output directory.

    match archives → distinct → reshuffle → untar, streamed ─┬─ rejects ──────────────────────┐
                                                             └─ written (output path, member) │
        written + the archive paths → CoGroupByKey by output path → collisions ───────────────┴→ WriteTable(rejects)

Each archive is read as one stream by one worker (tar has no index), archives in parallel. A member
`a/b.png` of `x.tar.gz` is written to `{output_dir}/a/b.png` (as `tar -x` and Google's untar_gcs.py do),
or to `{output_dir}/x/a/b.png` with `archive_subdir`. Unsafe members are refused and recorded in the
rejects table (`uri` = `archive!member`), directories are skipped, a corrupt archive is one reject and the
run goes on. Output paths written more than once (the same member path in two archives, or twice in
one) are reported in the rejects table with stage `collision`; they are not counted as rejected.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import TaggedOutput

from medbeam.io import archives, files, tables
from medbeam.pipelines.common import counters_from, is_local_runner, local_beam_args
from medbeam.transforms.errors import REJECT_SCHEMA, REJECTS_TABLE, reject
from medbeam.transforms.outputs import (
    OUTPUTS_TABLE,
    ReplaceOutputs,
    outputs_table,
    own_dir,
)

NAMESPACE = "medbeam.untar"
WRITTEN, REJECTS = "written", "rejects"
#: Where the rejects table goes by default: `{output_dir}/_medbeam/rejects/`.
TABLES_SUBDIR = "_medbeam"
#: Local runs use every core when there are at least this many inputs of at least this many bytes in all.
AUTO_PARALLEL_MIN_FILES = 2
AUTO_PARALLEL_MIN_BYTES = 64 << 20
DEFAULT_MAX_RATIO = 1000.0


@dataclass
class UntarConfig:
    """Everything `medbeam files untar` takes; usable from Python as a library call."""

    inputs: list[str]
    output_dir: str
    archive_subdir: bool = False
    rejects_dir: str | None = None
    duckdb_path: str | None = None
    max_ratio: float | None = DEFAULT_MAX_RATIO
    max_archive_bytes: int | None = None
    rows_per_shard: int = tables.DEFAULT_ROWS_PER_SHARD

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("give at least one input archive, glob or directory")
        if not self.output_dir:
            raise ValueError("give --output-dir")
        self.output_dir = archives.normalize_dir(self.output_dir)
        self.rejects_dir = archives.normalize_dir(self.rejects_dir or files.join(self.output_dir, TABLES_SUBDIR))
        check_duckdb_path(self.duckdb_path)
        if self.rows_per_shard < 1:
            raise ValueError("rows_per_shard must be at least 1")
        self.limits  # noqa: B018 - validates the limits now, not on a worker

    @property
    def limits(self) -> archives.Limits:
        return archives.Limits(max_bytes=self.max_archive_bytes, max_ratio=self.max_ratio)


def check_duckdb_path(path: str | None) -> None:
    if path is not None and files.has_scheme(path):
        raise ValueError("--duckdb must be a local file; the Parquet rejects table works on gs:// and s3://")


@dataclass
class UntarCounts:
    archives_in: int = 0
    archives_rejected: int = 0
    members_written: int = 0
    members_rejected: int = 0
    dirs_skipped: int = 0
    bytes_written: int = 0
    collisions: int = 0
    stale_outputs_removed: int = 0
    rejected_by_stage: dict[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        """Rows of the rejects table other than collision notices: refused members + failed archives."""
        return self.members_rejected + self.archives_rejected

    def summary(self) -> str:
        line = f"{self.archives_in} archives in, {self.members_written} members written, {self.rejected} rejected"
        return line + summary_extras(
            self.rejected_by_stage, self.dirs_skipped, self.collisions, self.stale_outputs_removed
        )


def summary_extras(by_stage: dict[str, int], dirs_skipped: int = 0, collisions: int = 0, stale: int = 0) -> str:
    parts = []
    if by_stage:
        parts.append(", ".join(f"{n} {stage}" for stage, n in sorted(by_stage.items()) if n))
    if dirs_skipped:
        parts.append(f"{dirs_skipped} director{'y' if dirs_skipped == 1 else 'ies'} skipped")
    if collisions:
        parts.append(
            f"{collisions} output path{'' if collisions == 1 else 's'} written more than once "
            "(rejects, stage collision)"
        )
    if stale:
        parts.append(f"{stale} file{'' if stale == 1 else 's'} of the previous run removed")
    return f" ({'; '.join(parts)})" if parts else ""


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
    ):
        self._output_dir = output_dir
        self._storage = storage
        self._archive_subdir = archive_subdir
        self._limits = limits
        self._reserved_dir = reserved_dir
        self._archives_in = Metrics.counter(NAMESPACE, "archives_in")
        self._archives_rejected = Metrics.counter(NAMESPACE, "archives_rejected")
        self._written = Metrics.counter(NAMESPACE, "members_written")
        self._rejected = Metrics.counter(NAMESPACE, "members_rejected")
        self._skipped = Metrics.counter(NAMESPACE, "dirs_skipped")
        self._bytes = Metrics.counter(NAMESPACE, "bytes_written")

    def _reserved(self, output: str) -> bool:
        """medbeam's own folders (rejects table, output manifest) never take members."""
        return archives.is_under(output, self._reserved_dir) or archives.is_under(output, own_dir(self._output_dir))

    def process(self, element: tuple[str, int]) -> Iterator[object]:
        archive, size = element
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
    return Metrics.counter(NAMESPACE, f"rejected.{stage}")


class ReportCollisionsFn(beam.DoFn):
    """(output path, {written: [archive!member…], archive: [None if the path is an input archive]}) → rows."""

    def __init__(self, namespace: str = NAMESPACE):
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


def _path_and_size(match: FileMetadata) -> Iterator[tuple[str, int]]:
    if not match.path.endswith("/"):
        yield match.path, match.size_in_bytes


def match_inputs(p: beam.Pipeline, patterns: list[str], exclude_dir: str) -> beam.PCollection:
    """(path, size) of every file matching any pattern, once, except those under `exclude_dir`."""
    return (
        p
        | "Patterns" >> beam.Create(patterns)
        | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
        | "Files only" >> beam.FlatMap(_path_and_size)
        | "Not our tables" >> beam.Filter(lambda kv: not archives.is_under(kv[0], exclude_dir))
        | "Distinct" >> beam.Distinct()
    )


def build(p: beam.Pipeline, config: UntarConfig) -> None:
    """Wire the untar job into `p`."""
    patterns = [files.normalize_input_pattern(i) for i in config.inputs]
    matched = match_inputs(p, patterns, config.rejects_dir)
    untarred = (
        matched
        | "Spread archives" >> beam.Reshuffle()
        | "Untar"
        >> beam.ParDo(
            UntarFn(
                config.output_dir,
                config.archive_subdir,
                config.limits,
                config.rejects_dir,
                files.Storage(files.s3_options_of(p.options)),
            )
        ).with_outputs(REJECTS, main=WRITTEN)
    )
    input_paths = matched | "Archive paths" >> beam.Map(lambda kv: (kv[0], None))
    collisions = (
        {"written": untarred[WRITTEN], "archive": input_paths}
        | "By output path" >> beam.CoGroupByKey()
        | "Collisions" >> beam.ParDo(ReportCollisionsFn())
    )
    manifest = (
        untarred[WRITTEN]
        | "Written paths" >> beam.Map(lambda written: written[0])
        | "Output manifest" >> ReplaceOutputs(config.output_dir, NAMESPACE)
    )
    _ = {
        REJECTS_TABLE: [untarred[REJECTS], collisions] | "All rejects" >> beam.Flatten(),
        OUTPUTS_TABLE: manifest,
    } | "Write tables" >> tables.WriteTables(
        config.rejects_dir,
        [tables.TableSpec(REJECTS_TABLE, REJECT_SCHEMA, ("uri", "stage")), outputs_table(config.output_dir)],
        config.rows_per_shard,
    )


# ---------------------------------------------------------------------------------------------------
# Running (shared with the decompress job)


def local_run_args(beam_args: list[str], patterns: list[str], exclude_dir: str) -> list[str]:
    """On the local runner, several large inputs get every core unless the user chose the mode or workers."""
    if not is_local_runner(PipelineOptions(beam_args)):
        return beam_args
    sizes: dict[str, int] = {}
    for result in FileSystems.match(patterns):
        for m in result.metadata_list:
            if not m.path.endswith("/") and not archives.is_under(m.path, exclude_dir):
                sizes[m.path] = m.size_in_bytes
    parallel = len(sizes) >= AUTO_PARALLEL_MIN_FILES and sum(sizes.values()) >= AUTO_PARALLEL_MIN_BYTES
    return local_beam_args(beam_args, parallel, workers=len(sizes))


def by_stage(values: dict[str, int]) -> dict[str, int]:
    return {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("rejected.") and v}


def run_pipeline(build_fn, config, beam_args: list[str], patterns: list[str], exclude_dir: str):
    options = PipelineOptions(beam_args)
    FileSystems.set_options(options)
    files.check_inputs_exist(patterns)
    options = PipelineOptions(local_run_args(beam_args, patterns, exclude_dir))
    pipeline = beam.Pipeline(options=options)
    build_fn(pipeline, config)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def load_duckdb(duckdb_path: str | None, rejects_dir: str) -> None:
    if duckdb_path is not None:
        tables.load_into_duckdb(duckdb_path, rejects_dir, [REJECTS_TABLE])


def run(config: UntarConfig, beam_args: list[str] | None = None) -> UntarCounts:
    """Run the untar job to completion, load DuckDB if asked, and return the reconciled counts."""
    patterns = [files.normalize_input_pattern(i) for i in config.inputs]
    result = run_pipeline(build, config, list(beam_args or []), patterns, config.rejects_dir)
    values = counters_from(result, NAMESPACE)
    counts = UntarCounts(
        **{k: v for k, v in values.items() if k in UntarCounts.__dataclass_fields__ and k != "rejected_by_stage"},
        rejected_by_stage=by_stage(values),
    )
    load_duckdb(config.duckdb_path, config.rejects_dir)
    return counts
