"""TFRecord files of `tf.train.Example` records, without TensorFlow.

Three layers:

* **Example codec** — `encode_example` / `decode_example` build and parse `tf.train.Example` bytes with
  the protobuf runtime. The message classes come from a descriptor pool of our own, built in code with
  TensorFlow's exact package, message and field names and numbers (``tensorflow/core/example/feature.proto``
  and ``example.proto``), so the bytes are the ones TensorFlow writes and reads. A private pool (not the
  default one) means TensorFlow can be imported in the same process without a clash.
* **Record framing** — `frame_record` / `read_records`: TFRecord's ``length, masked crc32c(length), data,
  masked crc32c(data)`` framing, with google-crc32c's C implementation.
* **Beam** — `WriteExamples` writes ``{prefix}-SSSSS-of-NNNNN.tfrecord`` shards deterministically (see its
  docstring for why not `WriteToTFRecord`), `ReadExamples` reads any TFRecord files with Beam's
  `ReadFromTFRecord`, and `DescribeDataset` writes ``{prefix}.features.json`` (feature spec, shards, counts).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import apache_beam as beam
import google_crc32c
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import ReadFromTFRecord
from apache_beam.pvalue import AsSingleton, PCollection
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from medbeam.io import files
from medbeam.io.sharded import ShardedWrite, ShardFormat

# ---------------------------------------------------------------------------------------------------
# tf.train.Example, from a descriptor pool of our own

BYTES, FLOAT, INT64 = "bytes_list", "float_list", "int64_list"
KINDS = (BYTES, FLOAT, INT64)
#: The dtype TensorFlow parses each kind into (what `features.json` calls it).
KIND_DTYPES = {BYTES: "string", FLOAT: "float32", INT64: "int64"}

_FDP = descriptor_pb2.FieldDescriptorProto


def _field(name: str, number: int, ftype: int, label: int = _FDP.LABEL_OPTIONAL, **kwargs: Any) -> _FDP:
    return _FDP(name=name, number=number, type=ftype, label=label, **kwargs)


def _map_entry(name: str, value_type: str) -> descriptor_pb2.DescriptorProto:
    entry = descriptor_pb2.DescriptorProto(
        name=name,
        field=[
            _field("key", 1, _FDP.TYPE_STRING),
            _field("value", 2, _FDP.TYPE_MESSAGE, type_name=value_type),
        ],
    )
    entry.options.map_entry = True
    return entry


def _feature_proto() -> descriptor_pb2.FileDescriptorProto:
    """tensorflow/core/example/feature.proto, field for field."""
    packed = descriptor_pb2.FieldOptions(packed=True)
    repeated = _FDP.LABEL_REPEATED
    return descriptor_pb2.FileDescriptorProto(
        name="tensorflow/core/example/feature.proto",
        package="tensorflow",
        syntax="proto3",
        message_type=[
            descriptor_pb2.DescriptorProto(
                name="BytesList", field=[_field("value", 1, _FDP.TYPE_BYTES, repeated)]
            ),
            descriptor_pb2.DescriptorProto(
                name="FloatList", field=[_field("value", 1, _FDP.TYPE_FLOAT, repeated, options=packed)]
            ),
            descriptor_pb2.DescriptorProto(
                name="Int64List", field=[_field("value", 1, _FDP.TYPE_INT64, repeated, options=packed)]
            ),
            descriptor_pb2.DescriptorProto(
                name="Feature",
                field=[
                    _field(BYTES, 1, _FDP.TYPE_MESSAGE, type_name=".tensorflow.BytesList", oneof_index=0),
                    _field(FLOAT, 2, _FDP.TYPE_MESSAGE, type_name=".tensorflow.FloatList", oneof_index=0),
                    _field(INT64, 3, _FDP.TYPE_MESSAGE, type_name=".tensorflow.Int64List", oneof_index=0),
                ],
                oneof_decl=[descriptor_pb2.OneofDescriptorProto(name="kind")],
            ),
            descriptor_pb2.DescriptorProto(
                name="Features",
                field=[
                    _field(
                        "feature", 1, _FDP.TYPE_MESSAGE, repeated, type_name=".tensorflow.Features.FeatureEntry"
                    )
                ],
                nested_type=[_map_entry("FeatureEntry", ".tensorflow.Feature")],
            ),
            descriptor_pb2.DescriptorProto(
                name="FeatureList",
                field=[_field("feature", 1, _FDP.TYPE_MESSAGE, repeated, type_name=".tensorflow.Feature")],
            ),
            descriptor_pb2.DescriptorProto(
                name="FeatureLists",
                field=[
                    _field(
                        "feature_list",
                        1,
                        _FDP.TYPE_MESSAGE,
                        repeated,
                        type_name=".tensorflow.FeatureLists.FeatureListEntry",
                    )
                ],
                nested_type=[_map_entry("FeatureListEntry", ".tensorflow.FeatureList")],
            ),
        ],
    )


def _example_proto() -> descriptor_pb2.FileDescriptorProto:
    """tensorflow/core/example/example.proto (Example and SequenceExample)."""
    return descriptor_pb2.FileDescriptorProto(
        name="tensorflow/core/example/example.proto",
        package="tensorflow",
        syntax="proto3",
        dependency=["tensorflow/core/example/feature.proto"],
        message_type=[
            descriptor_pb2.DescriptorProto(
                name="Example", field=[_field("features", 1, _FDP.TYPE_MESSAGE, type_name=".tensorflow.Features")]
            ),
            descriptor_pb2.DescriptorProto(
                name="SequenceExample",
                field=[
                    _field("context", 1, _FDP.TYPE_MESSAGE, type_name=".tensorflow.Features"),
                    _field("feature_lists", 2, _FDP.TYPE_MESSAGE, type_name=".tensorflow.FeatureLists"),
                ],
            ),
        ],
    )


POOL = descriptor_pool.DescriptorPool()
POOL.Add(_feature_proto())
POOL.Add(_example_proto())


def _message_class(name: str) -> type:
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(name))


#: Protobuf message classes, wire-compatible with tf.train.Example & co.
Example = _message_class("tensorflow.Example")
SequenceExample = _message_class("tensorflow.SequenceExample")
Features = _message_class("tensorflow.Features")
Feature = _message_class("tensorflow.Feature")
BytesList = _message_class("tensorflow.BytesList")
FloatList = _message_class("tensorflow.FloatList")
Int64List = _message_class("tensorflow.Int64List")


@dataclass(frozen=True)
class FeatureValue:
    """One feature: its kind (bytes_list, float_list or int64_list) and its values (possibly none)."""

    kind: str | None
    values: tuple = ()

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"feature kind must be one of {KINDS}, got {self.kind!r}")


def bytes_feature(*values: bytes | str) -> FeatureValue:
    return FeatureValue(BYTES, tuple(v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values))


def int64_feature(*values: int) -> FeatureValue:
    return FeatureValue(INT64, tuple(int(v) for v in values))


def float_feature(*values: float) -> FeatureValue:
    return FeatureValue(FLOAT, tuple(float(v) for v in values))


def _kind_of(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview, str, np.bytes_, np.str_)):
        return BYTES
    if isinstance(value, (bool, int, np.integer, np.bool_)):
        return INT64
    if isinstance(value, (float, np.floating)):
        return FLOAT
    raise TypeError(f"no tf.train.Feature kind for a {type(value).__name__}")


def as_feature(value: Any) -> FeatureValue | None:
    """A FeatureValue for a plain value: bytes/str → bytes_list, int/bool → int64_list, float → float_list.

    Lists, tuples and 1-D numpy arrays become multi-valued features of their elements' kind (an empty one
    needs an explicit FeatureValue, since it has no kind). None means "no feature".
    """
    if value is None or isinstance(value, FeatureValue):
        return value
    if isinstance(value, np.ndarray):
        if value.ndim > 1:
            raise ValueError(f"features are flat lists; got an array of shape {value.shape}")
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("an empty list has no kind: pass bytes_feature(), int64_feature() or float_feature()")
        kinds = {_kind_of(v) for v in value}
        if len(kinds) != 1:
            raise TypeError(f"mixed kinds in one feature: {sorted(kinds)}")
        kind = kinds.pop()
    else:
        kind, value = _kind_of(value), (value,)
    return {BYTES: bytes_feature, INT64: int64_feature, FLOAT: float_feature}[kind](*value)


def encode_example(features: Mapping[str, Any]) -> bytes:
    """Serialize a `tf.train.Example`; map keys sorted, so equal inputs give equal bytes.

    Values are FeatureValue or plain values (see `as_feature`); None leaves the feature out.
    Raises ValueError for int64 values out of range.
    """
    example = Example()
    feature_map = example.features.feature
    for name, value in features.items():
        feature = as_feature(value)
        if feature is None:
            continue
        if not isinstance(name, str):
            raise TypeError(f"feature names are strings, got {name!r}")
        proto = feature_map[name]
        if feature.kind is None:
            continue  # a Feature with no kind set
        target = getattr(proto, feature.kind)
        try:
            target.value.extend(feature.values)
        except ValueError as exc:
            raise ValueError(f"feature {name!r}: {exc}") from exc
        except TypeError as exc:
            raise TypeError(f"feature {name!r}: {exc}") from exc
        if not feature.values:
            target.SetInParent()  # an empty list still says which kind it is
    return example.SerializeToString(deterministic=True)


def decode_example(data: bytes) -> dict[str, FeatureValue]:
    """Parse `tf.train.Example` bytes into {name: FeatureValue} (floats come back as float32 values)."""
    example = Example.FromString(data)
    result = {}
    for name, proto in example.features.feature.items():
        kind = proto.WhichOneof("kind")
        values = tuple(getattr(proto, kind).value) if kind else ()
        result[name] = FeatureValue(kind, values)
    return dict(sorted(result.items()))


# ---------------------------------------------------------------------------------------------------
# TFRecord framing

_MASK_DELTA = 0xA282EAD8
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord: uint64 length, masked crc32c of the length, data, masked crc32c of the data."""
    length = _LENGTH.pack(len(data))
    return b"".join((length, _CRC.pack(masked_crc32c(length)), data, _CRC.pack(masked_crc32c(data))))


