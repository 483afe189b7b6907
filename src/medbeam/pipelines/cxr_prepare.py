"""Chest X-ray datasets → frontal/lateral/other TFRecords, resized JPGs and a labels table (`cxr prepare`),
as Google's prepare_mimic_cxr.py did for the 2019 MIMIC-CXR release, for the layouts of medbeam.datasets.cxr.

    tars → stream members ─┐ (or image files → read)      resized where read, put aside in the spill
                           ├→ (key, image ref) ──────────┐  folder: only small references are joined
    label CSVs → rows ─────┴→ (key, label row) ──────────┴→ CoGroupByKey → one image + one label row?
    v2: images ⋈ metadata (numbered per study) ⋈ split on dicom_id, then ⋈ study labels (fanned out)
        → records ─┬→ by view → {tfrecord-dir}/{frontal,lateral,other}-SSSSS-of-NNNNN.tfrecord + .features.json
                   ├→ {jpg-dir}/{path in the dataset}                (these two read the JPG back)
                   └→ labels table;  everything refused → rejects table (uri, stage, reason)
    once all is written → the spill folder ({parquet-dir}/_spill) is deleted

Counts: `N images in, M records (frontal F, lateral L, other O), K rejected; R label rows, U without image`,
with N = M + K.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.pvalue import AsList

from medbeam.datasets import cxr
from medbeam.imaging.codec import DEFAULT_JPEG_QUALITY
from medbeam.imaging.resize import check_resize_mode
from medbeam.io import archives, files, tables
from medbeam.io import tfrecord as tfr
from medbeam.pipelines import runner
from medbeam.transforms.cxr import (
    FAILED,
    NAMESPACE,
    REJECTS,
    ImageSettings,
    JoinLabelsFn,
    JoinMetadataFn,
    ReadCsvFn,
    ReadImageFileFn,
    ReadTarImagesFn,
    Spilled,
    number_study_images,
)
from medbeam.transforms.errors import REJECT_SCHEMA, REJECTS_TABLE
from medbeam.transforms.outputs import ReplaceOutputs, outputs_table
from medbeam.transforms.progress import ProgressTicker

LABELS_TABLE = "labels"
SPILL_DIR = "_spill"
JOB = "cxr prepare"
DEFAULT_PARQUET_DIR = "medbeam-cxr"
#: One core's cost per image (decode at DCT scale + resize + encode + joins), for the local choice.
COST = runner.CostModel(seconds_per_file=0.04)
#: Up to this many cores a local run spreads over threads of one process, beyond it over processes.
THREADED_UP_TO_CORES = 4


def local_plan(estimate: float, cores: int | None = None) -> runner.LocalPlan:
    """How a local run spreads: the image work (inflate, JPEG decode, resize, encode) runs in C with the GIL
    released, so on a few cores threads do as well as processes (1.7-1.8x on 2 cores, benchmarks/
    bench_cxr_prepare.py) without a worker process's start-up (~2.3 s of importing Beam each, and ~10 % more
    CPU in all); on more cores the GIL-holding rest would make threads contend."""
    cores = cores or os.cpu_count() or 1
    if cores <= THREADED_UP_TO_CORES:
        return runner.LocalPlan(lambda: estimate, workers=cores, mode="multi_threading")
    return runner.LocalPlan(lambda: estimate)
_ARROW = {"string": pa.string(), "int": pa.int64(), "date": pa.date32(), "time": pa.time64("us")}
_V2_FILES = {
    "metadata": "mimic-cxr-2.0.0-metadata.csv.gz",
    "split": "mimic-cxr-2.0.0-split.csv.gz",
    "chexpert": "mimic-cxr-2.0.0-chexpert.csv.gz",
    "negbio": "mimic-cxr-2.0.0-negbio.csv.gz",
}


@dataclass
class CxrConfig:
    """Everything `medbeam cxr prepare` takes; usable from Python as a library call."""

    layout: str
    input_tars: list[str] = field(default_factory=list)
    input_csv: list[str] = field(default_factory=list)
    #: The dataset's folder (2019: tars + CSVs; v2: files/ + the CSVs; CheXpert: the folder with train.csv).
    input_dir: str | None = None
    output_jpg_dir: str | None = None
    output_tfrecord_dir: str | None = None
    #: (height, width) of the output images; None keeps the source JPGs as they are.
    image_shape: tuple[int, int] | None = (320, 320)
    resize_mode: str = "stretch"
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    #: v2: which labeller's CSV (chexpert or negbio).
    labeler: str = "chexpert"
    parquet_dir: str | None = None
    duckdb_path: str | None = None
    num_shards: int | None = None
    target_shard_bytes: int = tfr.DEFAULT_SHARD_BYTES
    rows_per_shard: int = tables.DEFAULT_ROWS_PER_SHARD
    progress: bool = True
    #: Also load the tables into BigQuery: a medbeam.io.bigquery.BigQueryTarget.
    bigquery: Any = None

    def __post_init__(self) -> None:
        cxr.check_layout(self.layout)
        if not self.input_tars and self.input_dir is None:
            raise ValueError("give --input-dir (the dataset's folder) or --input-tars")
        if self.layout == cxr.MIMIC_2019 and not self.input_csv and self.input_dir is None:
            raise ValueError("mimic-cxr-2019 needs the label CSVs: --input-csv train.csv.gz (or --input-dir)")
        if self.layout == cxr.MIMIC_JPG and self.input_dir is None:
            raise ValueError("mimic-cxr-jpg needs --input-dir: the folder with the metadata and split CSVs")
        if self.labeler not in ("chexpert", "negbio"):
            raise ValueError(f"--labeler must be chexpert or negbio, got {self.labeler!r}")
        if self.output_jpg_dir is None and self.output_tfrecord_dir is None and self.duckdb_path is None \
                and self.parquet_dir is None:  # fmt: skip
            raise ValueError("nothing to write: give --output-tfrecord-dir, --output-jpg-dir and/or --duckdb")
        if self.image_shape is not None:
            if len(self.image_shape) != 2 or min(self.image_shape) < 1:
                raise ValueError(f"--output-image-shape takes H W, got {self.image_shape}")
            self.image_shape = (int(self.image_shape[0]), int(self.image_shape[1]))
        check_resize_mode(self.resize_mode)
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("--jpeg-quality must be 1-100")
        runner.check_duckdb_path(self.duckdb_path)
        if self.parquet_dir is None:
            self.parquet_dir = (
                tables.default_parquet_dir(self.duckdb_path) if self.duckdb_path else DEFAULT_PARQUET_DIR
            )
        for name in ("output_jpg_dir", "output_tfrecord_dir", "input_dir", "parquet_dir"):
            value = getattr(self, name)
            if value is not None and not files.has_scheme(value):
                setattr(self, name, os.path.abspath(os.path.expanduser(value)))

    # The inputs, resolved from the flags and the layout's file names.

    @property
    def tar_patterns(self) -> list[str]:
        if self.input_tars:
            return [files.input_pattern(t) for t in self.input_tars]
        if self.layout == cxr.MIMIC_2019:
            return [files.join(self.input_dir, "*.tar*")]
        return []

    @property
    def image_patterns(self) -> list[str]:
        """Loose image files (when no tars are given): every .jpg below the dataset folder."""
        if self.input_tars or self.layout == cxr.MIMIC_2019:
            return []
        root = files.join(self.input_dir, "files") if self.layout == cxr.MIMIC_JPG else self.input_dir
        return [files.join(root, "**")]

    @property
    def label_csvs(self) -> list[str]:
        if self.input_csv:
            return [files.input_pattern(c) for c in self.input_csv]
        if self.layout == cxr.MIMIC_2019:
            return [files.join(self.input_dir, "*.csv.gz")]
        if self.layout == cxr.MIMIC_JPG:
            return [files.join(self.input_dir, _V2_FILES[self.labeler])]
        return [files.join(self.input_dir, name) for name in ("train.csv", "valid.csv")
                if files.has_scheme(self.input_dir) or os.path.exists(os.path.join(self.input_dir, name))]  # fmt: skip

    @property
    def spill_dir(self) -> str:
        """Where resized JPGs wait between the reading step and the writing steps (deleted at the end)."""
        return files.join(self.parquet_dir, SPILL_DIR)

    def v2_csv(self, kind: str) -> str:
        return files.join(self.input_dir, _V2_FILES[kind])

    def prefix(self, view: str) -> str:
        return files.join(self.output_tfrecord_dir, view)


@dataclass
class CxrCounts:
    images_in: int = 0
    records_written: int = 0
    records_frontal: int = 0
    records_lateral: int = 0
    records_other: int = 0
    images_rejected: int = 0
    archives_in: int = 0
    archives_rejected: int = 0
    label_rows_in: int = 0
    label_rows_matched: int = 0
    labels_rows_rejected: int = 0
    label_rows_without_image: int = 0
    label_rows_image_rejected: int = 0
    duplicate_label_rows: int = 0
    duplicate_images: int = 0
    metadata_rows_without_image: int = 0
    stale_outputs_removed: int = 0
    rejected_by_stage: dict[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return self.images_rejected

    def summary(self) -> str:
        line = (
            f"{self.images_in} images in, {self.records_written} records (frontal {self.records_frontal}, "
            f"lateral {self.records_lateral}, other {self.records_other}), {self.images_rejected} rejected; "
            f"{self.label_rows_in} label rows, {self.label_rows_without_image} without image"
        )
        extras = []
        if self.label_rows_image_rejected:
            extras.append(f"{self.label_rows_image_rejected} label rows whose image was rejected")
        if self.labels_rows_rejected:
            extras.append(f"{self.labels_rows_rejected} label rows unreadable")
        if self.duplicate_label_rows:
            extras.append(f"{self.duplicate_label_rows} in duplicate groups")
        if self.archives_rejected:
            extras.append(f"{self.archives_rejected} of {self.archives_in} archives failed")
        if self.stale_outputs_removed:
            extras.append(f"{self.stale_outputs_removed} stale JPGs removed")
        return line + (f" ({'; '.join(extras)})" if extras else "")


def labels_schema(layout: str) -> pa.Schema:
    return pa.schema([(name, _ARROW[kind]) for name, kind in cxr.table_columns(layout)])


def feature_specs(config: CxrConfig) -> list[tfr.FeatureSpec]:
    image: dict[str, Any] = {"format": "jpg"}
    if config.image_shape is not None:
        image.update(height=config.image_shape[0], width=config.image_shape[1], resize_mode=config.resize_mode,
                     jpeg_quality=config.jpeg_quality)  # fmt: skip
    return [
        tfr.FeatureSpec(name, dtype, description=text, image=image if name == "jpg_bytes" else None)
        for name, dtype, text in cxr.feature_names(config.layout)
    ]


class _SpilledExample(tfr.DeferredExample):
    """A record's Example, serialized (its JPG read back from the spill) by the worker writing its shard."""

    #: An Example's bytes besides the JPG (ids, labels, path, framing), for the shard count only.
    OVERHEAD = 256

    def __init__(self, layout: str, spilled: Spilled):
        self._layout, self._spilled = layout, spilled
        self.nbytes = spilled.size + self.OVERHEAD
        self.sort_token = spilled.record.uri

    def serialize(self, storage: files.Storage) -> bytes:
        return tfr.encode_example(cxr.record_features(self._layout, self._spilled.load(storage)))


