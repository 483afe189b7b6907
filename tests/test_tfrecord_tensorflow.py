"""TensorFlow reads what we write, unchanged: byte-identical Examples, TFRecord framing, and both jobs' outputs
parsed with tf.data.TFRecordDataset + tf.io.parse_single_example from the spec in features.json.

Needs the optional ``[tensorflow]`` extra (tensorflow-cpu). Without it these tests skip on a developer's
machine and FAIL where CI=true, so CI can never pass without having run them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from medbeam.io import tfrecord as tfr
from medbeam.pipelines.images_to_tfrecord import ImagesToTfrecordConfig
from medbeam.pipelines.images_to_tfrecord import run as run_images
from medbeam.pipelines.png_to_tfrecord import PngToTfrecordConfig
from medbeam.pipelines.png_to_tfrecord import run as run_png
from tests.helpers import copy_dicom


@pytest.fixture(scope="module")
def tf():
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow
    except ImportError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                f"TensorFlow is required when CI=true (install the [tensorflow] extra): {exc}", pytrace=False
            )
        pytest.skip("TensorFlow not installed: pip install -e '.[tensorflow]'")
    return tensorflow


def _tf_feature(tf, value: tfr.FeatureValue):
    if value.kind == tfr.BYTES:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(value.values)))
    if value.kind == tfr.INT64:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(value.values)))
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(value.values)))


CASES = [
    {
        "study": b"1.2.3",
        "series": b"4.5",
        "instance": b"6",
        "frame": [1],
        "png_bytes": b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
    },
    {
        "empty": tfr.bytes_feature(b""),
        "none_of_them": tfr.bytes_feature(),
        "no_ints": tfr.int64_feature(),
        "no_floats": tfr.float_feature(),
    },
    {
        "neg": [-1, -(2**63), 2**63 - 1, 2**32 + 1, 0],
        "f": [0.1, -2.5, float("inf"), float("-inf")],
        "t": "ünïcode",
    },
    {"nan": float("nan"), "big_bytes": b"\x00" * 300_000, "many": list(range(1000))},
]


@pytest.mark.parametrize("case", CASES, ids=["dicom", "empty", "extremes", "nan-large"])
def test_examples_are_byte_identical_to_tensorflows(tf, case):
    ours = tfr.encode_example(case)
    features = {name: _tf_feature(tf, tfr.as_feature(value)) for name, value in case.items()}
    theirs = tf.train.Example(features=tf.train.Features(feature=features))
    assert ours == theirs.SerializeToString(deterministic=True)
    assert tf.train.Example.FromString(ours) == theirs or "nan" in case  # NaN != NaN in proto equality
    # And back: our parser reads TensorFlow's bytes, whatever their map order.
    assert set(tfr.decode_example(theirs.SerializeToString())) == set(case)


def test_tensorflow_parses_our_scalars_exactly(tf):
    data = tfr.encode_example({"i": [-(2**63), 2**40], "f": [float("nan"), 0.5], "b": [b"", b"x"]})
    parsed = tf.io.parse_single_example(
        data,
        {
            "i": tf.io.FixedLenFeature([2], tf.int64),
            "f": tf.io.FixedLenFeature([2], tf.float32),
            "b": tf.io.FixedLenFeature([2], tf.string),
        },
    )
    assert parsed["i"].numpy().tolist() == [-(2**63), 2**40]
    assert math.isnan(parsed["f"].numpy()[0]) and parsed["f"].numpy()[1] == 0.5
    assert parsed["b"].numpy().tolist() == [b"", b"x"]


def test_tfrecord_framing_both_ways(tf, tmp_path):
    records = [tfr.encode_example({"i": i, "pad": b"p" * i * 1000}) for i in range(20)]
    ours = str(tmp_path / "ours.tfrecord")
    tfr.write_records(ours, records)
    assert [r.numpy() for r in tf.data.TFRecordDataset(ours)] == records
    theirs = str(tmp_path / "theirs.tfrecord")
    with tf.io.TFRecordWriter(theirs) as writer:
        for r in records:
            writer.write(r)
    assert Path(ours).read_bytes() == Path(theirs).read_bytes()
    assert tfr.read_records(theirs) == records


# ---------------------------------------------------------------------------------------------------
# The jobs' outputs, read the way a consumer would: spec from features.json


def parse_spec(tf, doc: dict) -> dict:
    """features.json → a tf.io.parse_single_example spec (what docs/tfrecord.md tells consumers to do)."""
    dtypes = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}
    spec = {}
    for f in doc["features"]:
        if f["varlen"] or f["present"] < doc["records"]:
            spec[f["name"]] = tf.io.VarLenFeature(dtypes[f["dtype"]])
        else:
            spec[f["name"]] = tf.io.FixedLenFeature(f["shape"], dtypes[f["dtype"]])
    return spec


def read_with_tensorflow(tf, prefix: str) -> list[dict]:
    doc = tfr.read_description(prefix)
    directory = str(Path(prefix).parent)
    files = [os.path.join(directory, name) for name in doc["files"]]
    assert sorted(tf.io.gfile.glob(os.path.join(directory, doc["file_pattern"]))) == files
    spec = parse_spec(tf, doc)
    out = []
    for raw in tf.data.TFRecordDataset(files):
        parsed = tf.io.parse_single_example(raw, spec)
        out.append(
            {
                k: (tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v).numpy()
                for k, v in parsed.items()
            }
        )
    assert len(out) == doc["records"]
    return out


def test_tensorflow_reads_from_dicom_png(tf, tmp_path):
    root = tmp_path / "png"
    frames = {("1.2", "3.4", "5.6", 1): np.full((40, 30), 10, np.uint8)}
    for f in (1, 2):
        frames[("1.2", "3.4", "7.8", f)] = np.full((20, 20), 1000 * f, np.uint16)
    for (study, series, sop, frame), img in frames.items():
        rel = f"{study}/{series}/{sop}.png" if sop == "5.6" else f"{study}/{series}/{sop}/{frame:04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), img)
    prefix = str(tmp_path / "tf" / "dicom")
    run_png(PngToTfrecordConfig(input=str(root), output=prefix, shape=(16, 16, 1), num_shards=2), [])

    seen = {}
    for r in read_with_tensorflow(tf, prefix):
        key = (r["study"].decode(), r["series"].decode(), r["instance"].decode(), int(r["frame"]))
        dtype = tf.uint16 if key[2] == "7.8" else tf.uint8
        image = tf.io.decode_png(r["png_bytes"], channels=1, dtype=dtype).numpy()
        assert image.shape == (16, 16, 1)
        seen[key] = int(image[8, 8, 0])
    assert seen == {k: int(v[0, 0]) for k, v in frames.items()}


def test_tensorflow_reads_from_images(tf, tmp_path):
    root = tmp_path / "jpgs"
    root.mkdir()
    rows = ["path,label_1,label_2,name"]
    expected = {}
    for i in range(4):
        path = str(root / f"img{i}.jpg")
        cv2.imwrite(path, np.full((50 + i, 60, 3), 40 * i, np.uint8))
        label_2 = "" if i == 3 else str(i / 4)
        rows.append(f"{path},{i - 1},{label_2},n{i}")
        expected[path] = (i - 1, None if i == 3 else i / 4, f"n{i}".encode())
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    prefix = str(tmp_path / "tf" / "images")
    sql = f"SELECT *, [label_1, 2 * label_1] AS pair FROM read_csv('{tmp_path / 'labels.csv'}')"
    run_images(
        ImagesToTfrecordConfig(inputs=[str(root)], output=prefix, shape=(24, 24, 1), labels_sql=sql, num_shards=3),
        [],
    )

    got = {}
    for r in read_with_tensorflow(tf, prefix):
        path = r["path"].decode()
        image = tf.io.decode_jpeg(r["jpg_bytes"], channels=1).numpy()
        assert image.shape == (24, 24, 1)
        index = int(Path(path).stem[3:])
        assert abs(int(image[12, 12, 0]) - 40 * index) <= 3
        assert r["pair"].tolist() == [r["label_1"], 2 * r["label_1"]]
        label_2 = r["label_2"].tolist()  # optional (one NULL): parsed as VarLen
        got[path] = (int(r["label_1"]), label_2[0] if label_2 else None, r["name"])
    assert got == expected


def test_missing_tensorflow_fails_under_ci(tmp_path):
    """The guard itself: with TensorFlow unimportable and CI=true these tests fail instead of skipping."""
    import subprocess
    import sys

    (tmp_path / "tensorflow.py").write_text("raise ImportError('hidden by the test')\n")
    env = {
        **os.environ,
        "CI": "true",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "parses_our_scalars"],
        cwd=Path(__file__).parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout[-2000:]
    assert "TensorFlow is required when CI=true" in result.stdout


def test_tensorflow_reads_direct_from_dicom_export(tf, tmp_path):
    """`medbeam dicom export --tfrecord-prefix`: the records hold exactly the PNGs the export writes."""
    from medbeam.pipelines.dicom_export import ExportConfig
    from medbeam.pipelines.dicom_export import run as run_export

    corpus = copy_dicom({name: name for name in ("CT_small.dcm", "MR_small_RLE.dcm", "rtplan.dcm")}, tmp_path / "dicom")
    prefix = str(tmp_path / "tf" / "direct")
    png_dir = tmp_path / "png"
    counts = run_export(
        ExportConfig(inputs=[str(corpus)], png_dir=str(png_dir), parquet_dir=str(tmp_path / "tables"),
                     tfrecord_prefix=prefix, progress=False),
        [],
    )
    assert counts.pngs == 2
    records = read_with_tensorflow(tf, prefix)
    assert len(records) == 2
    for r in records:
        png = png_dir / r["study"].decode() / r["series"].decode() / (r["instance"].decode() + ".png")
        assert r["png_bytes"] == png.read_bytes() and int(r["frame"]) == 1
        image = tf.io.decode_png(r["png_bytes"], channels=1).numpy()
        assert image.shape[2] == 1 and image.shape[:2] == cv2.imread(str(png), cv2.IMREAD_UNCHANGED).shape[:2]
