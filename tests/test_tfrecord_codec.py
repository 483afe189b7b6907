"""Example codec, TFRecord framing, deterministic shards, and the image codec — no TensorFlow needed.

(TensorFlow's own serialization and parsing are checked in test_tfrecord_tensorflow.py.)
"""

from __future__ import annotations

import io
import math
import struct

import apache_beam as beam
import cv2
import numpy as np
import pytest
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.testing.util import assert_that, equal_to

from medbeam.cli.tfrecord import join_shape_args, parse_shape
from medbeam.imaging import codec
from medbeam.imaging.codec import (
    FormatMismatchError,
    ImageDecodeError,
    ImageShape,
    transcode,
)
from medbeam.io import tfrecord as tfr
from medbeam.io.sharded import stable_shard

# ---------------------------------------------------------------------------------------------------
# Example codec


def test_round_trip_every_feature_kind():
    features = {
        "empty_bytes": tfr.bytes_feature(b""),
        "bytes": tfr.bytes_feature(b"\x00\xff" * 1000, b"second"),
        "text": "héllo",
        "no_bytes": tfr.bytes_feature(),
        "int": 7,
        "negative": -1,
        "big": 2**40 + 3,
        "extremes": [-(2**63), 2**63 - 1, 0, -(2**32), 2**32],
        "no_ints": tfr.int64_feature(),
        "bool": True,
        "float": 0.5,
        "floats": [1.5, -0.0, float("inf"), float("-inf")],
        "nan": float("nan"),
        "no_floats": tfr.float_feature(),
        "numpy": np.array([1, 2, 3], dtype=np.int16),
        "numpy_float": np.float32(2.25),
    }
    decoded = tfr.decode_example(tfr.encode_example(features))
    assert set(decoded) == set(features)
    assert decoded["empty_bytes"] == tfr.FeatureValue(tfr.BYTES, (b"",))
    assert decoded["bytes"].values == (b"\x00\xff" * 1000, b"second")
    assert decoded["text"] == tfr.FeatureValue(tfr.BYTES, ("héllo".encode(),))
    assert decoded["no_bytes"] == tfr.FeatureValue(tfr.BYTES, ())
    assert decoded["int"] == tfr.FeatureValue(tfr.INT64, (7,))
    assert decoded["negative"].values == (-1,)
    assert decoded["big"].values == (2**40 + 3,)
    assert decoded["extremes"].values == (-(2**63), 2**63 - 1, 0, -(2**32), 2**32)
    assert decoded["no_ints"] == tfr.FeatureValue(tfr.INT64, ())
    assert decoded["bool"] == tfr.FeatureValue(tfr.INT64, (1,))
    assert decoded["float"] == tfr.FeatureValue(tfr.FLOAT, (0.5,))
    assert decoded["floats"].values[0] == 1.5
    assert math.copysign(1, decoded["floats"].values[1]) == -1
    assert decoded["floats"].values[2:] == (math.inf, -math.inf)
    assert decoded["nan"].kind == tfr.FLOAT and math.isnan(decoded["nan"].values[0])
    assert decoded["no_floats"] == tfr.FeatureValue(tfr.FLOAT, ())
    assert decoded["numpy"] == tfr.FeatureValue(tfr.INT64, (1, 2, 3))
    assert decoded["numpy_float"].values == (2.25,)


def test_floats_are_float32():
    value = tfr.decode_example(tfr.encode_example({"x": 0.1}))["x"].values[0]
    assert value == float(np.float32(0.1)) and value != 0.1


def test_none_leaves_the_feature_out_and_kindless_feature_survives():
    decoded = tfr.decode_example(tfr.encode_example({"a": None, "b": 1, "c": tfr.FeatureValue(None)}))
    assert set(decoded) == {"b", "c"}
    assert decoded["c"] == tfr.FeatureValue(None, ())


def test_packed_wire_format_and_field_numbers():
    # Example.features = 1; Features.feature (map) = 1; Feature.int64_list = 3 (packed value = 1).
    data = tfr.encode_example({"a": [1, -2]})
    assert data == b"\n\x16\n\x14\n\x01a\x12\x0f\x1a\r\n\x0b\x01\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01"
    floats = tfr.encode_example({"f": [1.0, 2.0]})
    assert b"\x12\x0a\x0a\x08" + struct.pack("<2f", 1.0, 2.0) in floats  # float_list = 2, packed
    assert tfr.encode_example({"b": b"xy"}).endswith(b"\n\x02xy")  # bytes_list = 1