def _encode(layout: str, spilled: Spilled) -> tuple[str, _SpilledExample]:
    return spilled.record.image.relpath, _SpilledExample(layout, spilled)


def _stats(layout: str, record: cxr.CxrRecord) -> dict[str, int]:
    features = cxr.record_features(layout, record)
    stats = {"records_written": 1}
    stats.update({tfr.present_key(name): 1 for name, value in features.items() if value is not None})
    return stats


class _WriteJpgFn(beam.DoFn):
    def __init__(self, jpg_dir: str, storage: files.Storage):
        self._dir, self._storage = jpg_dir, storage

    def process(self, spilled: Spilled):
        path = files.join(self._dir, spilled.record.image.relpath)
        jpg = spilled.load(self._storage).jpg
        if files.has_scheme(path):
            files.write_bytes(path, jpg, "image/jpeg")  # the object's content type set
        else:
            with self._storage.create(path) as f:  # a plain file: no Beam FileSystems wrapper (~0.1 ms each)
                f.write(jpg)
        yield path


def _count_view(spilled: Spilled) -> Spilled:
    from medbeam.transforms.cxr import count

    count("records_written")
    count(f"records_{spilled.record.view_name}")
    return spilled


class _DeleteSpillFn(beam.DoFn):
    """After the JPGs, tables and shards are written (the side inputs say so): the spill folder goes."""

    def __init__(self, spill_dir: str):
        self._dir = spill_dir

    def process(self, _: Any, *written: Any) -> Iterator[str]:
        files.delete_tree(self._dir)
        yield self._dir


