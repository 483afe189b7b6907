"""`medbeam predictions …`: model outputs (batch-prediction JSON lines) → tables."""

from __future__ import annotations

from typing import Annotated

import typer

from medbeam.cli.core import command, new_app, report
from medbeam.cli.options import BigQueryOptions, Progress, RowsPerShard, bigquery_line, options

app = new_app("Model predictions: load batch-prediction JSON lines (Cloud ML, Vertex AI) into tables.")


@command(
    app,
    "load",
    example="medbeam predictions load -i 'gs://bucket/out/prediction.results-*' --duckdb out/p.duckdb "
    "--table feature_vectors --bigquery-dataset P:D",
)
@options(bigquery=BigQueryOptions)
def load(
    ctx: typer.Context,
    inputs: Annotated[
        list[str],
        typer.Option(
            "--input",
            "-i",
            help="JSON-lines file, directory (every file below it) or glob of shards, e.g. "
            "'gs://b/out/prediction.results-*' (local, gs://, s3://; gzip/bzip2/xz/zstd by their first bytes); "
            "repeatable.",
        ),
    ],
    table: Annotated[str, typer.Option(help="Name of the table (DuckDB, Parquet folder, BigQuery).")] = "predictions",
    flatten: Annotated[
        bool,
        typer.Option(
            help="Google's column rule: one column per tensor element, {name}_{i}_{j} zero-padded "
            "(feature_vector_0000 … feature_vector_2047). Default: one typed list column per key "
            "(rank ≥ 2: flattened values plus {name}_shape)."
        ),
    ] = False,
    ragged: Annotated[
        bool,
        typer.Option(help="Typed-list columns whose lengths may differ from line to line (only the rank must agree)."),
    ] = False,
    duckdb: Annotated[str | None, typer.Option(help="Local DuckDB file for the table and rejects.")] = None,
    parquet_dir: Annotated[
        str | None, typer.Option(help="Parquet shards of the tables (default: next to --duckdb).")
    ] = None,
    rows_per_shard: RowsPerShard = 5_000,
    progress: Progress = True,
    bigquery: BigQueryOptions = BigQueryOptions(),
) -> None:
    """Load batch-prediction output (one JSON object per line) into a table typed from every line.

    Each key is a column (nested objects: prediction_scores); a line whose shape or type disagrees with the
    other lines', or that is not JSON, is a reject naming its file and line. Columns source and line say
    where each row came from.
    """
    from medbeam.pipelines.predictions_load import PredictionsLoadConfig, run

    config = PredictionsLoadConfig(
        inputs=inputs,
        table=table,
        flatten=flatten,
        ragged=ragged,
        duckdb_path=duckdb,
        parquet_dir=parquet_dir,
        rows_per_shard=rows_per_shard,
        progress=progress,
        bigquery=bigquery.target(),
    )
    counts = run(config, ctx.args)
    lines = ["warning: the inputs hold no lines"] if counts.lines_in == 0 else []
    names = [config.table, "rejects"]
    where = f"{config.duckdb_path} ({', '.join(names)}); Parquet: " if config.duckdb_path else "Parquet under "
    lines.append(f"tables: {where}{config.parquet_dir}")
    report(counts, lines + bigquery_line(config.bigquery, names))