def test_deterministic_bytes_whatever_the_insertion_order():
    a = tfr.encode_example({"x": 1, "y": b"2", "z": 3.0})
    b = tfr.encode_example({"z": 3.0, "y": b"2", "x": 1})
    assert a == b
    assert list(tfr.decode_example(a)) == ["x", "y", "z"]


@pytest.mark.parametrize(
    "value, error",
    [
        (2**63, ValueError),
        (-(2**63) - 1, ValueError),
        ([1, b"x"], TypeError),
        ([], ValueError),
        ({"a": 1}, TypeError),
        (np.zeros((2, 2)), ValueError),
    ],
)
def test_bad_values_raise(value, error):
    with pytest.raises(error):
        tfr.encode_example({"bad": value})


def test_descriptors_match_tensorflow_names_and_numbers():
    feature = tfr.Feature.DESCRIPTOR
    assert feature.full_name == "tensorflow.Feature"
    assert [(f.name, f.number) for f in feature.oneofs_by_name["kind"].fields] == [
        ("bytes_list", 1),
        ("float_list", 2),
        ("int64_list", 3),
    ]
    assert tfr.Example.DESCRIPTOR.fields_by_name["features"].number == 1
    assert tfr.Features.DESCRIPTOR.fields_by_name["feature"].message_type.GetOptions().map_entry
    assert tfr.FloatList.DESCRIPTOR.fields_by_name["value"].is_packed
    assert tfr.Int64List.DESCRIPTOR.fields_by_name["value"].is_packed
    assert tfr.Example.DESCRIPTOR.file.name == "tensorflow/core/example/example.proto"


# ---------------------------------------------------------------------------------------------------
# Framing


def test_framing_matches_beams_tfrecord_writer(tmp_path):
    records = [b"", b"a", tfr.encode_example({"x": b"y" * 100_000})]
    ours = b"".join(tfr.frame_record(r) for r in records)
    theirs = io.BytesIO()
    for r in records:
        _TFRecordUtil.write_record(theirs, r)
    assert ours == theirs.getvalue()
    path = str(tmp_path / "x.tfrecord")
    assert tfr.write_records(path, records) == 3
    assert tfr.read_records(path) == records


def test_corrupt_records_are_detected(tmp_path):
    data = tfr.frame_record(b"hello")
    for bad in (data[:-1], data[:5], data[:12] + b"j" + data[13:], b"\x01" + data[1:]):
        path = tmp_path / "bad.tfrecord"
        path.write_bytes(bad)
        with pytest.raises(tfr.CorruptRecordError):
            tfr.read_records(str(path))


# ---------------------------------------------------------------------------------------------------
# Shards


def test_shard_names_and_prefix_checks():
    assert tfr.shard_path("out/train", 3, 12) == "out/train-00003-of-00012.tfrecord"
    assert tfr.shard_glob("gs://b/t") == "gs://b/t-*-of-*.tfrecord"
    for bad in ("out/", "gs://b/", "gs://", ""):
        with pytest.raises(ValueError):
            tfr.check_prefix(bad)
    assert tfr.auto_num_shards(0) == 1
    assert tfr.auto_num_shards(3 * tfr.DEFAULT_SHARD_BYTES + 1) == 4
    # A real hash: near-identical keys spread over shards (CRC32 mod 2 puts these in one shard).
    assert len({stable_shard(f"1.2.3/4.5/1.{i}.png", 2) for i in range(8)}) == 2


def _write(prefix: str, records: list[tuple[str, bytes]], **kwargs) -> list[str]:
    with beam.Pipeline() as p:
        shards = p | beam.Create(records) | tfr.WriteExamples(prefix, **kwargs)
        assert_that(shards | beam.Map(len), equal_to([min(len(records), kwargs.get("num_shards") or 1)]))
    return tfr.existing_shards(prefix)