def _spread_tars(tars, workers: int | None):
    """(path, size) of each tar → (path, size[, window]) spread over the workers. A local runner deals
    its elements out round-robin, so the tars are dealt into one share per worker of about equal bytes
    (`archives.deal_tars`, cutting at most workers - 1 tars), grouped by share; elsewhere (a cluster,
    which balances work itself) a tar much larger than the others is read in parts, reshuffled."""
    sizes = beam.pvalue.AsList(tars)
    if workers is not None:
        return (
            tars.pipeline
            | "Deal" >> beam.Impulse()
            | "Deal tars" >> beam.FlatMap(
                lambda _, listed: [(i, piece) for i, share in enumerate(archives.deal_tars(listed, workers))
                                   for piece in share], sizes)  # fmt: skip
            | "By share" >> beam.GroupByKey()
            | "Pieces" >> beam.FlatMap(lambda share: share[1])
        )

    def parts(tar: tuple[str, int], listed: list[tuple[str, int]]) -> list[tuple[Any, ...]]:
        count = archives.tar_parts(tar[1], [size for _, size in listed])
        if count == 1:
            return [tar]
        return [(*tar, window) for window in archives.tar_windows(tar[1], count)]

    return tars | "Tar parts" >> beam.FlatMap(parts, sizes) | "Spread tars" >> beam.Reshuffle()


