"""Thin Beam wrappers around medbeam.dicom: parse headers, pick the file that renders, render PNGs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import reduce
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from medbeam.dicom.identity import RenderSource, instance_key, is_lossy, png_paths
from medbeam.dicom.metadata import instance_row, merge_column_types, table_schema
from medbeam.dicom.reader import NotDicomError, read_dataset
from medbeam.dicom.render import RenderOptions, has_pixel_data, render_png_frames
from medbeam.io import files
from medbeam.transforms.errors import reject
from medbeam.transforms.progress import ProgressTicker

NAMESPACE = "medbeam"
TYPES, IMAGES, REJECTS, DUPLICATES = "types", "images", "rejects", "duplicates"


class ParseDicomFn(beam.DoFn):
    """File → metadata row (main output), its column types, and, for images, a render candidate.

    Only the header is read (pixel data stays on disk); files that are not DICOM go to rejects.
    """

    def __init__(self, want_images: bool, ticker: ProgressTicker):
        self._want_images = want_images
        self._ticker = ticker
        self._files_in = Metrics.counter(NAMESPACE, "files_in")
        self._instances = Metrics.counter(NAMESPACE, "instances")
        self._rejected = Metrics.counter(NAMESPACE, "rejected_files")
        self._pixel_errors = Metrics.counter(NAMESPACE, "pixel_errors")

    def process(self, file: tuple[str, int]) -> Iterator[Any]:
        path, size = file
        self._files_in.inc()
        try:
            outputs = list(self._parse(path, size))
        except Exception as exc:  # noqa: BLE001 - any failure is this file's reject, the run goes on
            self._rejected.inc()
            stage = "parse" if isinstance(exc, NotDicomError) else "read"
            outputs = [TaggedOutput(REJECTS, reject(path, stage, exc))]
        self._ticker.tick()
        yield from outputs

    def _parse(self, path: str, size: int) -> Iterator[Any]:
        with files.open_for_read(path) as fp:
            ds = read_dataset(fp)
            row = instance_row(ds, path=path, file_size=size)
            image = self._want_images and has_pixel_data(ds)
            if image:
                try:
                    candidate = (instance_key(ds), RenderSource(lossy=is_lossy(ds), path=path))
                except ValueError as exc:  # row kept, PNG impossible: a pixel-stage reject
                    self._pixel_errors.inc()
                    candidate = None
                    yield TaggedOutput(REJECTS, reject(path, "pixels", exc))
        self._instances.inc()
        yield row.values
        yield TaggedOutput(TYPES, row.types)
        if image and candidate is not None:
            yield TaggedOutput(IMAGES, candidate)


class MergeSchemaFn(beam.CombineFn):
    """Union of every row's column types → the table's Arrow schema."""

    def create_accumulator(self) -> dict[str, pa.DataType]:
        return {}

    def add_input(self, acc: dict[str, pa.DataType], types: dict[str, pa.DataType]) -> dict[str, pa.DataType]:
        return merge_column_types(acc, types)

    def merge_accumulators(self, accs: Iterable[dict[str, pa.DataType]]) -> dict[str, pa.DataType]:
        return reduce(merge_column_types, accs, {})

    def extract_output(self, acc: dict[str, pa.DataType]) -> pa.Schema:
        return table_schema(acc)


class ChooseRenderSourceFn(beam.DoFn):
    """One file renders each output path: lossless before lossy, then the smallest path; the rest are duplicates."""

    def __init__(self) -> None:
        self._duplicates = Metrics.counter(NAMESPACE, "duplicates")

    def process(self, element: tuple[tuple[str, str, str], Iterable[RenderSource]]) -> Iterator[Any]:
        key, sources = element
        chosen, *others = sorted(set(sources))
        yield key, chosen.path
        for other in others:
            self._duplicates.inc()
            yield TaggedOutput(
                DUPLICATES,
                reject(
                    other.path,
                    "duplicate",
                    f"same instance {key[2]} as {chosen.path}, which renders its PNG"
                    + (" (lossless copy preferred)" if other.lossy and not chosen.lossy else ""),
                    "DuplicateInstance",
                ),
            )


class RenderPngFn(beam.DoFn):
    """Read the chosen file in full, render every frame, write the PNGs under png_dir."""

    def __init__(self, png_dir: str, options: RenderOptions, ticker: ProgressTicker):
        self._png_dir = png_dir
        self._options = options
        self._ticker = ticker
        self._pngs = Metrics.counter(NAMESPACE, "pngs")
        self._rendered = Metrics.counter(NAMESPACE, "rendered_instances")
        self._pixel_errors = Metrics.counter(NAMESPACE, "pixel_errors")

    def process(self, element: tuple[tuple[str, str, str], str]) -> Iterator[Any]:
        key, path = element
        try:
            with files.open_for_read(path) as fp:
                ds = read_dataset(fp, defer_size=None)
            pngs = render_png_frames(ds, self._options)
            targets = png_paths(self._png_dir, key, len(pngs))
            for target, data in zip(targets, pngs, strict=True):
                files.write_bytes(target, data, "image/png")
        except Exception as exc:  # noqa: BLE001 - the row stays; the pixels are this file's reject
            self._pixel_errors.inc()
            yield TaggedOutput(REJECTS, reject(path, "pixels", exc))
        else:
            self._rendered.inc()
            self._pngs.inc(len(pngs))
            yield len(pngs)
        finally:
            self._ticker.tick()
