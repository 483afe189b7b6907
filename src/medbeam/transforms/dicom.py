"""Thin Beam wrappers around medbeam.dicom: parse headers, pick the file that renders, render PNGs."""

from __future__ import annotations

import io
from urllib.parse import unquote
from collections.abc import Iterable, Iterator
from functools import reduce
from typing import Any, BinaryIO

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from medbeam.dicom.identity import RenderSource, instance_key, is_lossy, png_paths
from medbeam.dicom.metadata import instance_row, merge_column_types, table_schema
from medbeam.dicom.reader import DEFER_SIZE, NotDicomError, read_dataset
from medbeam.dicom.render import RenderOptions, has_pixel_data, render_png_frames
from medbeam.io import files
from medbeam.transforms.errors import reject
from medbeam.transforms.progress import ProgressTicker
from medbeam.worker import tune_allocator_for_large_images

NAMESPACE = "medbeam"
TYPES, IMAGES, REJECTS, DUPLICATES, EXAMPLES = "types", "images", "rejects", "duplicates", "examples"


class FileOpener:
    """Opens instances by file URI (local, gs://, s3://), reusing one S3 client per worker."""

    def __init__(self, storage: files.Storage | None = None):
        self._storage = storage or files.Storage()

    def setup(self) -> None:
        pass

    def open(self, uri: str) -> BinaryIO:
        return self._storage.open(uri)


class Renderer:
    """Render one dataset's frames; write them as PNGs under png_dir and/or as tf.train.Example records.

    `render()` returns the number of frames and the (key, serialized Example) records, if asked for.
    """

    def __init__(
        self,
        png_dir: str | None,
        options: RenderOptions,
        storage: files.Storage | None = None,
        examples: bool = False,
    ):
        self.png_dir = png_dir
        self.options = options
        self.examples = examples
        self._storage = storage or files.Storage()

    def render_outputs(self, ds: Any, key: tuple[str, str, str], uri: str) -> Iterator[Any]:
        """Render and write; Example records to EXAMPLES, a failure to REJECTS (stage pixels), with counters."""
        try:
            count, records = self.render(ds, key)
        except Exception as exc:  # noqa: BLE001 - the row stays; the pixels are this file's reject
            Metrics.counter(NAMESPACE, "pixel_errors").inc()
            yield TaggedOutput(REJECTS, reject(uri, "pixels", exc))
            return
        Metrics.counter(NAMESPACE, "rendered_instances").inc()
        Metrics.counter(NAMESPACE, "pngs").inc(count)
        for record in records:
            yield TaggedOutput(EXAMPLES, record)

    def render(self, ds: Any, key: tuple[str, str, str]) -> tuple[int, list[tuple[str, bytes]]]:
        pngs = render_png_frames(ds, self.options)
        if self.png_dir is not None:
            for target, data in zip(png_paths(self.png_dir, key, len(pngs)), pngs, strict=True):
                with self._storage.create(target) as f:
                    f.write(data)
        records = []
        if self.examples:
            from medbeam.pipelines.png_to_tfrecord import dicom_png_example

            for frame, (relative, data) in enumerate(zip(png_paths("", key, len(pngs)), pngs), start=1):
                records.append((relative.lstrip("/"), dicom_png_example(*key, data, frame=frame)))
        return len(pngs), records


