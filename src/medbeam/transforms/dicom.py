"""Thin Beam wrappers around medbeam.dicom: parse headers, render each instance from the first copy that can."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from functools import reduce
from typing import Any, BinaryIO
from urllib.parse import unquote

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
from medbeam.worker import quiet_pydicom, tune_allocator_for_large_images

NAMESPACE = "medbeam"
TYPES, IMAGES, REJECTS, EXAMPLES, WRITTEN = "types", "images", "rejects", "examples", "written"


class FileOpener:
    """Opens instances by file URI (local, gs://, s3://), reusing one S3 client per worker."""

    def __init__(self, storage: files.Storage | None = None):
        self._storage = storage or files.Storage()

    def setup(self) -> None:
        pass

    def open(self, uri: str) -> BinaryIO:
        return self._storage.open(uri)


class Renderer:
    """Render one dataset's frames (`encode`), then write them as PNGs under png_dir and/or as
    tf.train.Example records (`write`). The two steps fail apart: a copy whose pixels do not render can
    give way to another copy of the instance, while a failed write is the output location's fault.
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
        """Render and write one copy (no other to fall back on); a pixel failure is a `pixels` reject."""
        try:
            pngs = self.encode(ds)
        except Exception as exc:  # noqa: BLE001 - the row stays; the pixels are this file's reject
            Metrics.counter(NAMESPACE, "pixel_errors").inc()
            yield TaggedOutput(REJECTS, reject(uri, "pixels", exc))
            return
        outputs, _ = self.write_outputs(key, pngs, uri)
        yield from outputs

    def encode(self, ds: Any) -> list[bytes]:
        """Every frame as PNG bytes; raises when the pixels cannot be rendered."""
        return render_png_frames(ds, self.options)

    def write_outputs(self, key: tuple[str, str, str], pngs: list[bytes], uri: str) -> tuple[list[Any], bool]:
        """Write the PNGs and build the Example records: (outputs, True), or a `write` reject and False.

        Outputs: each written PNG path to WRITTEN, each record to EXAMPLES; counters pngs and
        rendered_instances, or write_errors.
        """
        try:
            written = self._write_pngs(key, pngs)
            records = self._examples(key, pngs)
        except Exception as exc:  # noqa: BLE001 - the output location failed, not the pixels
            Metrics.counter(NAMESPACE, "write_errors").inc()
            return [TaggedOutput(REJECTS, reject(uri, "write", exc))], False
        Metrics.counter(NAMESPACE, "rendered_instances").inc()
        Metrics.counter(NAMESPACE, "pngs").inc(len(pngs))
        outputs: list[Any] = [TaggedOutput(WRITTEN, path) for path in written]
        outputs += [TaggedOutput(EXAMPLES, record) for record in records]
        return outputs, True

    def _write_pngs(self, key: tuple[str, str, str], pngs: list[bytes]) -> list[str]:
        if self.png_dir is None:
            return []
        targets = png_paths(self.png_dir, key, len(pngs))
        for target, data in zip(targets, pngs, strict=True):
            with self._storage.create(target) as f:
                f.write(data)
        return targets

    def _examples(self, key: tuple[str, str, str], pngs: list[bytes]) -> list[tuple[str, bytes]]:
        if not self.examples:
            return []
        from medbeam.io.examples import dicom_png_example

        return [
            (relative.lstrip("/"), dicom_png_example(*key, data, frame=frame))
            for frame, (relative, data) in enumerate(zip(png_paths("", key, len(pngs)), pngs), start=1)
        ]


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
        candidate_ticker: ProgressTicker | None = None,
    ):
        self._want_images = want_images
        self._ticker = ticker
        self._candidate_ticker = candidate_ticker or ProgressTicker(None)
        self._opener = opener or FileOpener()
        self._inline_renderer = inline_renderer
        self._files_in = Metrics.counter(NAMESPACE, "files_in")
        self._instances = Metrics.counter(NAMESPACE, "instances")
        self._rejected = Metrics.counter(NAMESPACE, "rejected_files")
        self._pixel_errors = Metrics.counter(NAMESPACE, "pixel_errors")

    def setup(self) -> None:
        tune_allocator_for_large_images()
        quiet_pydicom()
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
                self._candidate_ticker.tick()
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


class RenderInstanceFn(beam.DoFn):
    """(output key, every file holding that instance) → its PNGs, from the first copy that renders.

    Copies are tried in a fixed order (lossless before lossy, then the smallest path, see RenderSource):
    a copy whose pixels cannot be read or rendered gives way to the next one. The other copies are
    `duplicate` rejects naming the copy that really rendered (and, for a copy that was tried, why it
    could not); only when no copy renders is every copy a `pixels` reject, each listing all of them.
    """

    def __init__(self, renderer: Renderer, ticker: ProgressTicker, opener: FileOpener | None = None):
        self._renderer = renderer
        self._ticker = ticker
        self._opener = opener or FileOpener()
        self._pixel_errors = Metrics.counter(NAMESPACE, "pixel_errors")
        self._duplicates = Metrics.counter(NAMESPACE, "duplicates")

    def setup(self) -> None:
        tune_allocator_for_large_images()
        quiet_pydicom()
        self._opener.setup()

    def process(self, element: tuple[tuple[str, str, str], Iterable[RenderSource]]) -> Iterator[Any]:
        key, sources = element
        candidates = sorted(set(sources))
        failures: dict[str, Exception] = {}
        try:
            for source in candidates:
                try:
                    pngs = self._render(source.path)
                except Exception as exc:  # noqa: BLE001 - this copy cannot render; try the next one
                    failures[source.path] = exc
                    continue
                outputs, written = self._renderer.write_outputs(key, pngs, source.path)
                yield from outputs
                yield from self._duplicate_rejects(key, source, candidates, failures, written)
                return
            yield from self._no_copy_renders(key, candidates, failures)
        finally:
            self._ticker.tick(len(candidates))  # one per candidate file, as the bar's total counts them

    def _render(self, path: str) -> list[bytes]:
        with self._opener.open(path) as fp:
            ds = read_dataset(fp, defer_size=None)
        return self._renderer.encode(ds)

    def _duplicate_rejects(
        self,
        key: tuple[str, str, str],
        chosen: RenderSource,
        candidates: list[RenderSource],
        failures: dict[str, Exception],
        written: bool,
    ) -> Iterator[Any]:
        role = "which renders its PNG" if written else "chosen to render its PNG (the write failed)"
        for other in candidates:
            if other == chosen:
                continue
            self._duplicates.inc()
            message = f"same instance {key[2]} as {chosen.path}, {role}"
            if other.path in failures:
                error = failures[other.path]
                message += f"; this copy was tried first and does not render: {type(error).__name__}: {error}"
            elif other.lossy and not chosen.lossy:
                message += " (lossless copy preferred)"
            yield TaggedOutput(REJECTS, reject(other.path, "duplicate", message, "DuplicateInstance"))

    def _no_copy_renders(
        self, key: tuple[str, str, str], candidates: list[RenderSource], failures: dict[str, Exception]
    ) -> Iterator[Any]:
        others = [c.path for c in candidates]
        for source in candidates:
            self._pixel_errors.inc()
            error = failures[source.path]
            message = str(error) or repr(error)
            if len(others) > 1:
                message += f" (no copy of instance {key[2]} renders; copies tried in order: {', '.join(others)})"
            yield TaggedOutput(REJECTS, reject(source.path, "pixels", message, type(error).__name__))


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