class CorruptRecordError(ValueError):
    """A TFRecord file whose framing or checksums are wrong."""


def iter_records(stream: Any, name: str = "stream") -> Iterator[bytes]:
    """Records of an open binary TFRecord stream, checksums verified."""
    index = 0
    while True:
        header = stream.read(12)
        if not header:
            return
        if len(header) < 12:
            raise CorruptRecordError(f"{name}: truncated header of record {index}")
        (length,) = _LENGTH.unpack_from(header)
        (length_crc,) = _CRC.unpack_from(header, 8)
        if masked_crc32c(header[:8]) != length_crc:
            raise CorruptRecordError(f"{name}: bad length checksum in record {index}")
        data = stream.read(length)
        footer = stream.read(4)
        if len(data) < length or len(footer) < 4:
            raise CorruptRecordError(f"{name}: truncated record {index}")
        if masked_crc32c(data) != _CRC.unpack(footer)[0]:
            raise CorruptRecordError(f"{name}: bad data checksum in record {index}")
        yield data
        index += 1


def read_records(path: str) -> list[bytes]:
    """Every record of one uncompressed TFRecord file (local, gs://, s3://), checksums verified."""
    with files.open_for_read(path) as stream:
        return list(iter_records(stream, path))


def write_records(path: str, records: Iterable[bytes]) -> int:
    """Write (replace) one uncompressed TFRecord file; return the number of records."""
    if not files.has_scheme(path):
        import os

        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    count = 0
    with FileSystems.create(
        path, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED
    ) as f:
        for record in records:
            f.write(frame_record(record))
            count += 1
    return count


