"""The one runner every job uses: Beam options, the local-runner choice, progress, run, counts, DuckDB.

A job's run() is: validate (its config did), check its inputs and outputs, `run_job(build, …)`, read its
counts from Beam Metrics (`counters`, right on any runner, unlike anything summed in the driver), load its
tables into DuckDB (`load_tables`), and return a counts object whose summary() is one `summary_line`.

Local runs: Beam's DirectRunner engine (FnApiRunner) is named outright, because Beam's DirectRunner would
first try to download the Prism runner from GitHub (an offline machine waits for it, an online one silently
switches to it). One rule for going multi-process: when the job's estimate of its work on one core is at
least AUTO_PARALLEL_MIN_SECONDS, every core is used — worker processes cost ~2 s in the first run of a
process on this machine (one import of Beam and the job's modules, in the zygote they are forked from, see
medbeam.pipelines.worker_pool) and ~0.5 s in later ones, which smaller runs would not repay. Work that waits
on a server (STOW-RS) uses threads instead. A user's own --direct_running_mode / --direct_num_workers always wins.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
)
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
from apache_beam.transforms.environments import Environment, SubprocessSDKEnvironment

from medbeam.cloud_hints import needs_cloud_clients
from medbeam.io import files, tables
from medbeam.pipelines import beam_introspection, worker_pool
from medbeam.transforms.progress import ProgressMonitor

#: Estimated single-core seconds of work from which a local run uses every core.
AUTO_PARALLEL_MIN_SECONDS = 10.0
_LOCAL_RUNNER_HINTS = ("direct", "prism", "fnapi")


@dataclass(frozen=True)
class CostModel:
    """A job's measured single-core cost: seconds per input file and per input byte (for the local choice)."""

    seconds_per_file: float
    seconds_per_byte: float = 0.0

    def seconds(self, file_count: int, total_bytes: int = 0) -> float:
        return file_count * self.seconds_per_file + total_bytes * self.seconds_per_byte


class Options(PipelineOptions):
    """PipelineOptions that make each view (`options.view_as(StandardOptions)`, …) once.

    Beam asks for views a few hundred times while it builds and runs a pipeline (every applied transform
    asks for its TypeOptions, …), and each plain `view_as` parses every flag again with a new argparse
    parser of that options class: ~1 ms each, 0.2–0.3 s of a one-file export. Views hold no values of their
    own (they all read and write the options' one shared dict), so one view per class is the same thing.
    The cache is never pickled or copied (Beam deep-copies the options into its Pipeline).
    """

    def view_as(self, cls: type[Any]) -> Any:
        views = self.__dict__.setdefault("_views", {})
        view = views.get(cls)
        if view is None or view._all_options is not self._all_options:  # noqa: SLF001 - the shared dict
            view = views[cls] = super().view_as(cls)
        return view

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_views", None)
        return state


def pipeline_options(beam_args: list[str] | None) -> PipelineOptions:
    """Options from the pass-through args, also given to FileSystems (S3 endpoint, GCS project…)."""
    from apache_beam.io.filesystems import FileSystems

    options = Options(list(beam_args or []))
    FileSystems.set_options(options)
    return options


