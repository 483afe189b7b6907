"""Batch inference (`medbeam infer`) and feature vectors (`medbeam embed`) over TFRecords, with a user's model.

    shards → records (source#index) → plugin: ids + input ─→ RunInference(Keyed(ArrayModelHandler)) ─→
        plugin: output → prediction columns (infer) | feature_vector (embed) ─→ table (+ rejects)

Google's inference_to_bigquery.py, batched, for Keras (.keras, .h5), ONNX and PyTorch models, on every
runner. The table (default `predictions` / `embeddings`) has the plugin's id columns, so it joins the
labels or metadata table on them: for `cxr prepare` records, patient, study, image, view, dataset.
Counts: `N records in, M rows written, K rejected`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from medbeam.io import files, tables
from medbeam.io import tfrecord as tfr
from medbeam.models import plugins as plugin_lib
from medbeam.models import runtimes
from medbeam.pipelines import runner
from medbeam.transforms.errors import REJECT_SCHEMA, REJECTS_TABLE
from medbeam.transforms.inference import (
    NAMESPACE,
    REJECTS,
    ArrayModelHandler,
    FailedBatchesFn,
    ListShardsFn,
    PrepareFn,
    ReadRecordsFn,
    ToRowFn,
)

DEFAULT_PARQUET_DIR = "medbeam-infer"
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,1023}$")


@dataclass
class InferConfig:
    """Everything `medbeam infer` and `medbeam embed` take; usable from Python as a library call."""

    inputs: list[str]
    model: str
    #: predict (the plugin's output columns) or embed (a feature_vector column).
    mode: str = "predict"
    plugin: str | None = None  # None: from the records' features.json (mimic-cxr, dicom-png or images)
    scale: str = "0,1"
    model_class: str | None = None
    layer: str | None = None
    batch_size: int = 32
    device: str = "cpu"
    large_model: bool = False
    table: str | None = None
    parquet_dir: str | None = None
    duckdb_path: str | None = None
    rows_per_shard: int = tables.DEFAULT_ROWS_PER_SHARD
    progress: bool = True
    bigquery: Any = None
    spec: runtimes.ModelSpec = field(init=False)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("give --input: TFRecord shards (a glob, e.g. 'out/tfrecords/frontal-*')")
        if self.mode not in ("predict", "embed"):
            raise ValueError(f"mode must be predict or embed, got {self.mode!r}")
        self.spec = runtimes.ModelSpec.of(self.model, self.model_class, self.device, self.layer)
        if self.spec.kind != runtimes.EFFICIENTNET and not files.has_scheme(self.model):
            if not os.path.isfile(self.model):
                raise FileNotFoundError(f"--model {self.model}: no such file")
        if self.spec.kind == runtimes.EFFICIENTNET and self.mode != "embed":
            raise ValueError("efficientnet-lite0 is the built-in embedding model: use it with `medbeam embed`")
        if self.scale not in plugin_lib.SCALES:
            raise ValueError(f"--scale must be one of {', '.join(plugin_lib.SCALES)}")
        if not 1 <= self.batch_size <= 4096:
            raise ValueError("--batch-size must be 1-4096")
        self.table = self.table or ("predictions" if self.mode == "predict" else "embeddings")
        if not _TABLE_NAME.match(self.table):
            raise ValueError(f"--table must be letters, digits and _ (a BigQuery table name), got {self.table!r}")
        runner.check_duckdb_path(self.duckdb_path)
        if self.parquet_dir is None:
            self.parquet_dir = (
                tables.default_parquet_dir(self.duckdb_path) if self.duckdb_path else DEFAULT_PARQUET_DIR
            )

    @property
    def patterns(self) -> list[str]:
        return [files.input_pattern(i) for i in self.inputs]


@dataclass
class InferCounts:
    records_in: int = 0
    rows_written: int = 0
    rejected: int = 0
    batches_cpu: int = 0
    batches_gpu: int = 0

    def summary(self) -> str:
        return runner.summary_line(f"{self.records_in} records", f"{self.rows_written} rows", self.rejected)


def resolve_plugin(config: InferConfig, shards: list[str]) -> Any:
    """The plugin: named, or the built-in the records' features.json calls for (its label columns too)."""
    description = _description(shards)
    features = description.get("features", []) if description else []
    name = config.plugin or (plugin_lib.guess_plugin(features) if features else None)
    if name is None:
        raise ValueError("no features.json beside the shards to tell what they hold: give --plugin")
    plugin = plugin_lib.load_plugin(name, config.scale)
    if isinstance(plugin, plugin_lib.ImagesPlugin):
        if not features:
            raise ValueError("--plugin images needs the dataset's features.json (its label columns)")
        plugin.with_labels(features)
    return plugin