# ---------------------------------------------------------------------------------------------------
# Shards: names, deterministic assignment, writing

SHARD_SUFFIX = ".tfrecord"
#: Auto shard count aims at shards of about this size (TensorFlow's guide suggests 100+ MB shards).
DEFAULT_SHARD_BYTES = 128 * 1024 * 1024
MAX_SHARDS = 99_999


def shard_path(prefix: str, index: int, count: int) -> str:
    return f"{prefix}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def shard_glob(prefix: str) -> str:
    """What a consumer globs for (`tf.io.gfile.glob`, `ReadFromTFRecord`): every shard of the dataset."""
    return f"{prefix}-*-of-*{SHARD_SUFFIX}"


def check_prefix(prefix: str) -> None:
    """A dataset is named by a file prefix (`out/train`), not a directory."""
    if not prefix or prefix.endswith(("/", "\\")) or prefix.rstrip("/").endswith("://"):
        raise ValueError(
            f"the output must be a file prefix such as out/tfrecords/train, not a directory: {prefix!r}"
        )


def auto_num_shards(total_bytes: int, target_bytes: int = DEFAULT_SHARD_BYTES) -> int:
    return min(MAX_SHARDS, max(1, math.ceil(total_bytes / target_bytes)))


def existing_shards(prefix: str) -> list[str]:
    """Shards of any shard count already under `prefix` (earlier runs included)."""
    tail = re.compile(re.escape(prefix) + r"-\d{5}-of-\d{5}" + re.escape(SHARD_SUFFIX) + "$")
    try:
        candidates = files.list_files(shard_glob(prefix))
    except Exception:  # noqa: BLE001 - a missing directory or bucket prefix means nothing to clean
        return []
    return [p for p in candidates if tail.match(p)]