def test_write_examples_is_deterministic_and_replaces_other_runs(tmp_path):
    records = [(f"k{i:03d}", tfr.encode_example({"i": i})) for i in range(40)]
    prefix = str(tmp_path / "data")
    first = _write(prefix, records, num_shards=3)
    assert [p.rsplit("/", 1)[-1] for p in first] == [f"data-0000{i}-of-00003.tfrecord" for i in range(3)]
    contents = {p: open(p, "rb").read() for p in first}
    again = _write(prefix, list(reversed(records)), num_shards=3)  # other arrival order
    assert {p: open(p, "rb").read() for p in again} == contents
    found = [tfr.decode_example(r)["i"].values[0] for p in first for r in tfr.read_records(p)]
    assert sorted(found) == list(range(40))
    for p in first:  # sorted by key inside each shard
        values = [tfr.decode_example(r)["i"].values[0] for r in tfr.read_records(p)]
        assert values == sorted(values)

    auto = _write(prefix, records)  # auto: one shard for this little data; the 3 old shards go
    assert [p.rsplit("/", 1)[-1] for p in auto] == ["data-00000-of-00001.tfrecord"]
    (tmp_path / "data-other-00000-of-00001.tfrecord").write_bytes(b"")  # not ours: kept
    one = _write(prefix, records[:1], num_shards=5)  # shard indexes without records are not written
    assert len(one) == 1 and one[0].endswith(f"-0000{stable_shard('k000', 5)}-of-00005.tfrecord")
    assert (tmp_path / "data-other-00000-of-00001.tfrecord").exists()
    with beam.Pipeline() as p:  # no record at all: no shard, old ones gone
        _ = p | beam.Create([], reshuffle=False).with_output_types(tuple[str, bytes]) | tfr.WriteExamples(prefix)
    assert tfr.existing_shards(prefix) == []


class _Deferred(tfr.DeferredExample):
    """An Example made only in the worker writing its shard (what cxr prepare's spilled JPGs use)."""

    def __init__(self, i: int):
        self.i, self.nbytes, self.sort_token = i, 16, f"{i:03d}"

    def serialize(self, storage) -> bytes:
        return tfr.encode_example({"i": self.i})


def test_example_sets_in_one_write_equal_separate_writes_and_deferred_bytes(tmp_path):
    records = [(f"k{i:03d}", tfr.encode_example({"i": i})) for i in range(30)]
    apart = {name: _write(str(tmp_path / "apart" / name), part, num_shards=2)
             for name, part in (("a", records[:20]), ("b", records[20:]))}  # fmt: skip
    prefixes = {name: str(tmp_path / "together" / name) for name in ("a", "b", "empty")}
    tagged = [("a" if int(k[1:]) < 20 else "b", (k, _Deferred(int(k[1:])))) for k, _ in records]
    with beam.Pipeline() as p:
        shards = p | beam.Create(tagged) | tfr.WriteExampleSets(prefixes, num_shards=2)
        assert_that(
            shards | beam.MapTuple(lambda name, paths: (name, len(paths))),
            equal_to([("a", 2), ("b", 2), ("empty", 0)]),
        )
    for name in ("a", "b"):
        together = tfr.existing_shards(prefixes[name])
        assert [open(x, "rb").read() for x in together] == [open(x, "rb").read() for x in apart[name]]
    assert tfr.existing_shards(prefixes["empty"]) == []


def test_read_examples_with_beams_reader(tmp_path):
    prefix = str(tmp_path / "r")
    _write(prefix, [(str(i), tfr.encode_example({"i": i, "s": str(i)})) for i in range(5)], num_shards=2)
    with beam.Pipeline() as p:
        values = (
            p | tfr.ReadExamples(tfr.shard_glob(prefix)) | beam.Map(lambda d: (d["i"].values[0], d["s"].values[0]))
        )
        assert_that(values, equal_to([(i, str(i).encode()) for i in range(5)]))


# ---------------------------------------------------------------------------------------------------
# Image codec


def _image(h: int, w: int, c: int | None = 3, dtype=np.uint8) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    top = 255 if dtype == np.uint8 else 65535
    base = ((x * 7 + y * 3) % 256) / 255.0 * top
    if c is None:
        return base.astype(dtype)
    return np.stack([np.roll(base, k * 5, axis=1) for k in range(c)], axis=2).astype(dtype)


