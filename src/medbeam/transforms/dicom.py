"""Thin Beam wrappers around medbeam.dicom: parse each file once (row, and its PNGs rendered into a staging
folder), then publish each instance's PNGs from the first copy that rendered."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from functools import reduce
from typing import Any, BinaryIO
from urllib.parse import unquote

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindows

from medbeam.dicom.identity import RenderSource, instance_key, is_lossy, png_paths
from medbeam.dicom.metadata import instance_row, merge_column_types, table_schema
from medbeam.dicom.reader import DEFER_SIZE, NotDicomError, read_dataset
from medbeam.dicom.render import RenderOptions, has_pixel_data, render_png_frames
from medbeam.io import files
from medbeam.io.sharded import SummaryPart
from medbeam.transforms.errors import reject
from medbeam.transforms.progress import ProgressTicker
from medbeam.worker import quiet_pydicom, tune_allocator_for_large_images

NAMESPACE = "medbeam"
#: distinct column-type sets remembered per list of column names in a bundle (ParseDicomFn.first_with_its_types)
TYPES_PER_NAMES = 16
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

    # -- one read per file: render in the parse pass into a staging folder, publish the chosen copy later --

    def staging_path(self, uri: str, frame: int) -> str:
        """Where the parse pass leaves frame `frame` (1-based) of the copy at `uri` until its instance's copies
        are arbitrated: one name per source file, so no two workers ever write one file."""
        token = hashlib.sha1(uri.encode("utf-8")).hexdigest()[:24]
        return f"{self._staging_dir()}/{token}-{frame:04d}.png"

    def _staging_dir(self) -> str:
        """Worked out once per Renderer: each join goes through Beam's filesystem lookup (~11 µs), and a
        slice's staging path was asked for twice (stage, publish) at ~40 µs each."""
        staging = self.__dict__.get("_staging")
        if staging is None:
            from medbeam.transforms.outputs import own_dir

            staging = self.__dict__["_staging"] = files.join(own_dir(self.png_dir), "staging").rstrip("/")
        return staging

    def stage(self, ds: Any, uri: str) -> tuple[int, tuple[str, str, str, str] | None]:
        """Render one copy and write its PNGs to the staging folder: (frames, None), or (0, failure) where
        failure is (stage: pixels or write, error type, str(error), repr(error))."""
        try:
            pngs = self.encode(ds)
        except Exception as exc:  # noqa: BLE001 - this copy cannot render; another copy may
            return 0, ("pixels", type(exc).__name__, str(exc), repr(exc))
        try:
            for frame, data in enumerate(pngs, start=1):
                with self._storage.create(self.staging_path(uri, frame)) as f:
                    f.write(data)
        except Exception as exc:  # noqa: BLE001 - the output location failed, not the pixels
            return 0, ("write", type(exc).__name__, str(exc), repr(exc))
        return len(pngs), None

    def publish(self, key: tuple[str, str, str], uri: str, frames: int) -> tuple[list[Any], bool]:
        """Move a staged copy's PNGs into place (and read them back for Example records): as write_outputs."""
        try:
            targets = png_paths(self.png_dir, key, frames)
            for frame, target in enumerate(targets, start=1):
                self._storage.move(self.staging_path(uri, frame), target)
            files.remove_empty_parents(self.staging_path(uri, 1), files.parent_dir(self._staging_dir()))
            records = []
            if self.examples:
                records = self._examples(key, [files.read_bytes(target) for target in targets])
        except Exception as exc:  # noqa: BLE001 - the output location failed, not the pixels
            Metrics.counter(NAMESPACE, "write_errors").inc()
            return [TaggedOutput(REJECTS, reject(uri, "write", exc))], False
        Metrics.counter(NAMESPACE, "rendered_instances").inc()
        Metrics.counter(NAMESPACE, "pngs").inc(frames)
        outputs: list[Any] = [TaggedOutput(WRITTEN, path) for path in targets]
        outputs += [TaggedOutput(EXAMPLES, record) for record in records]
        return outputs, True

    def discard(self, uri: str, frames: int) -> None:
        """Remove the staged PNGs of a copy that is not published."""
        for frame in range(1, frames + 1):
            self._storage.delete_if_exists(self.staging_path(uri, frame))
        if frames:
            files.remove_empty_parents(self.staging_path(uri, 1), files.parent_dir(self._staging_dir()))

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
        stager: Renderer | None = None,
    ):
        self._want_images = want_images
        self._stager = stager
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
        # Column types repeat from file to file: each distinct set is merged into the bundle's column types
        # once, which spares the merge for the repeats. Looked up by the column names, then compared as
        # dicts: the scalar types are shared objects, so equal in one identity test each (a frozenset of the
        # items hashed every pyarrow type: ~17 µs a CT row). The bundle's types go out once, at its end, among
        # the rows as the table's schema part (io.tables.ComputedSchema): one per bundle, however mixed.
        self._types_sent: dict[tuple[str, ...], list[dict[str, pa.DataType]]] = {}
        self._bundle_types: dict[str, pa.DataType] = {}

    def finish_bundle(self) -> Iterator[Any]:
        if self._bundle_types:
            yield GlobalWindows.windowed_value(SummaryPart(self._bundle_types))
        self._bundle_types = {}

    def first_with_its_types(self, types: dict[str, pa.DataType]) -> bool:
        """Whether no row of this bundle had these column types yet (remembered: the first
        TYPES_PER_NAMES sets per list of names; after that, every one is merged again, which costs the merge)."""
        sent = self._types_sent.setdefault(tuple(types), [])
        if any(types == earlier for earlier in sent):
            return False
        if len(sent) < TYPES_PER_NAMES:
            sent.append(types)
        return True

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
        for output in outputs:  # a parsed file's new column types join the bundle's (see start_bundle)
            if isinstance(output, TaggedOutput) and output.tag == TYPES:
                self._bundle_types = merge_column_types(self._bundle_types, output.value)
            else:
                yield output

    def _parse(self, path: str, size: int | None) -> Iterator[Any]:
        with self._opener.open(path) as fp:
            ds = read_dataset(fp, defer_size=None if self._inline_renderer else DEFER_SIZE)
            if size is None:
                size = fp.seek(0, 2)
            row = instance_row(ds, path=path, file_size=size)
            self._instances.inc()
            yield row.values
            if self.first_with_its_types(row.types):
                yield TaggedOutput(TYPES, row.types)
            if not (self._want_images and has_pixel_data(ds)):
                return
            try:
                key = instance_key(ds, path)
            except ValueError as exc:  # row kept, PNG impossible: a pixel-stage reject
                self._pixel_errors.inc()
                yield TaggedOutput(REJECTS, reject(path, "pixels", exc))
                return
            if self._inline_renderer is not None:
                yield from self._inline_renderer.render_outputs(ds, key, path)
                return
            lossy = is_lossy(ds)
            if self._stager is None:
                yield TaggedOutput(IMAGES, (key, RenderSource(lossy=lossy, path=path)))
                self._candidate_ticker.tick()
                return
            # The pixel data is read now, from the still open file (the header read deferred it).
            frames, failure = self._stager.stage(ds, path)
        # Only small values cross the grouping: which copy, whether it rendered, and why not.
        yield TaggedOutput(IMAGES, (key, (lossy, path, frames, failure)))


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