class DeferredExample:
    """An Example serialized only when its shard is written, for records whose bytes wait elsewhere (a
    spilled image): what crosses the shuffle is this small object, not the record. `nbytes` (its share
    of the shard size) and `sort_token` (the tie-break after the key) must not need the bytes.
    `serialize` gets the writing worker's Storage (the one given to WriteExampleSets) to read them with."""

    nbytes: int
    sort_token: str

    def serialize(self, storage: files.Storage) -> bytes:
        raise NotImplementedError


def _payload_size(payload: bytes | DeferredExample) -> int:
    return len(payload) if isinstance(payload, bytes) else payload.nbytes


def _payload_bytes(payload: bytes | DeferredExample, storage: files.Storage) -> bytes:
    return payload if isinstance(payload, bytes) else payload.serialize(storage)


def _payload_order(payload: bytes | DeferredExample) -> bytes | str:
    return payload if isinstance(payload, bytes) else payload.sort_token


class _TfrecordShards(ShardFormat):
    """(key, serialized Example or DeferredExample) → `{prefix}-SSSSS-of-NNNNN.tfrecord`, sorted by key then
    bytes (or sort token); the shard count is given or follows the total record bytes; finishing deletes
    shards of other runs."""

    def __init__(self, prefixes: Mapping[str, str], num_shards: int | None, target_bytes: int, keyed: bool = False,
                 storage: files.Storage | None = None):  # fmt: skip
        self._prefixes = dict(prefixes)  # group → prefix
        self._num_shards = num_shards
        self._target = target_bytes
        self._keyed = keyed  # finish gives (group, shards), not the shards alone
        self._storage = storage or files.Storage()  # what DeferredExamples read with

    def measure(self, record: tuple[str, bytes]) -> int:
        return _payload_size(record[1])

    def chunk_bytes(self, record: tuple[str, bytes]) -> int:
        return _payload_size(record[1])

    def shard_count(self, _: str, size: int) -> int:
        return self._num_shards if self._num_shards is not None else auto_num_shards(size, self._target)

    def key(self, _: str, record: tuple[str, bytes]) -> str:
        return record[0]

    def sort_key(self, _: str, record: tuple[str, bytes]) -> tuple[str, bytes | str]:
        return record[0], _payload_order(record[1])

    def write(self, group: str, index: int, count: int, records: list[tuple[str, bytes]], side: dict[str, Any]) -> str:
        path = shard_path(self._prefixes[group], index, count)
        write_records(path, (_payload_bytes(payload, self._storage) for _, payload in records))
        return path

    def finish(self, group: str, shards: list[str], size: int, side: dict[str, Any]) -> Any:
        keep = set(shards)
        files.delete_files([p for p in existing_shards(self._prefixes[group]) if p not in keep])
        return (group, shards) if self._keyed else shards


