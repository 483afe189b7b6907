"""DICOM files → metadata table (Parquet, DuckDB, BigQuery schema) + rendered PNGs + rejects.

    match files → reshuffle → parse + render ─┬─ rows ──────────────┐
      (one read per file; PNGs into         ├─ each bundle's column types ─→ WriteTables(dicom_metadata,
       {png_dir}/_medbeam/staging)          ├─ (instance, copy, rendered?) → group by instance ─┐
                                             │    move the first rendered copy into place ┴─→ PNGs ─→ ReplaceOutputs
                                             └─ rejects (+ duplicates, pixel/write errors) ─→         rejects)

Only small records cross the grouping (which copy, whether it rendered, why not): pixels and PNG bytes never
do, so a shuffle stays cheap on any runner and the DirectRunner's in-memory stages never hold images. Each
staged file is named by its source file, so no two workers write one file; the move of the chosen copy is
the only write of an output path. Where staging does not pay (TFRecords without a PNG folder, a PNG folder
on gs:// or s3://, see stages_pngs) the header pass groups candidates and the chosen copy is read again and
rendered. The table's schema is the union of every parse bundle's column types, merged where the rows are
given their shards (io.tables.ComputedSchema): no combine stage of its own.

Output locations are checked (a probe file) before any work starts. The PNG tree is manifested in
`{png_dir}/_medbeam/outputs/`; a rerun removes the PNGs the previous run wrote and this one did not
(medbeam.transforms.outputs), so the tree always matches the table next to it.

The reshuffle (the fan-out after matching) is left out when the DirectRunner runs one in-memory worker.
Transforms are kept few: each costs the DirectRunner ~20 ms per run, which small runs feel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam

from medbeam.dicom.render import RenderOptions
from medbeam.io import files, tables
from medbeam.pipelines import runner
from medbeam.transforms.dicom import (
    EXAMPLES,
    IMAGES,
    NAMESPACE,
    REJECTS,
    WRITTEN,
    DicomwebOpener,
    EnumerateStoreFn,
    FileOpener,
    MergeSchemaFn,
    ParseDicomFn,
    PublishInstanceFn,
    Renderer,
    RenderInstanceFn,
)
from medbeam.transforms.errors import REJECT_SCHEMA, REJECTS_TABLE
from medbeam.transforms.inputs import MatchFiles
from medbeam.transforms.outputs import OUTPUTS_TABLE, ReplaceOutputs, outputs_table
from medbeam.transforms.progress import ProgressTicker

METADATA_TABLE = "dicom_metadata"
#: Local runs use every core (DirectRunner multi_processing) when the work is estimated at this many
#: seconds on one core: worker processes cost ~5 s a run (importing Beam, shutting down), so smaller runs are
#: faster on one. The estimate is measured per-file and per-byte costs of this job on one core.
COST = runner.CostModel(seconds_per_file=0.006, seconds_per_byte=2.0e-9)


@dataclass
class ExportConfig:
    """Everything `medbeam dicom export` takes; usable from Python as a library call."""

    inputs: list[str] = field(default_factory=list)
    png_dir: str | None = None
    parquet_dir: str | None = None
    duckdb_path: str | None = None
    #: Also write the rendered PNGs as tf.train.Example shards `{prefix}-SSSSS-of-NNNNN.tfrecord`.
    tfrecord_prefix: str | None = None
    tfrecord_num_shards: int | None = None
    render: RenderOptions = field(default_factory=RenderOptions)
    rows_per_shard: int = tables.DEFAULT_ROWS_PER_SHARD
    progress: bool = True
    #: Export from a DICOM store instead of files: a medbeam.io.dicomweb.DicomwebSettings.
    dicomweb: Any = None
    #: With `dicomweb`: only these StudyInstanceUIDs.
    studies: list[str] = field(default_factory=list)
    #: Also load the tables into BigQuery: a medbeam.io.bigquery.BigQueryTarget.
    bigquery: Any = None

    def __post_init__(self) -> None:
        if bool(self.inputs) == (self.dicomweb is not None):
            raise ValueError("give input patterns or a DICOMweb store, exactly one of the two")
        if self.studies and self.dicomweb is None:
            raise ValueError("--study filters a DICOMweb export; it needs --dicomweb")
        if self.parquet_dir is None and self.duckdb_path is not None:
            self.parquet_dir = tables.default_parquet_dir(self.duckdb_path)
        if self.parquet_dir is None:
            raise ValueError("give --parquet-dir or --duckdb: the metadata and rejects tables need a home")
        if self.duckdb_path is not None and files.has_scheme(self.duckdb_path):
            raise ValueError("--duckdb must be a local file; use --parquet-dir for gs:// or s3:// tables")
        if self.rows_per_shard < 1:
            raise ValueError("rows_per_shard must be at least 1")

    def locations(self) -> list[str]:
        """Everything the export reads or writes, as the rule of medbeam.cloud_hints reads them (BigQuery as
        its option): local worker processes start without the cloud clients when none needs one."""
        named = [*self.inputs, self.png_dir, self.parquet_dir, self.duckdb_path, self.tfrecord_prefix]
        if self.dicomweb is not None:
            named.append(str(self.dicomweb.url))
        if self.bigquery is not None:
            named.append("--bigquery")
        return [str(location) for location in named if location is not None]

    def check_output_locations(self) -> None:
        """OutputLocationError (one line) for any output folder that cannot be written; nothing is read yet."""
        from pathlib import Path

        locations = [("--png-dir", self.png_dir), ("--parquet-dir", self.parquet_dir)]
        if self.duckdb_path is not None:
            locations.append(("--duckdb", str(Path(self.duckdb_path).absolute().parent)))
        if self.tfrecord_prefix is not None:
            locations.append(("--tfrecord-prefix", files.parent_dir(self.tfrecord_prefix)))
        for option, location in locations:
            if location is not None:
                files.check_writable_dir(location, option)


@dataclass
class ExportCounts:
    files_in: int = 0
    instances: int = 0
    rejected_files: int = 0
    pngs: int = 0
    rendered_instances: int = 0
    pixel_errors: int = 0
    duplicates: int = 0
    write_errors: int = 0
    stale_outputs_removed: int = 0

    @property
    def failed(self) -> bool:
        """Outputs that could not be written: the run did not do its job (exit status 1)."""
        return self.write_errors > 0

    def summary(self) -> str:
        line = (
            f"{self.files_in} files in, {self.instances} instances written, {self.pngs} PNGs, "
            f"{self.rejected_files} rejected"
        )
        extras = []
        if self.pixel_errors:
            extras.append(f"{self.pixel_errors} with undecodable pixels (row kept)")
        if self.duplicates:
            extras.append(f"{self.duplicates} duplicate copies not rendered")
        if self.write_errors:
            extras.append(f"{self.write_errors} instances whose PNGs could not be written (rejects, stage write)")
        if self.stale_outputs_removed:
            extras.append(f"{self.stale_outputs_removed} PNGs of the previous run removed")
        return line + (f" ({'; '.join(extras)})" if extras else "")


def build(
    p: beam.Pipeline,
    config: ExportConfig,
    *,
    parse_ticker: ProgressTicker | None = None,
    render_ticker: ProgressTicker | None = None,
    candidate_ticker: ProgressTicker | None = None,
) -> None:
    """Wire the export into `p`."""
    storage = files.Storage(files.s3_options_of(p.options))
    wants_images = config.png_dir is not None or config.tfrecord_prefix is not None
    renderer = (
        Renderer(config.png_dir, config.render, storage, examples=config.tfrecord_prefix is not None)
        if wants_images
        else None
    )
    if config.dicomweb is None:
        patterns = [files.input_pattern(i) for i in config.inputs]
        instances = p | "Match" >> MatchFiles(patterns)
        if len(set(patterns)) > 1:
            instances = instances | "Distinct" >> beam.Distinct()  # overlapping patterns: no duplicate rows
        opener, inline_renderer = FileOpener(storage), None
    else:
        # A store holds each SOP instance once: no duplicates to arbitrate, so render from the same fetch.
        instances = (
            p
            | "Store" >> beam.Create([None])
            | "QIDO-RS" >> beam.ParDo(EnumerateStoreFn(config.dicomweb, config.studies))
        )
        opener, inline_renderer = DicomwebOpener(config.dicomweb), renderer
    stager = renderer if inline_renderer is None and stages_pngs(config) else None
    if not runner.runs_in_one_local_worker(p.options):
        instances = instances | "Spread instances" >> beam.Reshuffle()
    parsed = (
        instances
        | "Parse" >> beam.ParDo(
            ParseDicomFn(
                wants_images,
                parse_ticker or ProgressTicker(None),
                opener,
                inline_renderer,
                candidate_ticker,
                stager,
            )
        ).with_outputs(IMAGES, REJECTS, EXAMPLES, WRITTEN, main="rows")
    )

    rejects = [parsed[REJECTS]]
    if stager is not None:
        rendered = (
            parsed[IMAGES]
            | "By instance" >> beam.GroupByKey()
            | "Publish PNGs" >> beam.ParDo(
                PublishInstanceFn(stager, render_ticker or ProgressTicker(None))
            ).with_outputs(REJECTS, EXAMPLES, WRITTEN)
        )
        rejects.append(rendered[REJECTS])
        examples, written = rendered[EXAMPLES], rendered[WRITTEN]
    elif renderer is not None and inline_renderer is None:
        rendered = (
            parsed[IMAGES]
            | "By output path" >> beam.GroupByKey()  # also the fan-out of the render work
            | "Render PNGs" >> beam.ParDo(
                RenderInstanceFn(renderer, render_ticker or ProgressTicker(None), opener)
            ).with_outputs(REJECTS, EXAMPLES, WRITTEN)
        )
        rejects.append(rendered[REJECTS])
        examples, written = rendered[EXAMPLES], rendered[WRITTEN]
    else:
        examples, written = parsed[EXAMPLES], parsed[WRITTEN]
    if config.tfrecord_prefix is not None:
        _write_examples(p, config, examples)
    table_specs = [
        # Each parse bundle's column types come among the rows (its last element), merged where the rows are
        # given their shards: no combine stage.
        tables.TableSpec(METADATA_TABLE, tables.ComputedSchema(MergeSchemaFn()), ("path",)),
        tables.TableSpec(REJECTS_TABLE, REJECT_SCHEMA, ("uri", "stage")),
    ]
    rows = {METADATA_TABLE: parsed.rows, REJECTS_TABLE: rejects}
    if config.png_dir is not None:
        # Staged PNGs are published once per instance, after the grouping by instance: paths are unique.
        unique = stager is not None
        rows[OUTPUTS_TABLE] = written | "PNG manifest" >> ReplaceOutputs(config.png_dir, NAMESPACE, unique)
        table_specs.append(outputs_table(config.png_dir))
    manifests = rows | "Write tables" >> tables.WriteTables(config.parquet_dir, table_specs, config.rows_per_shard)
    if config.bigquery is not None:
        from medbeam.transforms.bigquery import load_into_bigquery

        load_into_bigquery(manifests, config.bigquery, [METADATA_TABLE, REJECTS_TABLE], NAMESPACE)


def stages_pngs(config: ExportConfig) -> bool:
    """Whether the parse pass renders every file once into a staging folder (else: header pass, then the
    chosen copy is read again and rendered).

    Staging needs a PNG folder, and pays off where a rename is one cheap call: a local folder. On gs:// and
    s3:// a "rename" is a copy and a delete, two more write operations per PNG against the bucket's write
    rate, while reading a file twice costs one more (cheaper, unthrottled) read: there the two passes stay.
    """
    return config.dicomweb is None and config.png_dir is not None and not files.has_scheme(config.png_dir)


def _write_examples(p: beam.Pipeline, config: ExportConfig, examples: beam.PCollection) -> None:
    """The same records `medbeam tfrecord from-dicom-png` writes, straight from DICOM, plus features.json."""
    from medbeam.io import tfrecord
    from medbeam.io.examples import dicom_png_feature_specs

    shards = examples | "Write TFRecords" >> tfrecord.WriteExamples(
        config.tfrecord_prefix, config.tfrecord_num_shards
    )
    stats = examples | "Record stats" >> beam.Map(_record_stats)
    shape = None
    if config.render.resize is not None:
        from medbeam.imaging.codec import ImageShape

        shape = ImageShape(*config.render.resize, None)
    _ = p | "Describe TFRecords" >> tfrecord.DescribeDataset(
        config.tfrecord_prefix,
        "medbeam dicom export",
        dicom_png_feature_specs(shape, config.render.resize_mode),
        stats,
        shards,
        None,
        ("records_written",),
    )


def _record_stats(_: tuple[str, bytes]) -> dict[str, int]:
    from medbeam.io.tfrecord import present_key

    stats = {"records_written": 1}
    stats.update({present_key(n): 1 for n in ("study", "series", "instance", "frame", "png_bytes")})
    return stats



def run(config: ExportConfig, beam_args: list[str] | None = None) -> ExportCounts:
    """Run the export to completion, load DuckDB if asked, and return the reconciled counts."""
    options = runner.pipeline_options(beam_args)
    files.check_inputs_exist([files.input_pattern(i) for i in config.inputs])
    config.check_output_locations()
    if config.dicomweb is not None:  # a wrong URL or a closed port: one clear DicomwebError, before the run
        from medbeam.io.dicomweb import check_connection

        client = config.dicomweb.make_client()
        try:
            check_connection(client)
        finally:
            client.session.close()
    matches: set[tuple[str, int]] = set()
    if runner.is_local_runner(options):  # the listing is for the local choice and the progress total only
        matches = {m for i in config.inputs for m in files.list_files_with_sizes(files.input_pattern(i))}
    total = len(matches) if config.inputs and matches else None
    # A header pass, then the chosen copies are rendered (see stages_pngs)
    wants_images = (config.png_dir or config.tfrecord_prefix) is not None
    two_passes = wants_images and config.dicomweb is None and not stages_pngs(config)
    stages: dict[str, int | str | None] = {"instances": total}
    if two_passes:  # the render bar's total: the render candidates found so far by the header pass
        stages = {"headers": total, "rendered": "render candidates"}
    first = next(iter(stages))

    def build_with(p: beam.Pipeline, tickers: dict) -> None:
        build(
            p,
            config,
            parse_ticker=tickers[first],
            render_ticker=tickers.get("rendered"),
            candidate_ticker=tickers.get("render candidates"),
        )

    plan = runner.LocalPlan(lambda: COST.seconds(len(matches), sum(size for _, size in matches)))
    result = runner.run_job(
        build_with,
        beam_args,
        plan,
        progress=stages,
        show_progress=config.progress,
        options=options,
        locations=config.locations(),
    )
    counts = runner.counts_of(ExportCounts, runner.counters(result, NAMESPACE))
    runner.load_tables(config.duckdb_path, config.parquet_dir, [METADATA_TABLE, REJECTS_TABLE])
    return counts