class PublishInstanceFn(beam.DoFn):
    """(instance key, every copy of it as staged by the parse pass) → its PNGs, from the first copy that rendered.

    The same choice as RenderInstanceFn makes with one read per file: copies in a fixed order (lossless
    before lossy, then the smallest path); the first that rendered is moved from the staging folder into
    place, the others' staged PNGs are removed and they are `duplicate` rejects naming the chosen copy
    (and, for a copy ahead of it in the order, why it did not render). When no copy rendered, every copy
    is a `pixels` reject listing all of them. Copies after the chosen one are reported as if never tried.
    """

    def __init__(self, renderer: Renderer, ticker: ProgressTicker):
        self._renderer = renderer
        self._ticker = ticker
        self._pixel_errors = Metrics.counter(NAMESPACE, "pixel_errors")
        self._duplicates = Metrics.counter(NAMESPACE, "duplicates")

    def process(self, element: tuple[tuple[str, str, str], Iterable[tuple]]) -> Iterator[Any]:
        key, copies = element
        staged = {}
        for lossy, path, frames, failure in copies:
            staged[RenderSource(lossy=lossy, path=path)] = (frames, failure)
        candidates = sorted(staged)
        failures: dict[str, Exception] = {}
        try:
            for source in candidates:
                frames, failure = staged[source]
                if failure is not None and failure[0] == "pixels":
                    failures[source.path] = _Failure(*failure[1:])
                    continue
                if failure is None:
                    outputs, written = self._renderer.publish(key, source.path, frames)
                else:  # rendered, but its PNGs could not be written: the output location's fault
                    Metrics.counter(NAMESPACE, "write_errors").inc()
                    error = reject(source.path, "write", failure[2] or failure[3], failure[1])
                    outputs, written = [TaggedOutput(REJECTS, error)], False
                yield from outputs
                for other in candidates:
                    if other != source:
                        self._renderer.discard(other.path, staged[other][0])
                yield from _duplicate_rejects(self._duplicates, key, source, candidates, failures, written)
                return
            yield from _no_copy_renders(self._pixel_errors, key, candidates, failures)
        finally:
            self._ticker.tick(len(candidates))


class _Failure(Exception):
    """Why a copy did not render, as the parse pass saw it: the message and type name of the original error."""

    def __init__(self, type_name: str, text: str, representation: str):
        super().__init__(text)
        self.type_name, self.text, self.representation = type_name, text, representation

    def __str__(self) -> str:
        return self.text


def _type_name(error: Exception) -> str:
    return error.type_name if isinstance(error, _Failure) else type(error).__name__


def _message(error: Exception) -> str:
    if isinstance(error, _Failure):
        return error.text or error.representation
    return str(error) or repr(error)


def _duplicate_rejects(
    counter: Any,
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
        counter.inc()
        message = f"same instance {key[2]} as {chosen.path}, {role}"
        if other.path in failures:
            error = failures[other.path]
            message += f"; this copy was tried first and does not render: {_type_name(error)}: {error}"
        elif other.lossy and not chosen.lossy:
            message += " (lossless copy preferred)"
        yield TaggedOutput(REJECTS, reject(other.path, "duplicate", message, "DuplicateInstance"))


def _no_copy_renders(
    counter: Any, key: tuple[str, str, str], candidates: list[RenderSource], failures: dict[str, Exception]
) -> Iterator[Any]:
    others = [c.path for c in candidates]
    for source in candidates:
        counter.inc()
        error = failures[source.path]
        message = _message(error)
        if len(others) > 1:
            message += f" (no copy of instance {key[2]} renders; copies tried in order: {', '.join(others)})"
        yield TaggedOutput(REJECTS, reject(source.path, "pixels", message, _type_name(error)))


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
                yield from _duplicate_rejects(self._duplicates, key, source, candidates, failures, written)
                return
            yield from _no_copy_renders(self._pixel_errors, key, candidates, failures)
        finally:
            self._ticker.tick(len(candidates))  # one per candidate file, as the bar's total counts them

    def _render(self, path: str) -> list[bytes]:
        with self._opener.open(path) as fp:
            ds = read_dataset(fp, defer_size=None)
        return self._renderer.encode(ds)


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
