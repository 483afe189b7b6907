"""`medbeam tfrecord …`: images to TFRecord shards of tf.train.Example.

`--shape` takes two or three numbers: `--shape 299 299` or `--shape 299 299 1` (also `--shape 299,299,1`).
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated

import typer

from medbeam.cli.core import Command, command, fail, new_app, report
from medbeam.cli.options import BigQueryOptions, Progress, ResizeMode, ResizeModeOption, bigquery_line, options

app = new_app("Images → TFRecord shards of tf.train.Example.")

_INT = re.compile(r"^\d+$")
_SHAPE_HELP = "Resize to H W (keep channels) or H W C (C: 1 grey, 3 colour), anti-aliased."


class ShapeCommand(Command):
    """Lets `--shape` take 2 or 3 numbers: they are joined into one value before click parses the line."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, join_shape_args(args))

    def check_extra_args(self, ctx: typer.Context) -> None:
        stray = [a for a in ctx.args if _INT.match(a)]
        if stray:
            fail(f"unexpected argument(s) {' '.join(stray)} (--shape takes 2 or 3 numbers)")
        super().check_extra_args(ctx)


def join_shape_args(args: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out.extend(args[i:])
            break
        if arg == "--shape":
            numbers = []
            j = i + 1
            while j < len(args) and len(numbers) < 3 and _INT.match(args[j]):
                numbers.append(args[j])
                j += 1
            if numbers:
                out += ["--shape", ",".join(numbers)]
                i = j
                continue
        out.append(arg)
        i += 1
    return out


def parse_shape(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    parts = [p for p in re.split(r"[,x×\s]+", value.strip()) if p]
    if len(parts) not in (2, 3) or not all(_INT.match(p) for p in parts):
        raise ValueError(f"--shape takes H W or H W C (positive integers), got {value!r}")
    return tuple(int(p) for p in parts)


class ImageFormat(str, Enum):
    jpg = "jpg"
    png = "png"


@command(
    app,
    "from-dicom-png",
    cls=ShapeCommand,
    example="medbeam tfrecord from-dicom-png -i out/png -o out/tfrecords/train --shape 299 299 1",
)
@options(bigquery=BigQueryOptions)
def from_dicom_png(
    ctx: typer.Context,
    input: Annotated[
        str,
        typer.Option(
            "--input", "-i", help="PNG directory written by `medbeam dicom export` (local, gs://, s3://)."
        ),
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="Output prefix: PREFIX-SSSSS-of-NNNNN.tfrecord.")],
    shape: Annotated[str | None, typer.Option(metavar="H W [C]", help=_SHAPE_HELP)] = None,
    resize_mode: ResizeModeOption = ResizeMode.stretch,
    num_shards: Annotated[
        int | None, typer.Option(min=1, help="Number of shards (default: ~128 MB each).")
    ] = None,
    png_compression: Annotated[int, typer.Option(min=0, max=9, help="PNG zlib level for resized images.")] = 1,
    verify: Annotated[bool, typer.Option(help="Decode every image (else only check its signature).")] = True,
    progress: Progress = True,
    bigquery: BigQueryOptions = BigQueryOptions(),
) -> None:
    """DICOM export PNGs → TFRecords with study, series, instance, frame, png_bytes (Google's features)."""
    from medbeam.pipelines.png_to_tfrecord import PngToTfrecordConfig, run

    config = PngToTfrecordConfig(
        input=input,
        output=output,
        shape=parse_shape(shape),
        resize_mode=resize_mode.value,
        num_shards=num_shards,
        png_compression=png_compression,
        verify=verify,
        progress=progress,
        bigquery=bigquery.target(),
    )
    counts = run(config, ctx.args)
    report(counts, _outputs(config.output, counts.shards) + bigquery_line(config.bigquery, ["rejects"]))


@command(
    app,
    "from-images",
    cls=ShapeCommand,
    example="medbeam tfrecord from-images -i images/ -o tfrecords/train --shape 224 224 "
    "--labels-sql \"SELECT * FROM read_csv('labels.csv')\"",
)
@options(bigquery=BigQueryOptions)
def from_images(
    ctx: typer.Context,
    inputs: Annotated[
        list[str],
        typer.Option("--input", "-i", help="Directory, gs:// or s3:// prefix, or glob; repeatable."),
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="Output prefix: PREFIX-SSSSS-of-NNNNN.tfrecord.")],
    image_format: Annotated[
        ImageFormat, typer.Option("--format", help="Image format, kept on resize.")
    ] = ImageFormat.jpg,
    path_regex: Annotated[
        str | None, typer.Option(help=r"Full-match regex on each URI (default: (?i).*\.jpe?g or (?i).*\.png).")
    ] = None,
    shape: Annotated[str | None, typer.Option(metavar="H W [C]", help=_SHAPE_HELP)] = None,
    resize_mode: ResizeModeOption = ResizeMode.stretch,
    labels_sql: Annotated[
        str | None,
        typer.Option(
            help="DuckDB query returning `path` + label columns, e.g. SELECT * FROM read_csv('labels.csv')."
        ),
    ] = None,
    duckdb: Annotated[
        str | None, typer.Option(help="DuckDB database file the --labels-sql runs in (read-only).")
    ] = None,
    bigquery_sql: Annotated[
        str | None,
        typer.Option(
            help="Run the label query on BigQuery instead (GoogleSQL), in --project, else the project of "
            "--bigquery-dataset, else your default one; --bigquery-endpoint for an emulator."
        ),
    ] = None,
    jpeg_quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality of resized images.")] = 95,
    png_compression: Annotated[int, typer.Option(min=0, max=9, help="PNG zlib level of resized images.")] = 1,
    num_shards: Annotated[
        int | None, typer.Option(min=1, help="Number of shards (default: ~128 MB each).")
    ] = None,
    verify: Annotated[bool, typer.Option(help="Decode every image (else only check its signature).")] = True,
    progress: Progress = True,
    bigquery: BigQueryOptions = BigQueryOptions(),
) -> None:
    """Labelled JPG/PNG images → TFRecords with path, jpg_bytes|png_bytes and one feature per label column."""
    from medbeam.pipelines.images_to_tfrecord import ImagesToTfrecordConfig, run

    config = ImagesToTfrecordConfig(
        inputs=inputs,
        output=output,
        image_format=image_format.value,
        path_regex=path_regex,
        shape=parse_shape(shape),
        resize_mode=resize_mode.value,
        labels_sql=labels_sql,
        bigquery_sql=bigquery_sql,
        bigquery_endpoint=bigquery.bigquery_endpoint,
        bigquery=bigquery.target(),
        duckdb_path=duckdb,
        jpeg_quality=jpeg_quality,
        png_compression=png_compression,
        num_shards=num_shards,
        verify=verify,
        progress=progress,
    )
    try:
        counts = run(config, ctx.args)  # its ValueErrors (e.g. label columns that cannot be features): exit 2
    except _query_errors() as exc:
        fail(f"label query failed: {exc}")
    report(counts, _outputs(config.output, counts.shards) + bigquery_line(config.bigquery, ["rejects"]))


def _query_errors() -> tuple[type[BaseException], ...]:
    """What a label query's failure in the driver raises (DuckDB's errors, the BigQuery dry run's)."""
    import duckdb

    from medbeam.io.bigquery import BigQueryQueryError

    return (duckdb.Error, BigQueryQueryError)


def _outputs(prefix: str, shards: int) -> list[str]:
    from medbeam.io import tfrecord as tfr
    from medbeam.io.examples import rejects_location

    table_dir, table = rejects_location(prefix)
    return [
        f"TFRecords: {tfr.shard_glob(prefix)} ({shards} shards); spec: {tfr.description_path(prefix)}",
        f"rejects: {table_dir}/{table}/",
    ]
