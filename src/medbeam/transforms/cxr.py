"""Beam steps of `cxr prepare`: thin wrappers around medbeam.datasets.cxr and medbeam.imaging.codec.

Images are resized where they are read (in the tar-reading step, or per listed file), and the resized JPG
is put aside in the spill folder at once (`spill_path`): what travels through the joins and the shard
shuffle is a small reference (`Spilled`), and the bytes are read back only by the steps that write the
JPG and the record's shard. Why: a runner keeps or shuffles every element that crosses a stage boundary
(the in-memory DirectRunner holds whole PCollections), so carrying 40 KB per image made memory grow with
the dataset; now it grows by a few hundred bytes per image. Every refusal is a reject row (stage path,
read, decode, labels or join) and a Beam Metrics counter in NAMESPACE.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from medbeam.datasets import cxr
from medbeam.imaging.codec import FormatMismatchError, ImageDecodeError, check_format, shrink_jpeg
from medbeam.io import archives, files
from medbeam.transforms import metrics
from medbeam.transforms.errors import reject
from medbeam.transforms.files import member_uri
from medbeam.transforms.progress import ProgressTicker

NAMESPACE = "medbeam.cxr"
REJECTS = "rejects"
#: (join key, uri) of an image whose path parsed but whose bytes were refused: its label row then says so.
FAILED = "failed"
#: A tar member larger than this is not taken for a chest X-ray JPG (and never read into memory).
MAX_IMAGE_BYTES = 256 * 1024 * 1024


def count(name: str, value: int = 1) -> None:
    metrics.inc(NAMESPACE, name, value)


def spill_path(spill_dir: str, uri: str) -> str:
    """Where one image's resized JPG waits: a name from its URI, so a retried bundle rewrites the same file."""
    digest = hashlib.blake2b(uri.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
    return files.join(spill_dir, digest[:2], digest + ".jpg")


@dataclasses.dataclass(frozen=True)
class Spilled:
    """A record whose JPG waits in the spill folder: its `record.jpg` is empty until `load()`."""

    record: cxr.CxrRecord
    spill: str
    size: int

    def load(self, storage: files.Storage) -> cxr.CxrRecord:
        with storage.open(self.spill) as f:
            return dataclasses.replace(self.record, jpg=f.read())


class ImageSettings:
    """How images are resized: (height, width) or None to keep them (still checked to decode); where the
    resized JPGs wait for the joins (`spill_dir`), written through `storage` (one S3 client per worker,
    plain files locally: Beam's FileSystems would build an S3 client for every spilled JPG)."""

    def __init__(self, layout: str, shape: tuple[int, int] | None, resize_mode: str, quality: int,
                 spill_dir: str, storage: files.Storage):  # fmt: skip
        self.layout, self.shape, self.resize_mode, self.quality = layout, shape, resize_mode, quality
        self.spill_dir, self.storage = spill_dir, storage

    def prepare(self, uri: str, path: str, data: bytes) -> Iterator[Any]:
        """(join key, image dict) of one image, or its reject (unknown path, not a JPEG, undecodable) and,
        when the path named a key, (key, uri) on FAILED."""
        try:
            key = cxr.parse_image_path(self.layout, path)
        except cxr.UnknownPathError as exc:
            yield _image_reject(uri, "path", exc)
            return
        try:
            if self.shape is None:
                check_format(data, "jpg")
                shrink_jpeg(data, 1, 1)  # decodes the whole file at 1/8 scale: a truncated one fails here
                jpg = data
            else:
                jpg = shrink_jpeg(data, *self.shape, resize_mode=self.resize_mode, quality=self.quality)
        except (FormatMismatchError, ImageDecodeError) as exc:
            yield _image_reject(uri, "decode", exc)
            yield TaggedOutput(FAILED, (key.key, {"uri": uri, "reason": f"{type(exc).__name__}: {exc}"}))
            return
        spill = spill_path(self.spill_dir, uri)
        with self.storage.create(spill) as f:
            f.write(jpg)
        digest = hashlib.sha256(jpg).hexdigest()
        yield key.key, {"uri": uri, "image": key, "spill": spill, "size": len(jpg), "sha256": digest}


def _image_reject(uri: str, stage: str, exc: Exception) -> TaggedOutput:
    count("images_rejected")
    count(f"rejected.{stage}")
    return TaggedOutput(REJECTS, reject(uri, stage, exc))


class ReadTarImagesFn(beam.DoFn):
    """(tar path, size[, window]) → (key, image) for each member (of that window of the tar: its part,
    `archives.tar_windows` / `archives.deal_tars`), streamed one at a time; rejects for the rest. A part's
    failure is reported by the part it happened in (`archives.window_owns`), once; `archives_in` is counted
    by the part that starts the tar."""

    def __init__(self, settings: ImageSettings, limits: archives.Limits, storage: files.Storage,
                 ticker: ProgressTicker | None = None):  # fmt: skip
        self._settings, self._limits, self._storage = settings, limits, storage
        self._ticker = ticker or ProgressTicker(None)

    def process(self, element: tuple[Any, ...]) -> Iterator[Any]:
        archive, size = element[0], element[1]
        window = element[2] if len(element) > 2 else None
        first = window is None or window[0] == 0
        if first:
            count("archives_in")
        reached = False
        try:
            members = archives.read_members(archive, size, self._limits, MAX_IMAGE_BYTES, self._storage, window)
            for event in members:
                reached = True
                if event.kind == "skipped":
                    continue
                count("images_in")
                self._ticker.tick()
                uri = member_uri(archive, event.member)
                if event.kind == "rejected":
                    count("images_rejected")
                    count(f"rejected.{event.error.stage}")
                    yield TaggedOutput(REJECTS, reject(uri, event.error.stage, event.error))
                    continue
                yield from self._settings.prepare(uri, event.output, event.data)
        except archives.ArchiveFailure as failure:
            count("archives_rejected")
            uri = member_uri(archive, failure.member) if failure.member else archive
            yield TaggedOutput(REJECTS, reject(uri, failure.error.stage, failure.error))
        except Exception as exc:  # noqa: BLE001 - e.g. unreadable: this archive's reject, the run goes on
            if first or reached:  # before its window, a later part met what the first part reports
                count("archives_rejected")
                yield TaggedOutput(REJECTS, reject(archive, "open", exc))


class ReadImageFileFn(beam.DoFn):
    """An image file's path → (key, image), or a reject."""

    def __init__(self, settings: ImageSettings, ticker: ProgressTicker | None = None):
        self._settings = settings
        self._ticker = ticker or ProgressTicker(None)

    def process(self, path: str) -> Iterator[Any]:
        count("images_in")
        self._ticker.tick()
        try:
            data = files.read_bytes(path)
        except Exception as exc:  # noqa: BLE001 - an unreadable file is its own reject
            count("images_rejected")
            count("rejected.read")
            yield TaggedOutput(REJECTS, reject(path, "read", exc))
            return
        yield from self._settings.prepare(path, path, data)


class ReadCsvFn(beam.DoFn):
    """A label, metadata or split CSV (gzip or not) → (key, parsed row) pairs; a row that does not fit is
    a `labels` reject naming `file#row N` (N counts data rows from 1)."""

    def __init__(self, layout: str, kind: str):
        self._layout, self._kind = layout, kind

    def process(self, path: str) -> Iterator[Any]:
        try:
            rows = list(cxr.read_csv(files.read_bytes(path)))
        except Exception as exc:  # noqa: BLE001 - unreadable or not CSV: one reject, the run goes on
            yield TaggedOutput(REJECTS, reject(path, "labels", exc))
            return
        if self._kind == "labels":
            missing = cxr.label_columns_missing(list(rows[0]) if rows else [])
            if rows and missing:
                message = f"not a label file of layout {self._layout}: no column for {', '.join(missing)}"
                yield TaggedOutput(REJECTS, reject(path, "labels", message, "LabelFileError"))
                return
        for number, row in enumerate(rows, 1):
            uri = f"{path}#row {number}"
            if self._kind == "labels":
                count("label_rows_in")
            try:
                yield self._parse(uri, row)
            except cxr.CxrError as exc:
                count(f"{self._kind}_rows_rejected")
                yield TaggedOutput(REJECTS, reject(uri, "labels", exc))

    def _parse(self, uri: str, row: dict[str, str]) -> tuple[str, Any]:
        if self._kind == "labels":
            parsed = cxr.parse_label_row(self._layout, row)
            return parsed.key, {"uri": uri, "row": parsed}
        if self._kind == "metadata":
            meta = cxr.parse_metadata_row(row)
            return cxr.study_key(meta.subject_id, meta.study_id), {"uri": uri, "meta": meta}
        dicom_id, dataset = cxr.parse_split_row(row)
        return dicom_id, {"uri": uri, "dataset": dataset}


def number_study_images(element: tuple[str, Iterable[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """A study's metadata rows → (dicom_id, row + its image number: rank of the dicom_id in the study)."""
    _, rows = element
    for index, row in enumerate(sorted(rows, key=lambda r: (r["meta"].dicom_id, r["uri"]))):
        yield row["meta"].dicom_id, {**row, "index": index}


def _one_image(images: list[dict[str, Any]], what: str) -> Iterator[Any]:
    """The one image of a key (main output `None`-free), or rejects: copies with identical content keep
    the first by URI; copies that differ are all refused (which one is right is unknown)."""
    images = sorted(images, key=lambda i: i["uri"])
    if len(images) == 1:
        yield images[0]
        return
    digests = {i["sha256"] for i in images}
    if len(digests) == 1:
        yield images[0]
        for other in images[1:]:
            count("images_rejected")
            count("rejected.join")
            count("duplicate_images")
            message = f"a copy of {images[0]['uri']} ({what}): that one is kept"
            yield TaggedOutput(REJECTS, reject(other["uri"], "join", message, "DuplicateImage"))
        return
    for image in images:
        count("images_rejected")
        count("rejected.join")
        count("duplicate_images")
        others = ", ".join(i["uri"] for i in images if i is not image)
        message = f"{len(images)} different images for {what} (also {others}): none is kept"
        yield TaggedOutput(REJECTS, reject(image["uri"], "join", message, "ConflictingImages"))


def _refuse_images(images: list[dict[str, Any]], message: str, error_type: str) -> Iterator[TaggedOutput]:
    for image in images:
        count("images_rejected")
        count("rejected.join")
        yield TaggedOutput(REJECTS, reject(image["uri"], "join", message, error_type))


class JoinMetadataFn(beam.DoFn):
    """v2, per dicom_id: {images, failed, metadata, split} → (study key, image with view, dataset, image
    number, metadata). Copies whose path disagrees with the metadata's subject/study are refused first
    (`IdMismatch`), then duplicates; an image without exactly one metadata and split row is a reject. An
    image refused earlier passes its reason on (under FAILED) to the study's label row. Metadata rows
    without an image are counted only (a download of part of the dataset is normal)."""

    def process(self, element: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
        dicom_id, groups = element
        images, metas, splits = list(groups["images"]), groups["metadata"], groups["split"]
        if len(metas) == 1:
            meta = metas[0]["meta"]
            for failed in groups["failed"]:
                yield TaggedOutput(FAILED, (cxr.study_key(meta.subject_id, meta.study_id), failed))
        if not images:
            count("metadata_rows_without_image", len(metas))
            return
        if len(metas) != 1:
            error = "NoMetadata" if not metas else "DuplicateMetadata"
            yield from _refuse_images(images, f"{len(metas)} metadata rows for dicom_id {dicom_id}", error)
            return
        meta = metas[0]["meta"]
        agree = [i for i in images if (i["image"].patient, i["image"].study) == (meta.subject_id, meta.study_id)]
        for image in images:
            if image not in agree:
                key: cxr.ImageKey = image["image"]
                message = f"path says p{key.patient}/s{key.study}, metadata says p{meta.subject_id}/s{meta.study_id}"
                yield from _refuse_images([image], message, "IdMismatch")
        chosen = []
        for item in _one_image(agree, f"dicom_id {dicom_id}"):
            if isinstance(item, TaggedOutput):
                yield item
            else:
                chosen.append(item)
        if not chosen:
            return
        image = chosen[0]
        if len({split["dataset"] for split in splits}) != 1:
            error = "NoSplit" if not splits else "ConflictingSplit"
            yield from _refuse_images([image], f"{len(splits)} split rows for dicom_id {dicom_id}", error)
            return
        key = image["image"]
        full = cxr.ImageKey(key.key, key.relpath, key.patient, key.study, metas[0]["index"], meta.view,
                            splits[0]["dataset"], key.dicom_id)  # fmt: skip
        yield cxr.study_key(meta.subject_id, meta.study_id), {**image, "image": full, "extra": dict(meta.columns)}


class JoinLabelsFn(beam.DoFn):
    """Per join key: {images, labels} → Spilled CxrRecords, one per image of the key (v2: a study's labels go to
    each of its images); rejects for label rows without an image, images without a label row, and keys
    with several label rows."""

    def __init__(self, fan_out: bool):
        self._fan_out = fan_out

    def process(self, element: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
        key, groups = element
        images, labels = list(groups["images"]), sorted(groups["labels"], key=lambda r: r["uri"])
        if not images:
            failed = sorted(groups.get("failed", []), key=lambda f: f["uri"])
            for row in labels:
                if failed:
                    count("label_rows_image_rejected")
                    message = f"its image was rejected: {failed[0]['uri']} ({failed[0]['reason']})"
                    yield TaggedOutput(REJECTS, reject(row["uri"], "join", message, "ImageRejected"))
                else:
                    count("label_rows_without_image")
                    yield TaggedOutput(REJECTS, reject(row["uri"], "join", f"no image for {key}", "NoImage"))
            return
        if not self._fan_out:
            chosen = []
            for item in _one_image(images, key):
                if isinstance(item, TaggedOutput):
                    yield item
                else:
                    chosen.append(item)
            images = chosen
        if not labels:
            yield from _refuse_images(images, f"no label row for {key}", "NoLabel")
            return
        if len(labels) > 1 and all(r["row"] == labels[0]["row"] for r in labels[1:]):
            for extra_row in labels[1:]:  # the same row again: harmless, kept once, reported
                count("duplicate_label_rows")
                message = f"the same label row as {labels[0]['uri']} for {key}: that one is used"
                yield TaggedOutput(REJECTS, reject(extra_row["uri"], "join", message, "RepeatedLabelRow"))
            labels = labels[:1]
        if len(labels) > 1:
            count("duplicate_label_rows", len(labels))
            rows = ", ".join(r["uri"] for r in labels)
            yield from _refuse_images(images, f"{len(labels)} label rows for {key}: {rows}", "DuplicateLabel")
            return
        row: cxr.LabelRow = labels[0]["row"]
        count("label_rows_matched")
        for image in images:
            extra = {**row.extra, **image.get("extra", {})}
            record = cxr.CxrRecord(image["uri"], image["image"], row.labels, extra, b"")
            yield Spilled(record, image["spill"], image["size"])