def build(p: beam.Pipeline, config: CxrConfig, ticker: ProgressTicker | None = None) -> None:
    """Wire `cxr prepare` into `p`."""
    layout = config.layout
    storage = files.Storage(files.s3_options_of(p.options))
    settings = ImageSettings(layout, config.image_shape, config.resize_mode, config.jpeg_quality, config.spill_dir,
                             storage)  # fmt: skip
    rejects = []
    image_sets, failed_sets = [], []
    spread = not runner.runs_in_one_local_worker(p.options)  # one local worker: nothing to spread over
    if config.tar_patterns:
        from medbeam.transforms.files import match_inputs

        tars = match_inputs(p, config.tar_patterns, config.parquet_dir)
        if spread:
            tars = _spread_tars(tars, runner.local_workers(p.options))
        read = tars | "Read tars" >> beam.ParDo(
            ReadTarImagesFn(settings, archives.Limits(), storage, ticker)
        ).with_outputs(REJECTS, FAILED, main="images")
        image_sets.append(read.images)
        failed_sets.append(read[FAILED])
        rejects.append(read[REJECTS])
    if config.image_patterns:
        paths = (
            p
            | "Image patterns" >> beam.Create(config.image_patterns)
            | "Match images" >> beam.io.fileio.MatchAll()
            | "JPG files" >> beam.FlatMap(lambda m: [m.path] if m.path.lower().endswith(".jpg") else [])
        )
        if spread:
            paths = paths | "Spread images" >> beam.Reshuffle()
        read = paths | "Read images" >> beam.ParDo(ReadImageFileFn(settings, ticker)).with_outputs(
            REJECTS, FAILED, main="images"
        )
        image_sets.append(read.images)
        failed_sets.append(read[FAILED])
        rejects.append(read[REJECTS])
    images = image_sets | "All images" >> beam.Flatten()
    failed = failed_sets | "All failed images" >> beam.Flatten()

    def csv_rows(name: str, patterns: list[str], kind: str):
        matched = (
            p
            | f"{name} CSVs" >> beam.Create(patterns)
            | f"Match {name}" >> beam.io.fileio.MatchAll()
            | f"{name} paths" >> beam.Map(lambda m: m.path)
        )
        out = matched | f"Read {name}" >> beam.ParDo(ReadCsvFn(layout, kind)).with_outputs(REJECTS, main="rows")
        rejects.append(out[REJECTS])
        return out.rows

    labels = csv_rows("Label", config.label_csvs, "labels")
    if layout == cxr.MIMIC_JPG:
        metadata = (
            csv_rows("Metadata", [config.v2_csv("metadata")], "metadata")
            | "By study" >> beam.GroupByKey()
            | "Number images" >> beam.FlatMap(number_study_images)
        )
        split = csv_rows("Split", [config.v2_csv("split")], "split")
        with_meta = (
            {"images": images, "failed": failed, "metadata": metadata, "split": split}
            | "Join metadata" >> beam.CoGroupByKey()
            | "One metadata row" >> beam.ParDo(JoinMetadataFn()).with_outputs(REJECTS, FAILED, main="images")
        )
        rejects.append(with_meta[REJECTS])
        images, failed = with_meta.images, with_meta[FAILED]
    joined = (
        {"images": images, "failed": failed, "labels": labels}
        | "Join labels" >> beam.CoGroupByKey()
        | "One label row" >> beam.ParDo(JoinLabelsFn(fan_out=layout == cxr.MIMIC_JPG)).with_outputs(
            REJECTS, main="records"
        )
    )
    rejects.append(joined[REJECTS])
    records = joined.records | "Count records" >> beam.Map(_count_view)

    table_rows = records | "Label rows" >> beam.Map(lambda s: cxr.table_row(layout, s.record))
    specs = [
        tables.TableSpec(LABELS_TABLE, labels_schema(layout), ("path",)),
        tables.TableSpec(REJECTS_TABLE, REJECT_SCHEMA, ("uri", "stage")),
    ]
    rows = {LABELS_TABLE: table_rows, REJECTS_TABLE: rejects}
    if config.output_jpg_dir is not None:
        written = records | "Write JPGs" >> beam.ParDo(_WriteJpgFn(config.output_jpg_dir, storage))
        rows["outputs"] = written | "JPG manifest" >> ReplaceOutputs(config.output_jpg_dir, NAMESPACE)
        specs.append(outputs_table(config.output_jpg_dir))
    manifests = rows | "Write tables" >> tables.WriteTables(config.parquet_dir, specs, config.rows_per_shard)
    written = [manifests]
    if config.output_tfrecord_dir is not None:
        written += _write_records(p, config, records, manifests, storage)
    _ = (
        p
        | "After writing" >> beam.Impulse()
        | "Delete spill" >> beam.ParDo(_DeleteSpillFn(config.spill_dir), *[AsList(w) for w in written])
    )
    if config.bigquery is not None:
        from medbeam.transforms.bigquery import load_into_bigquery

        load_into_bigquery(manifests, config.bigquery, [LABELS_TABLE, REJECTS_TABLE], NAMESPACE)


