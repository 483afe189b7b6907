"""`medbeam files …`: unpack tar archives and decompress files (local, gs://, s3://)."""

from __future__ import annotations

from typing import Annotated

import typer

from medbeam.cli.core import command, fail, new_app, report
from medbeam.cli.options import INPUTS_HELP, BigQueryOptions, Progress, bigquery_line, options

app = new_app("File jobs: unpack tar archives, decompress .gz/.bz2/.xz/.zst files.")

_REJECTS_HELP = "Directory for the rejects table (Parquet). Default: {default}."
_DUCKDB_HELP = "Also load the rejects table into this local DuckDB file (table `rejects`)."
_RATIO_HELP = "Bomb guard: refuse more than this many expanded bytes per compressed byte (0: no limit)."


def _size(text: str, flag: str) -> int | None:
    from medbeam.io.archives import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        fail(f"{flag}: {exc}")


def _ratio(value: float) -> float | None:
    if value < 0:
        fail("--max-ratio must be positive (0 for no limit)")
    return value or None


def _lines(files_in: int, outputs: str, rejects_dir: str, duckdb: str | None, what: str) -> list[str]:
    lines = [f"warning: no {what} matched the inputs"] if files_in == 0 else []
    tables = f"Parquet under {rejects_dir}/rejects"
    return [
        *lines,
        f"files: {outputs}",
        f"rejects: {duckdb} (table rejects); {tables}" if duckdb else f"rejects: {tables}",
    ]


@command(
    app,
    "untar",
    example="medbeam files untar -i 'gs://bucket/raw/*.tar.gz' --output-dir gs://bucket/unpacked --archive-subdir "
    "--runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp",
)
@options(bigquery=BigQueryOptions)
def untar(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Option("--input", "-i", help=INPUTS_HELP + " Each file is one archive.")],
    output_dir: Annotated[str, typer.Option(help="Members go to {output-dir}/{member path}.")],
    archive_subdir: Annotated[
        bool, typer.Option(help="Put each archive's members under {output-dir}/{archive name without .tar…}/.")
    ] = False,
    rejects_dir: Annotated[str | None, typer.Option(help=_REJECTS_HELP.format(default="{output-dir}/_medbeam"))] = None,
    duckdb: Annotated[str | None, typer.Option(help=_DUCKDB_HELP)] = None,
    max_ratio: Annotated[float, typer.Option(help=_RATIO_HELP)] = 1000.0,
    max_archive_bytes: Annotated[
        str, typer.Option(metavar="SIZE", help="Bomb guard: most bytes one archive may expand to, e.g. 500GiB.")
    ] = "none",
    progress: Progress = True,
    bigquery: BigQueryOptions = BigQueryOptions(),
) -> None:
    """Unpack .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz and .tar.zst archives, streamed, in parallel."""
    from medbeam.pipelines.untar import UntarConfig, run

    config = UntarConfig(
        inputs=inputs,
        output_dir=output_dir,
        archive_subdir=archive_subdir,
        rejects_dir=rejects_dir,
        duckdb_path=duckdb,
        max_ratio=_ratio(max_ratio),
        max_archive_bytes=_size(max_archive_bytes, "--max-archive-bytes"),
        progress=progress,
        bigquery=bigquery.target(),
    )
    counts = run(config, ctx.args)
    lines = _lines(counts.archives_in, config.output_dir, config.rejects_dir, duckdb, "archives")
    report(counts, lines + bigquery_line(config.bigquery, ["rejects"]))


@command(
    app,
    "decompress",
    example=r"medbeam files decompress -i gs://bucket/raw --output-dir gs://bucket/plain "
    r"--path-sub-pattern '(.*)\.gz' --path-sub-repl '\1' --max-output-bytes 10GiB",
)
@options(bigquery=BigQueryOptions)
def decompress(
    ctx: typer.Context,
    inputs: Annotated[
        list[str],
        typer.Option("--input", "-i", help="Prefix, directory or glob (local, gs://, s3://); repeatable."),
    ],
    path_sub_pattern: Annotated[
        str,
        typer.Option(help="Regex: files whose path it matches (re.search) are decompressed; also names the output."),
    ] = r"(.*)\.(?:gz|bz2|xz|zst)$",
    path_sub_repl: Annotated[
        str, typer.Option(help=r"Output path = re.sub(pattern, repl, input path); may use \1, \g<name>.")
    ] = r"\1",
    output_dir: Annotated[
        str | None,
        typer.Option(help="Place outputs here, by their path below the input's directory (default: in place)."),
    ] = None,
    rejects_dir: Annotated[
        str | None,
        typer.Option(
            help=_REJECTS_HELP.format(default="{output-dir}/_medbeam, else _medbeam in the first input's directory")
        ),
    ] = None,
    duckdb: Annotated[str | None, typer.Option(help=_DUCKDB_HELP)] = None,
    max_ratio: Annotated[float, typer.Option(help=_RATIO_HELP)] = 1000.0,
    max_output_bytes: Annotated[
        str, typer.Option(metavar="SIZE", help="Bomb guard: most bytes one file may expand to ('none': no limit).")
    ] = "64GiB",
    progress: Progress = True,
    bigquery: BigQueryOptions = BigQueryOptions(),
) -> None:
    """Decompress gzip, bzip2, xz and zstd files (format from their magic bytes), streamed, in parallel.

    As Google's decompress_gcs.py: --path-sub-pattern '(.*)\\.gz' --path-sub-repl '\\1' writes x.csv.gz to x.csv.
    """
    from medbeam.pipelines.decompress import DecompressConfig, run

    config = DecompressConfig(
        inputs=inputs,
        path_sub_pattern=path_sub_pattern,
        path_sub_repl=path_sub_repl,
        output_dir=output_dir,
        rejects_dir=rejects_dir,
        duckdb_path=duckdb,
        max_ratio=_ratio(max_ratio),
        max_output_bytes=_size(max_output_bytes, "--max-output-bytes"),
        progress=progress,
        bigquery=bigquery.target(),
    )
    counts = run(config, ctx.args)
    outputs = config.output_dir or "next to the inputs"
    lines = _lines(counts.files_in, outputs, config.rejects_dir, duckdb, "files")
    report(counts, lines + bigquery_line(config.bigquery, ["rejects"]))