def _check_shard_options(num_shards: int | None, target_shard_bytes: int) -> None:
    if num_shards is not None and not 1 <= num_shards <= MAX_SHARDS:
        raise ValueError(f"num_shards must be 1-{MAX_SHARDS}, got {num_shards}")
    if target_shard_bytes < 1:
        raise ValueError("target_shard_bytes must be positive")


class WriteExamples(beam.PTransform):
    """(key, serialized Example) pairs → ``{prefix}-SSSSS-of-NNNNN.tfrecord``; emits the sorted shard list.
    A `DeferredExample` may stand in for the bytes: it is serialized by the worker writing its shard.

    Why not Beam's `WriteToTFRecord`: with a fixed shard count it deals records to shards round-robin from
    a *random* starting shard per bundle (`iobase._RoundRobinKeyFn`) and keeps arrival order inside a
    shard, so two runs over the same input give different files. Here the shard is a stable hash of the
    key, records are sorted by key inside their shard, and the shard count is either given or follows the
    total record bytes, so a rerun writes byte-identical files. Records are framed exactly as
    `WriteToTFRecord` frames them (`ReadFromTFRecord` and TensorFlow read them), with google-crc32c.

    Each file is written whole by one worker and replaced on retry; shards of an earlier run with another
    shard count are deleted, so the glob ``{prefix}-*-of-*.tfrecord`` only finds this run's files.
    A shard index that receives no record is not written (more shards than records, or no record at
    all): Beam's S3 filesystem cannot write an empty object (its multipart upload has no part), and an
    empty file carries nothing. The emitted list (and features.json) names exactly the files written.
    Keys should be unique (two records with one key both land, ordered by their bytes).
    """

    def __init__(self, prefix: str, num_shards: int | None = None, target_shard_bytes: int = DEFAULT_SHARD_BYTES):
        super().__init__()
        check_prefix(prefix)
        _check_shard_options(num_shards, target_shard_bytes)
        self._prefix = prefix
        self._num_shards = num_shards
        self._target = target_shard_bytes

    def expand(self, records: PCollection) -> PCollection:
        fmt = _TfrecordShards({"records": self._prefix}, self._num_shards, self._target)
        return {"records": records} | "Shards" >> ShardedWrite(fmt)


class WriteExampleSets(beam.PTransform):
    """(set, (key, Example or DeferredExample)) → one WriteExamples dataset per set (`prefixes[set]`), all
    through one sharded write: emits (set, sorted shard list) for every set, empty for a set with no record.
    Why one write: each transform costs the DirectRunner time per run; three datasets written apart cost
    three times the steps (the frontal/lateral/other sets of `cxr prepare`)."""

    def __init__(self, prefixes: Mapping[str, str], num_shards: int | None = None,
                 target_shard_bytes: int = DEFAULT_SHARD_BYTES, storage: files.Storage | None = None):  # fmt: skip
        super().__init__()
        for prefix in prefixes.values():
            check_prefix(prefix)
        _check_shard_options(num_shards, target_shard_bytes)
        self._prefixes = dict(prefixes)
        self._num_shards = num_shards
        self._target = target_shard_bytes
        self._storage = storage

    def expand(self, records: PCollection) -> PCollection:
        fmt = _TfrecordShards(self._prefixes, self._num_shards, self._target, keyed=True, storage=self._storage)
        return records | "Shards" >> ShardedWrite(fmt, groups=list(self._prefixes))