def _description(shards: list[str]) -> dict[str, Any] | None:
    """features.json of the first shard's dataset (`{prefix}-SSSSS-of-NNNNN.tfrecord` → `{prefix}.features.json`)."""
    for shard in shards:
        match = re.match(r"^(.*)-\d{5}-of-\d{5}\.tfrecord$", shard)
        if match and FileSystems.exists(tfr.description_path(match.group(1))):
            return tfr.read_description(match.group(1))
    return None


def table_schema(config: InferConfig, plugin: Any) -> pa.Schema:
    columns = dict(plugin.id_columns)
    if config.mode == "embed":
        columns["feature_vector"] = pa.list_(pa.float32())
    else:
        columns.update(plugin.output_columns)
    return pa.schema(list(columns.items()))


def build(p: beam.Pipeline, config: InferConfig, plugin: Any, shards: list[str]) -> None:
    """Wire infer/embed into `p` over the listed `shards`."""
    # Two spreads, each one GroupByKey on a unique key (a Reshuffle is five steps, and pickles a timestamp
    # wrapper around every element): the shards over the workers that read them, then their records. On one
    # in-memory worker there is nothing to spread over: each would only encode, group and decode every record.
    spread = not runner.runs_in_one_local_worker(p.options)
    listed = p | "Shards" >> beam.Impulse() | "List shards" >> beam.ParDo(ListShardsFn(shards))
    if spread:
        listed = listed | "Spread shards" >> beam.GroupByKey()
    records = listed | "Read records" >> beam.ParDo(ReadRecordsFn(grouped=spread)).with_outputs(REJECTS, main="records")
    keyed = records.records | "Spread records" >> beam.GroupByKey() if spread else records.records
    prepared = keyed | "Plugin input" >> beam.ParDo(PrepareFn(plugin, grouped=spread)).with_outputs(
        REJECTS, main="inputs"
    )
    handler = KeyedModelHandler(ArrayModelHandler(config.spec, config.batch_size, config.large_model))
    main, dead = prepared.inputs | "RunInference" >> RunInference(handler).with_exception_handling()
    rows = main | "To rows" >> beam.ParDo(ToRowFn(plugin, config.mode == "embed")).with_outputs(REJECTS, main="rows")
    failed = dead.failed_inferences | "Failed batches" >> beam.ParDo(FailedBatchesFn())
    rejects = [records[REJECTS], prepared[REJECTS], rows[REJECTS], failed]
    key_columns = tuple(plugin.id_columns)
    specs = [
        tables.TableSpec(config.table, table_schema(config, plugin), key_columns),
        tables.TableSpec(REJECTS_TABLE, REJECT_SCHEMA, ("uri", "stage")),
    ]
    manifests = {config.table: rows.rows, REJECTS_TABLE: rejects} | "Write tables" >> tables.WriteTables(
        config.parquet_dir, specs, config.rows_per_shard
    )
    if config.bigquery is not None:
        from medbeam.transforms.bigquery import load_into_bigquery

        load_into_bigquery(manifests, config.bigquery, [config.table, REJECTS_TABLE], NAMESPACE)


def run(config: InferConfig, beam_args: list[str] | None = None) -> InferCounts:
    """Run infer/embed to completion; counts from Beam Metrics; tables into DuckDB when asked."""
    options = runner.pipeline_options(beam_args)
    files.check_inputs_exist(config.patterns)
    shards = sorted({path for pattern in config.patterns for path in files.list_files(pattern)
                     if not path.endswith(".json")})  # fmt: skip
    plugin = resolve_plugin(config, shards)
    plan = runner.LocalPlan(lambda: 0.0)  # in memory, one process: one model loaded, shared by its threads
    result = runner.run_job(
        lambda p: build(p, config, plugin, shards),
        beam_args,
        plan,
        progress=None,
        show_progress=config.progress,
        options=options,
    )
    counts = runner.counts_of(InferCounts, runner.counters(result, NAMESPACE))
    runner.load_tables(config.duckdb_path, config.parquet_dir, [config.table, REJECTS_TABLE])
    return counts
