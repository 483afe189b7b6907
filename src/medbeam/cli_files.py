"""`medbeam files …`: unpack tar archives and decompress files (local, gs://, s3://).

Mounted by the main app as `app.add_typer(cli_files.app, name="files")`. Flags a command does not know
pass through to Apache Beam (`--runner`, `--project`, `--temp_location`, `--direct_num_workers`, …).
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="File jobs: unpack tar archives, decompress .gz/.bz2/.xz/.zst files.", no_args_is_help=True)

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

_INPUTS_HELP = "File, directory or glob (local, gs://, s3://); repeatable."
_REJECTS_HELP = "Directory for the rejects table (Parquet). Default: {default}."
_DUCKDB_HELP = "Also load the rejects table into this local DuckDB file (table `rejects`)."
_RATIO_HELP = "Bomb guard: refuse more than this many expanded bytes per compressed byte (0: no limit)."


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _size(text: str, flag: str) -> int | None:
    from medbeam.io.archives import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        _fail(f"{flag}: {exc}")
    raise AssertionError


def _ratio(value: float) -> float | None:
    if value < 0:
        _fail("--max-ratio must be positive (0 for no limit)")
    return value or None


def _report(summary: str, files_in: int, outputs: str, rejects_dir: str, duckdb: str | None, what: str) -> None:
    typer.echo(summary)
    if files_in == 0:
        typer.secho(f"warning: no {what} matched the inputs", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"files: {outputs}")
    tables = f"Parquet under {rejects_dir}/rejects"
    typer.echo(f"rejects: {duckdb} (table rejects); {tables}" if duckdb else f"rejects: {tables}")


@app.command("untar", context_settings=_PASS_THROUGH)
def untar(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Option("--input", "-i", help=_INPUTS_HELP + " Each file is one archive.")],
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
) -> None:
    """Unpack .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz and .tar.zst archives, streamed, in parallel."""
    from medbeam.pipelines.untar import UntarConfig, run

    try:
        config = UntarConfig(
            inputs=inputs,
            output_dir=output_dir,
            archive_subdir=archive_subdir,
            rejects_dir=rejects_dir,
            duckdb_path=duckdb,
            max_ratio=_ratio(max_ratio),
            max_archive_bytes=_size(max_archive_bytes, "--max-archive-bytes"),
        )
        counts = run(config, ctx.args)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    _report(counts.summary(), counts.archives_in, config.output_dir, config.rejects_dir, duckdb, "archives")


@app.command("decompress", context_settings=_PASS_THROUGH)
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
) -> None:
    """Decompress gzip, bzip2, xz and zstd files (format from their magic bytes), streamed, in parallel.

    As Google's decompress_gcs.py: --path-sub-pattern '(.*)\\.gz' --path-sub-repl '\\1' writes x.csv.gz to x.csv.
    """
    from medbeam.pipelines.decompress import DecompressConfig, run

    try:
        config = DecompressConfig(
            inputs=inputs,
            path_sub_pattern=path_sub_pattern,
            path_sub_repl=path_sub_repl,
            output_dir=output_dir,
            rejects_dir=rejects_dir,
            duckdb_path=duckdb,
            max_ratio=_ratio(max_ratio),
            max_output_bytes=_size(max_output_bytes, "--max-output-bytes"),
        )
        counts = run(config, ctx.args)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    outputs = config.output_dir or "next to the inputs"
    _report(counts.summary(), counts.files_in, outputs, config.rejects_dir, duckdb, "files")