class ReadExamples(beam.PTransform):
    """TFRecord files matching `pattern` (any filesystem) → {name: FeatureValue} dicts, via ReadFromTFRecord."""

    def __init__(self, pattern: str):
        super().__init__()
        self._pattern = pattern

    def expand(self, p: beam.pvalue.PBegin) -> PCollection:
        return (
            p
            | "Read TFRecords" >> ReadFromTFRecord(self._pattern, compression_type=CompressionTypes.UNCOMPRESSED)
            | "Parse Examples" >> beam.Map(decode_example)
        )


# ---------------------------------------------------------------------------------------------------
# Dataset description: {prefix}.features.json


@dataclass
class FeatureSpec:
    """One feature as a consumer parses it.

    dtype is TensorFlow's parse dtype (string, int64, float32). shape [] is one value per record; varlen
    features have shape None (tf.io.VarLenFeature). `present` (filled in after the run) counts records
    that carry the feature: below `records`, the feature is optional (NULL labels are left out).
    """

    name: str
    dtype: str
    shape: list[int] | None = field(default_factory=list)
    varlen: bool = False
    description: str = ""
    source_type: str | None = None
    image: dict[str, Any] | None = None
    present: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("source_type", "image", "description"):
            if not data[key]:
                data.pop(key)
        return data


def description_path(prefix: str) -> str:
    return f"{prefix}.features.json"


def read_description(prefix: str) -> dict[str, Any]:
    return json.loads(files.read_bytes(description_path(prefix)))


def write_description(prefix: str, doc: Mapping[str, Any]) -> str:
    """Write `{prefix}.features.json`; return its path."""
    path = description_path(prefix)
    files.write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode(), "application/json")
    return path


def present_key(name: str) -> str:
    return f"present:{name}"


class SumCounts(beam.CombineFn):
    """Sum dicts of named counts (the stats each stage emits) into one dict."""

    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, acc: Counter, counts: Mapping[str, int]) -> Counter:
        acc.update(counts)
        return acc

    def merge_accumulators(self, accs: Iterable[Counter]) -> Counter:
        total = Counter()
        for acc in accs:
            total.update(acc)
        return total

    def extract_output(self, acc: Counter) -> dict[str, int]:
        return dict(sorted(acc.items()))


