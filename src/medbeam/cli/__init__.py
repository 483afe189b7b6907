"""`medbeam` command line: parse and check arguments, then call a pipeline's run().

One module per command group, each a Typer app mounted here with `add_typer`:

* `dicom` (medbeam.cli.dicom): export, import
* `files` (medbeam.cli.files): untar, decompress
* `tfrecord` (medbeam.cli.tfrecord): from-dicom-png, from-images
* `cxr` (medbeam.cli.cxr): prepare (chest X-ray datasets)
* `infer`, `embed` (medbeam.cli.ml): a model over TFRecords → predictions / embeddings
* `predictions` (medbeam.cli.predictions): load (batch-prediction JSON lines → a table)
* `demo` (medbeam.cli.demo)

What they share (the error path, the Beam pass-through, the help epilog) is in medbeam.cli.core; the
option groups (DICOMweb connection and auth, the resize mode, …) in medbeam.cli.options. Flags a command
does not know go to Apache Beam when they are Beam pipeline options (`--runner`, `--project`,
`--temp_location`, `--direct_num_workers`, …) and are an error otherwise. Pipelines are imported inside
the commands, so `medbeam --help` stays fast.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import Annotated

import typer

from medbeam.cli import cxr, demo, dicom, files, lean_imports, ml, predictions, tfrecord
from medbeam.cli.core import Group

app = typer.Typer(cls=Group, help="Apache Beam pipelines for medical imaging data.", no_args_is_help=True)
app.add_typer(dicom.app, name="dicom")
app.add_typer(files.app, name="files")
app.add_typer(tfrecord.app, name="tfrecord")
app.add_typer(cxr.app, name="cxr")
app.add_typer(ml.app)
app.add_typer(predictions.app, name="predictions")
app.add_typer(demo.app)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("medbeam")
    except PackageNotFoundError:  # run from a source tree
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"medbeam {version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print medbeam's version and exit."),
    ] = False,
) -> None:
    """Apache Beam pipelines for medical imaging data."""


#: The Arrow allocator a `medbeam` process uses unless the environment names one (Arrow reads it once).
ARROW_POOL_ENV, ARROW_POOL = "ARROW_DEFAULT_MEMORY_POOL", "system"


def main() -> None:
    # Arrow's default mimalloc keeps a heap per thread and hands little back: tables are built on Beam's
    # bundle threads, and a 4,000-slice export peaked 26 MB (11 %) higher with it than with the system
    # allocator, at no measurable speed (docs/SCALE.md, memory). Worker processes inherit the setting.
    os.environ.setdefault(ARROW_POOL_ENV, ARROW_POOL)
    # Beam's start-up without the cloud clients a local command never uses (~1 s of it where installed).
    lean_imports.defer_unused_clients(sys.argv[1:])
    logging.basicConfig(level=logging.WARNING)
    # The DirectRunner's worker processes forward their start-up chatter as warnings; errors still show.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    # Beam 2.77's RunInference warns on every batch when its optional model_manager import fails (it then
    # takes the `resource` module for missing too): memory metrics only, nothing the user can act on.
    logging.getLogger().addFilter(lambda record: not record.getMessage().startswith("Resource module is not available"))
    try:
        app()
    except SystemExit as finished:
        end_process(finished.code)
        raise
    end_process(0)


#: Set (to anything) to end `medbeam` through the interpreter's full shutdown instead (end_process).
FULL_SHUTDOWN_ENV = "MEDBEAM_FULL_SHUTDOWN"


def end_process(code: object, wait_for_threads: bool = True) -> None:
    """Exit with `code` once the command is done, skipping the interpreter's teardown of its modules.

    After a Beam run that teardown (freeing every object of ~2,000 imported modules, module by module)
    takes ~0.5-0.7 CPU-s, more than the run of a small export itself; nothing of the command's depends on
    it. What a normal exit does that matters is kept: atexit handlers run (temporary folders, logging,
    multiprocessing children), stdout and stderr are flushed, and `code` means what `sys.exit(code)`
    means. Returns (the caller then exits normally) while another non-daemon thread is still running, or
    under a tracer or profiler (coverage, cProfile: they write their results at shutdown), or when
    FULL_SHUTDOWN_ENV is set. `wait_for_threads=False` (a worker process whose harness has returned, see
    medbeam.cli.sdk_worker) ends it while idle threads are still there.
    """
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    traced = sys.gettrace() is not None or sys.getprofile() is not None
    if (others and wait_for_threads) or traced or os.environ.get(FULL_SHUTDOWN_ENV):
        return
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): the message goes to stderr, the status is 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()  # noqa: SLF001 - what Py_FinalizeEx runs; the only part of it we keep
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it anyway
            pass
    os._exit(status & 0xFF)


__all__ = ["app", "end_process", "main"]
