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

import logging
from typing import Annotated

import typer

from medbeam.cli import cxr, demo, dicom, files, ml, predictions, tfrecord
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


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    # The DirectRunner's worker processes forward their start-up chatter as warnings; errors still show.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    # Beam 2.77's RunInference warns on every batch when its optional model_manager import fails (it then
    # takes the `resource` module for missing too): memory metrics only, nothing the user can act on.
    logging.getLogger().addFilter(lambda record: not record.getMessage().startswith("Resource module is not available"))
    app()


__all__ = ["app", "main"]
