"""`medbeam cxr …`: chest X-ray datasets (MIMIC-CXR 2019 and JPG v2, CheXpert) → TFRecords, JPGs, labels."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from medbeam.cli.core import command, new_app, report
from medbeam.cli.options import BigQueryOptions, Progress, ResizeMode, ResizeModeOption, bigquery_line, options

app = new_app("Chest X-ray datasets → frontal/lateral TFRecords, resized JPGs and a labels table.")


class Layout(str, Enum):
    mimic_cxr_2019 = "mimic-cxr-2019"
    mimic_cxr_jpg = "mimic-cxr-jpg"
    chexpert = "chexpert"


class Labeler(str, Enum):
    chexpert = "chexpert"
    negbio = "negbio"


@command(
    app,
    "prepare",
    example="medbeam cxr prepare --layout mimic-cxr-2019 --input-tars 'gs://b/raw/train_p*' "
    "--input-csv gs://b/raw/train.csv.gz --output-jpg-dir out/jpg --output-tfrecord-dir out/tfrecords "
    "--output-image-shape 320 320 --duckdb out/cxr.duckdb",
)
@options(bigquery=BigQueryOptions)
def prepare(
    ctx: typer.Context,
    layout: Annotated[Layout, typer.Option(help="The dataset's published layout.")],
    input_tars: Annotated[
        list[str] | None, typer.Option(help="Tar archives of the images (glob, local, gs://, s3://); repeatable.")
    ] = None,
    input_csv: Annotated[
        list[str] | None,
        typer.Option(help="Label CSV(s), gzip or not (default: the layout's files in --input-dir); repeatable."),
    ] = None,
    input_dir: Annotated[
        str | None,
        typer.Option(help="The dataset's folder: 2019 tars + CSVs; v2 files/ + its CSVs; CheXpert the folder "
                     "with train.csv."),  # fmt: skip
    ] = None,
    output_jpg_dir: Annotated[str | None, typer.Option(help="Resized JPGs, by their path in the dataset.")] = None,
    output_tfrecord_dir: Annotated[
        str | None, typer.Option(help="frontal-, lateral- and other-SSSSS-of-NNNNN.tfrecord (+ .features.json).")
    ] = None,
    output_image_shape: Annotated[
        tuple[int, int] | None, typer.Option(metavar="H W", help="Resize to H×W (default 320 320).")
    ] = None,
    keep_size: Annotated[bool, typer.Option(help="Keep the source JPGs as they are (checked, not resized).")] = False,
    resize_mode: ResizeModeOption = ResizeMode.stretch,
    jpeg_quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality of the resized images.")] = 95,
    labeler: Annotated[
        Labeler, typer.Option(help="mimic-cxr-jpg: the chexpert or negbio label CSV.")
    ] = Labeler.chexpert,
    duckdb: Annotated[str | None, typer.Option(help="Local DuckDB file for tables labels and rejects.")] = None,
    parquet_dir: Annotated[
        str | None, typer.Option(help="Parquet shards of the tables (default: next to --duckdb).")
    ] = None,
    num_shards: Annotated[int | None, typer.Option(min=1, help="Shards per view (default: ~128 MB each).")] = None,
    progress: Progress = True,
    bigquery: BigQueryOptions = BigQueryOptions(),
) -> None:
    """Images + label CSVs → frontal/lateral/other TFRecords (Google's features), resized JPGs, labels table.

    Ends with `N images in, M records (frontal F, lateral L, other O), K rejected; R label rows, U without
    image`; every image or row left out is in the rejects table, with the reason.
    """
    from medbeam.pipelines.cxr_prepare import CxrConfig, run

    config = CxrConfig(
        layout=layout.value,
        input_tars=input_tars or [],
        input_csv=input_csv or [],
        input_dir=input_dir,
        output_jpg_dir=output_jpg_dir,
        output_tfrecord_dir=output_tfrecord_dir,
        image_shape=None if keep_size else (tuple(output_image_shape) if output_image_shape else (320, 320)),
        resize_mode=resize_mode.value,
        jpeg_quality=jpeg_quality,
        labeler=labeler.value,
        duckdb_path=duckdb,
        parquet_dir=parquet_dir,
        num_shards=num_shards,
        progress=progress,
        bigquery=bigquery.target(),
    )
    counts = run(config, ctx.args)
    lines = []
    if config.output_tfrecord_dir:
        lines.append(f"TFRecords: {config.output_tfrecord_dir}/{{frontal,lateral,other}}-*-of-*.tfrecord")
    if config.output_jpg_dir:
        lines.append(f"JPGs: {config.output_jpg_dir}")
    where = f"{config.duckdb_path} (labels, rejects); Parquet: " if config.duckdb_path else "Parquet under "
    lines.append(f"tables: {where}{config.parquet_dir}")
    report(counts, lines + bigquery_line(config.bigquery, ["labels", "rejects"]))