def is_local_runner(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    return runner is None or any(h in str(runner).lower() for h in _LOCAL_RUNNER_HINTS)


def runs_in_one_local_worker(options: PipelineOptions) -> bool:
    """True for the DirectRunner's in-memory mode with one worker: nothing to spread work over.

    A Reshuffle there only adds transforms (~20 ms of build and run time each on this machine) and a copy of
    every element; on any other runner or mode it is what fans work out, and stays.
    """
    direct = options.view_as(DirectOptions)
    mode = direct.direct_running_mode or "in_memory"
    return is_local_runner(options) and mode == "in_memory" and (direct.direct_num_workers or 1) <= 1


def local_workers(options: PipelineOptions) -> int | None:
    """How many workers the local runner deals each stage's elements to (statically: round-robin), or None
    on a runner that balances work itself (a cluster's)."""
    if not is_local_runner(options):
        return None
    direct = options.view_as(DirectOptions)
    if (direct.direct_running_mode or "in_memory") == "in_memory":
        return 1
    workers = direct.direct_num_workers or 1
    return os.cpu_count() or 1 if workers == 0 else workers


def local_beam_args(
    beam_args: list[str], parallel: bool, workers: int | None = None, mode: str = "multi_processing"
) -> list[str]:
    """Beam args for a local run: the FnApiRunner named, and with `parallel` every core (at most `workers`)
    in `multi_processing`, or `workers` threads in `multi_threading`, unless the user chose the mode."""
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append("--runner=FnApiRunner")
    chosen = any(a.startswith(("--direct_running_mode", "--direct_num_workers")) for a in args)
    if not parallel or chosen:
        return args
    cores = os.cpu_count() or 1
    count = (workers or 1) if mode == "multi_threading" else min(cores, workers or cores)
    if count > 1:
        args += [f"--direct_running_mode={mode}", f"--direct_num_workers={count}"]
    return args


@dataclass
class LocalPlan:
    """How a local run spreads: `estimate()` (single-core seconds) decides; threads for server-bound work."""

    estimate: Callable[[], float]
    workers: int | None = None
    mode: str = "multi_processing"


def run_job(
    build: Callable[..., None],
    beam_args: list[str] | None,
    local: LocalPlan | None = None,
    progress: Mapping[str, int | str | None] | None = None,
    show_progress: bool = True,
    options: PipelineOptions | None = None,
    locations: Sequence[str] | None = None,
) -> beam.runners.runner.PipelineResult:
    """Build and run one pipeline to completion.

    `build(p)` wires the job; with `progress` (stage name → total, None, or the name of a ticker that counts
    the total) it is called as `build(p, tickers)` with a ProgressTicker per name, drawn as bars on local
    runs (on a terminal). `options`: what `pipeline_options(beam_args)` gave the caller, if it already
    asked (parsing Beam's options again costs ~0.1 s). `locations`: every path and URL the job reads or
    writes, when the caller knows them all; local multi_processing workers then start lean when none of
    them (nor `beam_args`) may need a cloud client, as the CLI decides from its command line
    (LocalProcessesRunner).
    """
    beam_introspection.install()  # Beam's DoFn introspection once per class: ~0.1 s of every run
    beam_args = list(beam_args or [])
    options = options or pipeline_options(beam_args)
    local_run = is_local_runner(options)
    if local_run:
        parallel = local is not None and local.estimate() >= AUTO_PARALLEL_MIN_SECONDS
        workers, mode = (local.workers, local.mode) if local is not None else (None, "multi_processing")
        options = Options(local_beam_args(beam_args, parallel, workers, mode))
    with tempfile.TemporaryDirectory(prefix="medbeam-progress-") as progress_dir:
        stages = dict(progress or {})
        with ProgressMonitor(progress_dir, stages, enabled=bool(stages) and show_progress and local_run) as monitor:
            lean = None if locations is None else not needs_cloud_clients([*map(str, locations), *beam_args])
            module = getattr(build, "__module__", None) or ""
            preload = [module] if module.startswith("medbeam.") else []
            workers = local_processes_runner(options, lean, preload) if local_run else None
            pipeline = beam.Pipeline(runner=workers, options=options)
            if progress is None:
                build(pipeline)
            else:
                build(pipeline, {name: monitor.ticker(name) for name in monitor.paths})
            try:
                with imported_heap_frozen():
                    result = pipeline.run()
                    result.wait_until_finish()
            except Exception as exc:
                failure = worker_failure(exc)
                if failure is None:
                    raise
                raise JobFailed(failure) from None
    return result


@contextlib.contextmanager
def imported_heap_frozen() -> Iterator[None]:
    """Keep the objects that exist before a run (Beam, pyarrow and the job's modules: ~10^6 of them) out of
    the garbage collector's passes during it, then hand them back.

    A full collection of that heap costs ~0.1 s and falls in about one run in ten; frozen, a run's
    collections only walk what the run made (measured, 10 alternated pairs: mean GC time in a run 14 -> 3 ms,
    a 60-X-ray run 0.600 -> 0.587 s, a one-file run 0.130 -> 0.122 s). Nothing is leaked: whatever became
    garbage stays collectable after the run. A caller that froze the heap itself keeps its freeze.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


#: Beam's FnApiRunner logs this when its workers are not its own multi_processing ones (LocalProcessesRunner).
_IN_MEMORY_WORKERS_NOTE = "If direct_num_workers is not equal to 1"


class LocalProcessesRunner(FnApiRunner):
    """Beam's FnApiRunner for `multi_processing` local runs, with medbeam's worker processes.

    The same runner and the same parallelism (direct_num_workers SDK worker processes, bundles dealt among
    them): only how each worker process starts differs. On Linux it is forked from medbeam's zygote, which
    imported Beam (lean when the launcher was, or the job said so) and the job's modules once for the
    process (medbeam.pipelines.worker_pool; started here, as the runner is made, so that its imports overlap
    the pipeline's construction); elsewhere, or with MEDBEAM_WORKER_POOL=0, it is `python -m
    medbeam.cli.sdk_worker`, Beam's worker main after the CLI's lean start-up and ended without module
    teardown. Measured on 2 workers, a one-file run() took 4.8 s with Beam's own workers, 2.7-2.9 s with
    medbeam's cold ones and 0.7-0.9 s forked (after the process's first run). Beam picks its own worker
    command when the mode is `multi_processing`, so the run is handed to it as `in_memory` with this
    runner's environment, and the mode is restored afterwards.
    """

    def __init__(self, lean: bool | None = None, preload: Sequence[str] = ()) -> None:
        """`lean`: whether the workers start Beam without the cloud clients; None: as this process did.
        `preload`: the job's medbeam modules, imported once by the zygote the workers fork from."""
        if lean is None:
            lean_imports = sys.modules.get("medbeam.cli.lean_imports")
            lean = lean_imports is not None and lean_imports.started_lean("apache_beam")
        environment: Environment
        if worker_pool.available():
            environment = worker_pool.ForkedWorkersEnvironment.for_job(lean, preload)
        else:
            environment = SubprocessSDKEnvironment.from_command_string(worker_pool.worker_command(lean))
        super().__init__(default_environment=environment)

    def run_pipeline(self, pipeline: beam.Pipeline, options: PipelineOptions) -> Any:
        direct = options.view_as(DirectOptions)
        direct.direct_running_mode = "in_memory"
        runner_log = logging.getLogger(fn_runner.__name__)
        runner_log.addFilter(_drop_in_memory_workers_note)  # Beam's note on that mode, for this run only
        try:
            return super().run_pipeline(pipeline, options)
        finally:
            runner_log.removeFilter(_drop_in_memory_workers_note)
            direct.direct_running_mode = "multi_processing"


def _drop_in_memory_workers_note(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_IN_MEMORY_WORKERS_NOTE)


def local_processes_runner(
    options: PipelineOptions, lean: bool | None = None, preload: Sequence[str] = ()
) -> LocalProcessesRunner | None:
    """The runner for a local run on medbeam's worker processes: FnApiRunner in `multi_processing`, else None
    (any other runner, or mode, is left to Beam). `lean`, `preload`: see LocalProcessesRunner."""
    runner = options.view_as(StandardOptions).runner
    if runner not in ("FnApiRunner", fn_runner.FnApiRunner):
        return None
    if options.view_as(DirectOptions).direct_running_mode != "multi_processing":
        return None
    runner = LocalProcessesRunner(lean, preload)
    worker_pool.warm(runner._default_environment)  # noqa: SLF001 - Beam keeps it there
    return runner



class JobFailed(RuntimeError):
    """A run that a worker stopped with one of medbeam's own one-line errors (a store or a load that
    failed): the CLI prints the line and exits 1, instead of the runner's wrapped traceback."""


#: Errors workers raise whose message is meant for the user as it is.
_USER_ERROR_TYPES = ("BigQueryLoadError", "BigQueryQueryError", "DicomwebError", "CredentialsError")
_WORKER_ERRORS = re.compile(rf"\b({'|'.join(_USER_ERROR_TYPES)}): ([^\n]+?)(?: \[while running|\n|$)")


def worker_failure(exc: BaseException) -> str | None:
    """The one-line medbeam error a worker raised: the exception itself (the local runner re-raises it,
    with Beam's ` [while running 'step']` appended) or inside a runner's wrapped exception text."""
    if type(exc).__name__ in _USER_ERROR_TYPES:
        return str(exc).split(" [while running", 1)[0].strip()
    match = _WORKER_ERRORS.search(str(exc))
    return match.group(2).strip() if match else None


def counters(result: beam.runners.runner.PipelineResult, namespace: str) -> dict[str, int]:
    """Beam Metrics counters of one namespace, summed (committed where the runner reports it)."""
    values: dict[str, int] = {}
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(namespace))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        name = counter.key.metric.name
        values[name] = values.get(name, 0) + int(value or 0)
    return values


def counts_of(counts_class: type, values: Mapping[str, int], **extra: Any) -> Any:
    """A job's counts dataclass from its counters (names not fields of the class are left out)."""
    fields = counts_class.__dataclass_fields__
    return counts_class(**{k: v for k, v in values.items() if k in fields and k not in extra}, **extra)


def by_stage(values: Mapping[str, int], prefix: str = "rejected.") -> dict[str, int]:
    """Counters named `rejected.<stage>` → {stage: count}, zeros left out."""
    return {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix) and v}


def summary_line(inputs: str, written: str, rejected: int, extras: Iterable[str] = (), also: str = "") -> str:
    """Every job's summary: `N <inputs> in, M <outputs> written[, also], K rejected (extra; extra)`."""
    parts = [p for p in extras if p]
    line = f"{inputs} in, {written} written{', ' + also if also else ''}, {rejected} rejected"
    return line + (f" ({'; '.join(parts)})" if parts else "")


def listed_sizes(patterns: list[str], exclude_dir: str | None = None) -> dict[str, int]:
    """{path: size} of every file the patterns match (driver-side, for the local estimate only)."""
    from apache_beam.io.filesystems import FileSystems

    from medbeam.io import archives

    sizes: dict[str, int] = {}
    for result in FileSystems.match(patterns):
        for m in result.metadata_list:
            if not m.path.endswith("/") and not (exclude_dir and archives.is_under(m.path, exclude_dir)):
                sizes[m.path] = m.size_in_bytes
    return sizes


#: Single-core cost of the file jobs (untar, decompress: streamed decompression + writes): with two or
#: more inputs, about 64 MB in all repays worker processes.
STREAM_JOB_COST = CostModel(seconds_per_file=0.0, seconds_per_byte=AUTO_PARALLEL_MIN_SECONDS / (64 << 20))


def stream_job_seconds(sizes: Mapping[str, int]) -> float:
    """Estimated single-core work of a file job; each input is one stream, so one input cannot be spread."""
    return STREAM_JOB_COST.seconds(len(sizes), sum(sizes.values())) if len(sizes) >= 2 else 0.0


def file_job_extras(by_stage: Mapping[str, int], dirs_skipped: int = 0, collisions: int = 0, stale: int = 0) -> str:
    """The bracketed end of the file jobs' summaries: rejects by stage, skipped folders, collisions, removals."""
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


def check_duckdb_path(path: str | None) -> None:
    if path is not None and files.has_scheme(path):
        raise ValueError("--duckdb must be a local file; the Parquet tables work on gs:// and s3://")


def load_tables(duckdb_path: str | None, table_dir: str, names: list[str]) -> None:
    """(Re)create the job's tables in its DuckDB file, when it has one."""
    if duckdb_path is not None:
        tables.load_into_duckdb(duckdb_path, table_dir, names)
