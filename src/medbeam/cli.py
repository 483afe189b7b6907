"""`medbeam` command line: parse and validate arguments, then call a pipeline's run().

Flags the command does not know pass through to Apache Beam (`--runner`, `--project`,
`--temp_location`, `--direct_num_workers`, …).
"""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from medbeam import cli_dicomweb as dw
from medbeam import cli_files, cli_tfrecord
from medbeam.cli_dicomweb import register as register_dicomweb

app = typer.Typer(help="Apache Beam pipelines for medical imaging data.", no_args_is_help=True)
dicom_app = typer.Typer(help="DICOM jobs.", no_args_is_help=True)
app.add_typer(dicom_app, name="dicom")
register_dicomweb(dicom_app)
app.add_typer(cli_files.app, name="files")
app.add_typer(cli_tfrecord.app, name="tfrecord")

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


class Window(str, Enum):
    header = "header"
    minmax = "minmax"
    none = "none"


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@dicom_app.command("export", context_settings=_PASS_THROUGH)
def dicom_export(
    ctx: typer.Context,
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="File, directory or glob (local, gs://, s3://); repeatable."),
    ] = None,
    dicomweb: Annotated[
        str | None,
        typer.Option(
            help="Export from a DICOMweb store instead of files: base URL, or the Cloud Healthcare shorthand "
            "projects/P/locations/L/datasets/D/dicomStores/S."
        ),
    ] = None,
    studies: Annotated[
        list[str] | None, typer.Option("--study", help="With --dicomweb: only this StudyInstanceUID; repeatable.")
    ] = None,
    user: dw.User = None,
    password_env: dw.PasswordEnv = None,
    password_file: dw.PasswordFile = None,
    token_env: dw.TokenEnv = None,
    token_file: dw.TokenFile = None,
    google_auth: dw.GoogleAuth = False,
    retries: dw.Retries = 5,
    retry_backoff: dw.RetryBackoff = 1.0,
    timeout: dw.Timeout = 300.0,
    png_dir: Annotated[str | None, typer.Option(help="Write {study}/{series}/{instance}.png here.")] = None,
    duckdb: Annotated[str | None, typer.Option(help="Local DuckDB file for tables dicom_metadata and rejects.")] = None,
    parquet_dir: Annotated[
        str | None, typer.Option(help="Parquet shards (any filesystem). Default: next to --duckdb.")
    ] = None,
    tfrecord_prefix: Annotated[
        str | None,
        typer.Option(help="Also write the rendered PNGs as tf.train.Example shards PREFIX-SSSSS-of-NNNNN.tfrecord."),
    ] = None,
    tfrecord_shards: Annotated[int | None, typer.Option(min=1, help="TFRecord shard count (default: ~128 MiB each).")] = None,
    window: Annotated[Window, typer.Option(help="VOI window: from the header, min-max, or none.")] = Window.header,
    window_center: Annotated[float | None, typer.Option(help="Explicit window center (with --window-width).")] = None,
    window_width: Annotated[float | None, typer.Option(help="Explicit window width (with --window-center).")] = None,
    bit_depth: Annotated[int, typer.Option(help="PNG bit depth: 8 or 16.")] = 8,
    resize: Annotated[
        tuple[int, int] | None, typer.Option(metavar="H W", help="Resize to H×W pixels, anti-aliased.")
    ] = None,
    resize_mode: cli_tfrecord.ResizeModeOption = cli_tfrecord.ResizeMode.stretch,
    resize_before_window: Annotated[
        bool, typer.Option(help="Faster: resize the raw values, then window (differs where the window clips).")
    ] = False,
    png_compression: Annotated[int, typer.Option(min=0, max=9, help="PNG zlib level: 1 fast, 9 small.")] = 1,
    rows_per_shard: Annotated[int, typer.Option(min=1, help="Rows per Parquet shard.")] = 50_000,
    progress: Annotated[bool, typer.Option(help="Progress bars on local runs.")] = True,
) -> None:
    """Export DICOM metadata to a table and pixels to PNG."""
    from medbeam.dicom.render import RenderOptions
    from medbeam.pipelines.dicom_export import ExportConfig, run

    if bool(inputs) == (dicomweb is not None):
        _fail("give --input (files) or --dicomweb (a DICOM store), exactly one of the two")
    settings = None
    if dicomweb is not None:
        settings = dw.dicomweb_settings(
            dicomweb,
            user=user,
            password_env=password_env,
            password_file=password_file,
            token_env=token_env,
            token_file=token_file,
            google_auth=google_auth,
            retries=retries,
            retry_backoff=retry_backoff,
            timeout=timeout,
        )
    if (window_center is None) != (window_width is None):
        _fail("--window-center and --window-width go together")
    if png_dir is None and duckdb is None and parquet_dir is None and tfrecord_prefix is None:
        _fail("nothing to write: give --png-dir, --tfrecord-prefix, --duckdb and/or --parquet-dir")
    try:
        render = RenderOptions(
            window=window.value,
            window_center=window_center,
            window_width=window_width,
            bit_depth=bit_depth,
            resize=tuple(resize) if resize else None,
            resize_mode=resize_mode.value,
            resize_before_window=resize_before_window,
            png_compression=png_compression,
        )
        config = ExportConfig(
            inputs=inputs or [],
            dicomweb=settings,
            studies=studies or [],
            png_dir=png_dir,
            parquet_dir=parquet_dir,
            duckdb_path=duckdb,
            tfrecord_prefix=tfrecord_prefix,
            tfrecord_num_shards=tfrecord_shards,
            render=render,
            rows_per_shard=rows_per_shard,
            progress=progress,
        )
    except ValueError as exc:
        _fail(str(exc))
    from medbeam.io.files import OutputLocationError

    try:
        counts = run(config, ctx.args)
    except (OutputLocationError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(counts.summary())
    if config.duckdb_path:
        typer.echo(f"tables: {config.duckdb_path} (dicom_metadata, rejects); Parquet: {config.parquet_dir}")
    else:
        typer.echo(f"tables: Parquet under {config.parquet_dir}")
    if png_dir:
        typer.echo(f"PNGs: {png_dir}")
    if tfrecord_prefix:
        typer.echo(f"TFRecords: {tfrecord_prefix}-*-of-*.tfrecord, spec in {tfrecord_prefix}.features.json")
    if counts.failed:
        typer.secho("error: some outputs could not be written; see the rejects table (stage write)", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("demo-out"),
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Export the bundled real DICOM corpus (pydicom's test files + pydicom-data) and summarise it."""
    from medbeam.demo import run_demo

    run_demo(out, progress=progress)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    # The DirectRunner's worker processes forward their start-up chatter as warnings; errors still show.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    app()


if __name__ == "__main__":
    main()