def describe(
    prefix: str,
    job: str,
    specs: Sequence[FeatureSpec],
    stats: Mapping[str, int],
    shards: Sequence[str],
    count_names: Sequence[str],
    rejects_manifest: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `features.json` document: job, shards (relative names), feature spec with presence, counts."""
    records = int(stats.get("records_written", 0))
    features = []
    for spec in specs:
        spec = FeatureSpec(**asdict(spec))
        spec.present = int(stats.get(present_key(spec.name), 0))
        features.append(spec.to_json())
    base = prefix.rstrip("/").rsplit("/", 1)[-1]
    names = sorted(s.rsplit("/", 1)[-1] for s in shards)
    counts = {name[-len(SHARD_SUFFIX) - 5 : -len(SHARD_SUFFIX)] for name in names}
    of = counts.pop() if len(counts) == 1 else "*"
    doc: dict[str, Any] = {
        "format": "tfrecord",
        "record_type": "tf.train.Example",
        "compression": None,
        "job": job,
        "records": records,
        "num_shards": int(of) if of != "*" else 0,
        "file_pattern": f"{base}-*-of-{of}{SHARD_SUFFIX}",
        "files": names,
        "features": features,
        "counts": {name: int(stats.get(name, 0)) for name in count_names},
    }
    if rejects_manifest:
        doc["rejects"] = _relative_to(prefix, rejects_manifest)
    if extra:
        doc.update(extra)
    return doc


def _relative_to(prefix: str, path: str) -> str:
    directory = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
    return path[len(directory) :] if directory and path.startswith(directory) else path


class _Describe(beam.DoFn):
    def __init__(self, prefix: str, job: str, specs: Sequence[FeatureSpec], count_names: Sequence[str], extra):
        self._args = (prefix, job, list(specs))
        self._count_names = list(count_names)
        self._extra = dict(extra or {})

    def process(self, _: Any, stats: dict[str, int], shards: list[str], rejects: list[str]) -> Iterator[str]:
        prefix, job, specs = self._args
        doc = describe(
            prefix, job, specs, stats, shards, self._count_names, rejects[0] if rejects else None, self._extra
        )
        yield write_description(prefix, doc)


class _DescribeSet(beam.DoFn):
    """One set's features.json, from the per-set sums, shard lists and the rejects manifest (side inputs)."""

    def __init__(self, prefixes: Mapping[str, str], job: str, specs: Sequence[FeatureSpec],
                 count_names: Sequence[str], extras: Mapping[str, Mapping[str, Any]]):  # fmt: skip
        self._prefixes, self._job, self._specs = dict(prefixes), job, list(specs)
        self._count_names = list(count_names)
        self._extras = {name: dict(extra) for name, extra in extras.items()}

    def process(self, name: str, stats: dict[str, dict[str, int]], shards: dict[str, list[str]],
                rejects: list[str]) -> Iterator[str]:  # fmt: skip
        prefix = self._prefixes[name]
        doc = describe(prefix, self._job, self._specs, stats.get(name, {}), shards.get(name, []),
                       self._count_names, rejects[0] if rejects else None, self._extras.get(name))  # fmt: skip
        yield write_description(prefix, doc)


class DescribeDatasets(beam.PTransform):
    """DescribeDataset for the sets of one WriteExampleSets, in one step: `stats` holds (set, count dict)
    pairs, `shards` what WriteExampleSets emits; `extras[set]` goes into that set's features.json."""

    def __init__(self, prefixes: Mapping[str, str], job: str, specs: Sequence[FeatureSpec], stats: PCollection,
                 shards: PCollection, rejects: PCollection, count_names: Sequence[str],
                 extras: Mapping[str, Mapping[str, Any]]):  # fmt: skip
        super().__init__()
        self._prefixes, self._job, self._specs = dict(prefixes), job, list(specs)
        self._stats, self._shards, self._rejects = stats, shards, rejects
        self._count_names, self._extras = list(count_names), dict(extras)

    def expand(self, p: beam.pvalue.PBegin) -> PCollection:
        totals = self._stats | "Sum counts" >> beam.CombinePerKey(SumCounts())
        return (
            p
            | "Sets" >> beam.Create(sorted(self._prefixes), reshuffle=False)
            | "Write features.json"
            >> beam.ParDo(
                _DescribeSet(self._prefixes, self._job, self._specs, self._count_names, self._extras),
                beam.pvalue.AsDict(totals),
                beam.pvalue.AsDict(self._shards),
                beam.pvalue.AsList(self._rejects),
            )
        )


class DescribeDataset(beam.PTransform):
    """Write ``{prefix}.features.json`` once the shards (and the rejects table) are written.

    Input: the pipeline root. `stats` is a PCollection of count dicts (summed here), `shards` the single
    shard list `WriteExamples` emits, `rejects` the rejects table's manifest path.
    """

    def __init__(
        self,
        prefix: str,
        job: str,
        specs: Sequence[FeatureSpec],
        stats: PCollection,
        shards: PCollection,
        rejects: PCollection | None,
        count_names: Sequence[str],
        extra: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self._prefix, self._job, self._specs = prefix, job, list(specs)
        self._stats, self._shards, self._rejects = stats, shards, rejects
        self._count_names = list(count_names)
        self._extra = extra

    def expand(self, p: beam.pvalue.PBegin) -> PCollection:
        totals = self._stats | "Sum counts" >> beam.CombineGlobally(SumCounts())
        rejects = self._rejects if self._rejects is not None else p | "No rejects" >> beam.Create([])
        return (
            p
            | "Once" >> beam.Create([None])
            | "Write features.json"
            >> beam.ParDo(
                _Describe(self._prefix, self._job, self._specs, self._count_names, self._extra),
                AsSingleton(totals),
                AsSingleton(self._shards),
                beam.pvalue.AsList(rejects),
            )
        )