def _write_records(p: beam.Pipeline, config: CxrConfig, records, manifests, storage: files.Storage) -> list[Any]:
    """frontal-, lateral- and other- shards, each with its features.json (counts, spec, the rejects table),
    the three sets through one sharded write and one describing step; returns the (view, shards) list."""
    layout = config.layout
    prefixes = {view: config.prefix(view) for view in cxr.VIEW_NAMES}
    rejects_manifest = manifests | "Rejects manifest" >> beam.Filter(
        lambda path: path.endswith(f"/{REJECTS_TABLE}/{tables.MANIFEST}")
    )
    shards = (
        records
        | "Encode" >> beam.Map(lambda s: (s.record.view_name, _encode(layout, s)))
        | "Write TFRecords" >> tfr.WriteExampleSets(prefixes, config.num_shards, config.target_shard_bytes, storage)
    )
    stats = records | "Stats" >> beam.Map(lambda s: (s.record.view_name, _stats(layout, s.record)))
    extras = {view: {"layout": layout, "view": index} for index, view in enumerate(cxr.VIEW_NAMES)}
    _ = p | "Describe TFRecords" >> tfr.DescribeDatasets(
        prefixes, JOB, feature_specs(config), stats, shards, rejects_manifest, ("records_written",), extras
    )
    return [shards]


def run(config: CxrConfig, beam_args: list[str] | None = None) -> CxrCounts:
    """Run `cxr prepare` to completion; counts from Beam Metrics; tables into DuckDB when asked."""
    options = runner.pipeline_options(beam_args)
    files.check_inputs_exist(config.tar_patterns or config.image_patterns, "--input-tars/--input-dir")
    files.check_inputs_exist(config.label_csvs, "--input-csv")
    if config.layout == cxr.MIMIC_JPG:
        files.check_inputs_exist([config.v2_csv("metadata"), config.v2_csv("split")], "--input-dir")
    if config.output_jpg_dir is not None:
        files.check_writable_dir(config.output_jpg_dir, "--output-jpg-dir")
    if config.output_tfrecord_dir is not None:
        files.check_writable_dir(config.output_tfrecord_dir, "--output-tfrecord-dir")
    listing = config.tar_patterns or config.image_patterns
    sizes = runner.listed_sizes(listing) if runner.is_local_runner(options) else {}
    estimate = sum(sizes.values()) / 1.5e6 if config.tar_patterns else len(sizes)  # ~1.5 MB per image
    plan = local_plan(COST.seconds(int(estimate)))
    files.delete_tree(config.spill_dir)  # what a failed run left
    result = runner.run_job(
        lambda p, tickers: build(p, config, tickers["images"]),
        beam_args,
        plan,
        progress={"images": None},
        show_progress=config.progress,
        options=options,
    )
    values = runner.counters(result, NAMESPACE)
    counts = runner.counts_of(CxrCounts, values, rejected_by_stage=runner.by_stage(values))
    runner.load_tables(config.duckdb_path, config.parquet_dir, [LABELS_TABLE, REJECTS_TABLE])
    return counts
