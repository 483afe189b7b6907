"""`medbeam dicom …`: export (DICOM files or a DICOMweb store → metadata tables and PNGs) and import
(DICOM files → a DICOMweb store)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from medbeam.cli.core import command, fail, new_app, report
from medbeam.cli.options import (
    INPUTS_HELP,
    BigQueryOptions,
    DicomwebOptions,
    Progress,
    ResizeMode,
    ResizeModeOption,
    RowsPerShard,
    bigquery_line,
    options,
)

app = new_app("DICOM jobs.")


class Window(str, Enum):
    header = "header"
    minmax = "minmax"
    none = "none"


@command(
    app,
    "export",
    example="medbeam dicom export -i scans/ --png-dir out/png --duckdb out/meta.duckdb --resize 512 512 "
    "--direct_num_workers 8",
)
@options(auth=DicomwebOptions, bigquery=BigQueryOptions)
def dicom_export(
    ctx: typer.Context,
    inputs: Annotated[list[str] | None, typer.Option("--input", "-i", help=INPUTS_HELP)] = None,
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
    auth: DicomwebOptions = DicomwebOptions(),
    png_dir: Annotated[str | None, typer.Option(help="Write {study}/{series}/{instance}.png here.")] = None,
    duckdb: Annotated[str | None, typer.Option(help="Local DuckDB file for tables dicom_metadata and rejects.")] = None,
    parquet_dir: Annotated[
        str | None, typer.Option(help="Parquet shards (any filesystem). Default: next to --duckdb.")
    ] = None,
    tfrecord_prefix: Annotated[
        str | None,
        typer.Option(help="Also write the rendered PNGs as tf.train.Example shards PREFIX-SSSSS-of-NNNNN.tfrecord."),
    ] = None,
    tfrecord_shards: Annotated[
        int | None, typer.Option(min=1, help="TFRecord shard count (default: ~128 MiB each).")
    ] = None,
    window: Annotated[Window, typer.Option(help="VOI window: from the header, min-max, or none.")] = Window.header,
    window_center: Annotated[float | None, typer.Option(help="Explicit window center (with --window-width).")] = None,
    window_width: Annotated[float | None, typer.Option(help="Explicit window width (with --window-center).")] = None,
    bit_depth: Annotated[int, typer.Option(help="PNG bit depth: 8 or 16.")] = 8,
    resize: Annotated[
        tuple[int, int] | None, typer.Option(metavar="H W", help="Resize to H×W pixels, anti-aliased.")
    ] = None,
    resize_mode: ResizeModeOption = ResizeMode.stretch,
    resize_before_window: Annotated[
        bool, typer.Option(help="Faster: resize the raw values, then window (differs where the window clips).")
    ] = False,
    png_compression: Annotated[int, typer.Option(min=0, max=9, help="PNG zlib level: 1 fast, 9 small.")] = 1,
    rows_per_shard: RowsPerShard = 50_000,
    progress: Progress = True,
    bigquery: BigQueryOptions = BigQueryOptions(),
) -> None:
    """Export DICOM metadata to a table and pixels to PNG."""
    from medbeam.dicom.render import RenderOptions
    from medbeam.pipelines.dicom_export import ExportConfig, run

    if bool(inputs) == (dicomweb is not None):
        fail("give --input (files) or --dicomweb (a DICOM store), exactly one of the two")
    settings = auth.settings(dicomweb) if dicomweb is not None else None
    if (window_center is None) != (window_width is None):
        fail("--window-center and --window-width go together")
    if png_dir is None and duckdb is None and parquet_dir is None and tfrecord_prefix is None:
        fail("nothing to write: give --png-dir, --tfrecord-prefix, --duckdb and/or --parquet-dir")
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
        bigquery=bigquery.target(),
    )
    counts = run(config, ctx.args)
    lines = [
        f"tables: {config.duckdb_path} (dicom_metadata, rejects); Parquet: {config.parquet_dir}"
        if config.duckdb_path
        else f"tables: Parquet under {config.parquet_dir}"
    ]
    if png_dir:
        lines.append(f"PNGs: {png_dir}")
    if tfrecord_prefix:
        lines.append(f"TFRecords: {tfrecord_prefix}-*-of-*.tfrecord, spec in {tfrecord_prefix}.features.json")
    lines += bigquery_line(config.bigquery, ["dicom_metadata", "rejects"])
    report(counts, lines, failed="some outputs could not be written; see the rejects table (stage write)")


@command(
    app,
    "import",
    example="PACS_PASSWORD=… medbeam dicom import -i scans/ --dicomweb http://localhost:8042/dicom-web "
    "--user orthanc --password-env PACS_PASSWORD --duckdb import.duckdb",
)
@options(auth=DicomwebOptions, bigquery=BigQueryOptions)
def dicom_import(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Option("--input", "-i", help=INPUTS_HELP)],
    dicomweb: Annotated[
        str,
        typer.Option(
            "--dicomweb",
            help="DICOMweb base URL (e.g. http://localhost:8042/dicom-web) or a Cloud Healthcare store: "
            "projects/P/locations/L/datasets/D/dicomStores/S (implies --google-auth).",
        ),
    ],
    auth: DicomwebOptions = DicomwebOptions(),
    parquet_dir: Annotated[
        str | None,
        typer.Option(
            help="Tables dicom_import (what happened to each file) and rejects, as Parquet (any filesystem). "
            "Default: next to --duckdb, else ./medbeam-import."
        ),
    ] = None,
    duckdb: Annotated[str | None, typer.Option(help="Also load both tables into this local DuckDB file.")] = None,
    batch_instances: Annotated[int, typer.Option(min=1, help="At most this many instances per STOW-RS request.")] = 50,
    batch_mb: Annotated[float, typer.Option(min=0.001, help="At most this many MB per STOW-RS request.")] = 32.0,
    check_existing: Annotated[
        bool,
        typer.Option(
            help="Ask the store which instances it has before sending (QIDO-RS), so reruns send nothing twice."
        ),
    ] = True,
    rows_per_shard: RowsPerShard = 50_000,
    progress: Progress = True,
    bigquery: BigQueryOptions = BigQueryOptions(),
) -> None:
    """Import DICOM files into a DICOMweb store (STOW-RS): batched, retried, idempotent.

    Ends with `N in, S stored, A already present, K rejected`; exits 1 when files could not be sent
    because of the server (unreachable, failing, refusing the credentials or the URL): rerun to retry,
    what is stored is not sent again.
    """
    from medbeam.pipelines.dicom_import import ImportConfig, run

    settings = auth.settings(dicomweb)
    config = ImportConfig(
        inputs=inputs,
        dicomweb=settings,
        parquet_dir=parquet_dir,
        duckdb_path=duckdb,
        max_batch_instances=batch_instances,
        max_batch_bytes=max(1, int(batch_mb * 1024 * 1024)),
        check_existing=check_existing,
        rows_per_shard=rows_per_shard,
        progress=progress,
        bigquery=bigquery.target(),
    )
    counts = run(config, ctx.args)
    if config.duckdb_path:
        line = f"tables: {config.duckdb_path} (dicom_import, rejects); Parquet: {config.parquet_dir}"
    else:
        line = f"tables: Parquet under {config.parquet_dir} (dicom_import, rejects)"
    report(
        counts,
        [line, *bigquery_line(config.bigquery, ["dicom_import", "rejects"])],
        failed=f"{counts.server_failures} files were not sent because of the server ({settings.describe()}); "
        "see the rejects table, then rerun: instances already stored are not sent again",
    )


class Retain(str, Enum):
    dates_shifted = "dates-shifted"
    dates = "dates"
    uids = "uids"
    device = "device"
    institution = "institution"
    patient_characteristics = "patient-characteristics"
    safe_private = "safe-private"


class Clean(str, Enum):
    descriptors = "descriptors"


class RedactBurnedIn(str, Enum):
    none = "none"
    flagged = "flagged"
    all = "all"


class Profile(str, Enum):
    basic = "basic"


@command(
    app,
    "deidentify",
    example="MEDBEAM_DEID_KEY=… medbeam dicom deidentify -i raw/ --output-dir deid/ --key-env MEDBEAM_DEID_KEY "
    "--retain dates-shifted --duckdb out/deid.duckdb",
)
@options(auth=DicomwebOptions, bigquery=BigQueryOptions)
def dicom_deidentify(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Option("--input", "-i", help=INPUTS_HELP)],
    output_dir: Annotated[
        str | None, typer.Option(help="Write {new study}/{new series}/{new instance}.dcm here (any filesystem).")
    ] = None,
    dicomweb: Annotated[
        str | None,
        typer.Option(help="Also (or instead) STOW-RS the de-identified instances into this DICOMweb store."),
    ] = None,
    auth: DicomwebOptions = DicomwebOptions(),
    key_env: Annotated[
        str | None, typer.Option(metavar="VAR", help="Environment variable holding the secret key (>= 16 bytes).")
    ] = None,
    key_file: Annotated[str | None, typer.Option(metavar="PATH", help="File holding the secret key.")] = None,
    profile: Annotated[Profile, typer.Option(help="PS3.15 Annex E profile.")] = Profile.basic,
    retain: Annotated[
        list[Retain] | None,
        typer.Option(help="PS3.15 option to apply; repeatable (dates and dates-shifted exclude each other)."),
    ] = None,
    clean: Annotated[
        list[Clean] | None, typer.Option(help="Clean Descriptors option: scrub free text instead of removing it.")
    ] = None,
    redact_burned_in: Annotated[
        RedactBurnedIn,
        typer.Option(
            help="OCR and fill text in pixels: of flagged instances (US, SC, OT, documents, BurnedInAnnotation "
            "YES), of all, or none."
        ),
    ] = RedactBurnedIn.flagged,
    duckdb: Annotated[str | None, typer.Option(help="Local DuckDB file for tables deid_audit and rejects.")] = None,
    parquet_dir: Annotated[
        str | None, typer.Option(help="Parquet shards (any filesystem). Default: next to --duckdb.")
    ] = None,
    mapping_out: Annotated[
        str | None,
        typer.Option(
            help="Also write the original → pseudonym table (deid_mapping) here. It is PHI: keep it with the originals."
        ),
    ] = None,
    batch_instances: Annotated[int, typer.Option(min=1, help="With --dicomweb: instances per STOW-RS request.")] = 50,
    rows_per_shard: RowsPerShard = 50_000,
    progress: Progress = True,
    bigquery: BigQueryOptions = BigQueryOptions(),
) -> None:
    """De-identify DICOM files (PS3.15 Basic Profile + options), consistently across files and runs.

    Replacement UIDs, pseudonymous IDs and per-patient date shifts are keyed hashes of the originals: the
    same input and key give byte-identical outputs; another key gives unlinkable ones.
    """
    from medbeam.dicom.deidentify import DeidOptions
    from medbeam.pipelines.dicom_deidentify import DeidentifyConfig, run
    from medbeam.transforms.deidentify import KeySource

    if (key_env is None) == (key_file is None):
        fail("give the key as --key-env VAR or --key-file PATH, exactly one of the two")
    settings = auth.settings(dicomweb) if dicomweb is not None else None
    config = DeidentifyConfig(
        inputs=inputs,
        key=KeySource(env=key_env, file=key_file),
        output_dir=output_dir,
        dicomweb=settings,
        options=DeidOptions(retain=frozenset(r.value for r in retain or []), clean_descriptors=bool(clean)),
        redact_burned_in=redact_burned_in.value,
        parquet_dir=parquet_dir,
        duckdb_path=duckdb,
        mapping_out=mapping_out,
        stow_batch_instances=batch_instances,
        rows_per_shard=rows_per_shard,
        progress=progress,
        bigquery=bigquery.target(),
    )
    counts = run(config, ctx.args)
    names = "deid_audit, rejects" + (", deid_stow" if dicomweb else "")
    lines = [
        f"tables: {config.duckdb_path} ({names}); Parquet: {config.parquet_dir}"
        if config.duckdb_path
        else f"tables: Parquet under {config.parquet_dir} ({names})"
    ]
    if output_dir:
        lines.append(f"de-identified files: {output_dir}")
    lines += bigquery_line(config.bigquery, ["deid_audit", "rejects"])
    if mapping_out:
        lines.append(f"warning: {mapping_out} holds the original → pseudonym mapping: it is PHI, keep it private")
    report(counts, lines, failed="some de-identified instances were not stored; see the rejects table (stage store)")