def _encode(img: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("fmt", ["jpg", "png"])
@pytest.mark.parametrize(
    "source_channels, shape, expected",
    [
        (3, (32, 24), (32, 24, 3)),
        (None, (32, 24), (32, 24)),
        (3, (32, 24, 1), (32, 24)),
        (None, (32, 24, 3), (32, 24, 3)),
        (3, (128, 100, 3), (128, 100, 3)),  # enlarging works too
    ],
)
def test_transcode_resizes_converts_and_keeps_the_format(fmt, source_channels, shape, expected):
    data = _encode(_image(80, 60, source_channels), "." + fmt)
    out = transcode(data, fmt, ImageShape.parse(shape))
    assert codec.sniff_format(out) == fmt
    assert codec.decode_image(out).shape == expected


def test_grey_conversion_uses_luma_weights_and_grey_to_colour_replicates():
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0] = 200  # pure red in RGB order
    data = codec.encode_png(rgb)
    grey = codec.decode_image(transcode(data, "png", ImageShape(20, 20, 1)))
    assert grey.shape == (20, 20) and abs(int(grey[5, 5]) - round(0.299 * 200)) <= 1
    colour = codec.decode_image(transcode(codec.encode_png(_image(40, 40, None)), "png", ImageShape(20, 20, 3)))
    assert colour.shape == (20, 20, 3)
    assert np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 1], colour[..., 2])


def test_png_keeps_16_bits_and_alpha_is_dropped_for_three_channels():
    data = codec.encode_png(_image(64, 64, None, np.uint16))
    out = codec.decode_image(transcode(data, "png", ImageShape(16, 16)))
    assert out.dtype == np.uint16 and out.shape == (16, 16)
    rgba = codec.encode_png(_image(64, 64, 4))
    assert codec.decode_image(transcode(rgba, "png", ImageShape(16, 16))).shape == (16, 16, 4)
    assert codec.decode_image(transcode(rgba, "png", ImageShape(16, 16, 3))).shape == (16, 16, 3)


def test_colour_order_survives_a_resize():
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 2] = 250  # blue
    for fmt, data in (("png", codec.encode_png(rgb)), ("jpg", codec.encode_jpeg(rgb, 95))):
        out = codec.decode_image(transcode(data, fmt, ImageShape(10, 10)))
        assert out[5, 5, 2] > 200 and out[5, 5, 0] < 40, fmt


def test_unchanged_bytes_when_nothing_to_do():
    data = _encode(_image(30, 20), ".jpg")
    assert transcode(data, "jpg") is data
    assert transcode(data, "jpeg", ImageShape(30, 20)) is data  # same size and channels: no re-encode
    assert transcode(data, "jpg", ImageShape(30, 20, 3)) is data
    assert transcode(data, "jpg", ImageShape(30, 20, 1)) is not data


def test_jpeg_quality_is_used():
    data = _encode((np.random.default_rng(0).random((200, 200, 3)) * 255).astype(np.uint8), ".jpg")
    small = transcode(data, "jpg", ImageShape(100, 100), jpeg_quality=30)
    large = transcode(data, "jpg", ImageShape(100, 100))
    assert len(small) < len(large)
    with pytest.raises(ValueError):
        codec.encode_jpeg(_image(4, 4), 0)


def test_bad_images_raise_typed_errors():
    png = codec.encode_png(_image(50, 50))
    with pytest.raises(FormatMismatchError, match="found a PNG"):
        transcode(png, "jpg")
    with pytest.raises(FormatMismatchError, match="not a JPEG or PNG"):
        transcode(b"GIF89a....", "png")
    with pytest.raises(ImageDecodeError):
        transcode(png[: len(png) // 2], "png")
    with pytest.raises(ImageDecodeError):
        transcode(b"\xff\xd8\xff" + b"\0" * 50, "jpg", ImageShape(10, 10))
    # Without verification only the signature is checked.
    assert transcode(png[:100], "png", verify=False) == png[:100]


@pytest.mark.parametrize("bad", [(0, 5), (5,), (5, 5, 2), (5, 5, 4), (1, 2, 3, 4)])
def test_bad_shapes(bad):
    with pytest.raises(ValueError):
        ImageShape.parse(bad)


def test_cli_shape_arguments():
    assert join_shape_args(["--shape", "299", "299", "1", "--runner", "X"]) == [
        "--shape",
        "299,299,1",
        "--runner",
        "X",
    ]
    assert join_shape_args(["--shape", "32", "16", "--input", "a"]) == ["--shape", "32,16", "--input", "a"]
    assert join_shape_args(["--shape", "1", "2", "3", "4"]) == ["--shape", "1,2,3", "4"]
    assert join_shape_args(["--", "--shape", "1", "2"]) == ["--", "--shape", "1", "2"]
    assert parse_shape("299,299,1") == (299, 299, 1)
    assert parse_shape("320x320") == (320, 320)
    assert parse_shape(None) is None
    with pytest.raises(ValueError):
        parse_shape("299")