class ParseDicomFn(beam.DoFn):
    """Instance → metadata row (main output), its column types, and, for images, a render candidate.

    With a renderer (sources whose instances are unique, like a DICOM store), images are rendered here
    from the same read instead of a second pass. Otherwise only the header is read (pixel data stays
    on disk). Inputs that are not DICOM go to rejects.
    """

    def __init__(
        self,
        want_images: bool,
        ticker: ProgressTicker,
        opener: FileOpener | None = None,
        inline_renderer: Renderer | None = None,
    ):
        self._want_images = want_images
        self._ticker = ticker
        self._opener = opener or FileOpener()
        self._inline_renderer = inline_renderer
        self._files_in = Metrics.counter(NAMESPACE, "files_in")
        self._instances = Metrics.counter(NAMESPACE, "instances")
        self._rejected = Metrics.counter(NAMESPACE, "rejected_files")
        self._pixel_errors = Metrics.counter(NAMESPACE, "pixel_errors")

    def setup(self) -> None:
        tune_allocator_for_large_images()
        self._opener.setup()

    def start_bundle(self) -> None:
        # Column types repeat from file to file: each distinct set goes out once per bundle, which spares
        # the schema merge (and any encoding of pyarrow types, ~0.5 ms per row) for the repeats.
        self._types_sent: set[frozenset[tuple[str, pa.DataType]]] = set()

    def process(self, file: tuple[str, int | None]) -> Iterator[Any]:
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

    def _parse(self, path: str, size: int | None) -> Iterator[Any]:
        with self._opener.open(path) as fp:
            ds = read_dataset(fp, defer_size=None if self._inline_renderer else DEFER_SIZE)
            if size is None:
                size = fp.seek(0, 2)
            row = instance_row(ds, path=path, file_size=size)
        self._instances.inc()
        yield row.values
        signature = frozenset(row.types.items())
        if signature not in self._types_sent:
            self._types_sent.add(signature)
            yield TaggedOutput(TYPES, row.types)
        if not (self._want_images and has_pixel_data(ds)):
            return
        try:
            key = instance_key(ds, path)
            if self._inline_renderer is None:
                yield TaggedOutput(IMAGES, (key, RenderSource(lossy=is_lossy(ds), path=path)))
                return
        except ValueError as exc:  # row kept, PNG impossible: a pixel-stage reject
            self._pixel_errors.inc()
            yield TaggedOutput(REJECTS, reject(path, "pixels", exc))
            return
        yield from self._inline_renderer.render_outputs(ds, key, path)


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

    def __init__(self, renderer: Renderer, ticker: ProgressTicker, opener: FileOpener | None = None):
        self._renderer = renderer
        self._ticker = ticker
        self._opener = opener or FileOpener()
        self._pixel_errors = Metrics.counter(NAMESPACE, "pixel_errors")

    def setup(self) -> None:
        tune_allocator_for_large_images()
        self._opener.setup()

    def process(self, element: tuple[tuple[str, str, str], str]) -> Iterator[Any]:
        key, path = element
        try:
            with self._opener.open(path) as fp:
                ds = read_dataset(fp, defer_size=None)
        except Exception as exc:  # noqa: BLE001 - the row stays; the pixels are this file's reject
            self._pixel_errors.inc()
            yield TaggedOutput(REJECTS, reject(path, "pixels", exc))
        else:
            yield from self._renderer.render_outputs(ds, key, path)
        finally:
            self._ticker.tick()


def _key_from_dicomweb_uri(uri: str) -> tuple[str, str, str]:
    parts = [unquote(p) for p in uri.rstrip("/").split("/")]
    if len(parts) < 6 or (parts[-6], parts[-4], parts[-2]) != ("studies", "series", "instances"):
        raise ValueError(f"not a WADO-RS instance URI: {uri}")
    return parts[-5], parts[-3], parts[-1]


class DicomwebOpener(FileOpener):
    """Opens instances of a DICOM store by WADO-RS URI; one client per worker, made in setup()."""

    def __init__(self, settings: Any):
        self._settings = settings
        self._client: Any = None

    def __getstate__(self) -> dict:
        return {"_settings": self._settings, "_client": None}

    def setup(self) -> None:
        if self._client is None:
            self._client = self._settings.make_client()

    def open(self, uri: str) -> BinaryIO:
        from medbeam.io.dicomweb import retrieve_instance_bytes

        self.setup()
        return io.BytesIO(retrieve_instance_bytes(self._client, *_key_from_dicomweb_uri(uri)))


class EnumerateStoreFn(beam.DoFn):
    """QIDO-RS studies → series → instances of a store (optionally some studies) → (WADO-RS URI, None)."""

    def __init__(self, settings: Any, studies: list[str] | None):
        self._settings = settings
        self._studies = studies or None

    def process(self, _: Any) -> Iterator[tuple[str, None]]:
        from medbeam.io.dicomweb import enumerate_instances, instance_url

        client = self._settings.make_client()
        for ref in enumerate_instances(client, studies=self._studies):
            yield instance_url(self._settings.url, ref.study, ref.series, ref.sop), None
