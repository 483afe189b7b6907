"""`tfrecord from-images`: the label join (DuckDB over CSV), orphans and duplicates, typed label features,
resizing, counts that reconcile, reruns, the BigQuery wiring, the CLI, and gs:// / s3:// end to end."""

from __future__ import annotations

import decimal
import json
from pathlib import Path

import apache_beam as beam
import cv2
import duckdb
import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from medbeam.cli.tfrecord import app
from medbeam.imaging.codec import decode_image, sniff_format
from medbeam.io import files, tables
from medbeam.io import tfrecord as tfr
from medbeam.io.examples import rejects_location
from medbeam.io.labels import (
    LabelColumn,
    LabelSchemaError,
    label_columns_from_arrow,
    label_columns_from_bigquery,
    label_feature_values,
)
from medbeam.pipelines import images_to_tfrecord as images
from medbeam.pipelines.images_to_tfrecord import (
    ImagesToTfrecordConfig,
    LabelSource,
    resolve_labels,
    run,
)
from tests.emulators import BucketEmulator, filesystem_options
from tests.helpers import digests


def _jpg(h: int, w: int, grey: bool = False, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w) if grey else (h, w, 3)) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def _png(h: int, w: int, channels: int = 3) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((h, w, channels), 100, np.uint8))
    assert ok
    return buf.tobytes()


# relative path → bytes
IMAGES = {
    "a.jpg": _jpg(60, 80, seed=1),
    "b.JPEG": _jpg(40, 40, grey=True, seed=2),
    "sub/c.jpg": _jpg(90, 30, seed=3),
    "sub/d.jpg": _jpg(50, 50, seed=4),  # two label rows: rejected, not doubled
    "sub/e.jpg": _jpg(20, 20, seed=5),  # no label row: rejected
    "cut.jpg": _jpg(64, 64, seed=6)[:300],  # truncated: a decode reject
    "fake.jpg": _png(10, 10),  # a PNG named .jpg: a decode reject
}
NOT_MATCHED = {"other.png": _png(10, 10), "notes.txt": b"hello"}  # outside the default jpg regex


def _labels_csv(root: Path) -> str:
    u = lambda rel: str(root / "jpgs" / rel)  # noqa: E731
    lines = [
        "path,label_1,label_2,note",
        f"{u('a.jpg')},1,0.5,first",
        f"{u('b.JPEG')},-3,,",  # NULL float and text: those features are absent
        f"{u('sub/c.jpg')},{2**40},2.25,third",
        f"{u('sub/d.jpg')},4,1.0,dup one",
        f"{u('sub/d.jpg')},5,2.0,dup two",
        f"{u('cut.jpg')},6,3.0,cut",
        f"{u('fake.jpg')},7,4.0,fake",
        f"{u('missing.jpg')},8,5.0,orphan",
        f"{u('gone/x.jpg')},9,6.0,orphan two",
        f"{u('gone/x.jpg')},10,7.0,orphan three",
        ",11,8.0,null path",
    ]
    path = root / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _sql(csv: str) -> str:
    return (
        f"SELECT path, label_1, label_2, note, [label_1, label_1 * 2] AS pair, label_1 > 0 AS positive "
        f"FROM read_csv('{csv}')"
    )


def _corpus(root: Path) -> Path:
    for rel, data in {**IMAGES, **NOT_MATCHED}.items():
        (root / "jpgs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "jpgs" / rel).write_bytes(data)
    return root


def _records(prefix: str) -> dict[str, dict[str, tfr.FeatureValue]]:
    out = {}
    for shard in tfr.existing_shards(prefix):
        for data in tfr.read_records(shard):
            d = tfr.decode_example(data)
            out[d["path"].values[0].decode()] = d
    return out


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = _corpus(tmp_path_factory.mktemp("corpus"))
    out = tmp_path_factory.mktemp("out")
    config = ImagesToTfrecordConfig(
        inputs=[str(root / "jpgs"), str(root / "jpgs" / "sub")],  # overlapping: no duplicate records
        output=str(out / "train"),
        shape=(24, 32, 1),
        labels_sql=_sql(_labels_csv(root)),
        num_shards=2,
    )
    return root, out, config, run(config, [])


def test_counts_reconcile(labelled):
    *_, c = labelled
    assert (c.files_matched, c.files_skipped, c.images_in) == (9, 2, 7)
    assert (c.records_written, c.rejected) == (3, 4)
    assert (c.images_unlabeled, c.images_duplicate_labels, c.images_failed) == (1, 1, 2)
    assert c.images_in == c.records_written + c.rejected
    assert c.rejected == c.images_unlabeled + c.images_duplicate_labels + c.images_failed
    assert (c.label_rows_in, c.label_rows_matched, c.duplicate_label_rows, c.orphan_label_rows) == (11, 5, 2, 4)
    assert c.label_rows_in == c.label_rows_matched + c.duplicate_label_rows + c.orphan_label_rows
    assert c.summary() == (
        "7 images in, 3 records written, 4 rejected (1 without a label row, 1 with several label rows, "
        "2 unreadable or undecodable); 11 label rows, 4 without an image, 2 in duplicate groups"
    )


def test_records_carry_typed_labels_and_resized_jpegs(labelled):
    root, _, config, _ = labelled
    records = _records(config.output)
    u = lambda rel: str(root / "jpgs" / rel)  # noqa: E731
    assert set(records) == {u("a.jpg"), u("b.JPEG"), u("sub/c.jpg")}
    a, b, c = records[u("a.jpg")], records[u("b.JPEG")], records[u("sub/c.jpg")]
    assert a["label_1"] == tfr.int64_feature(1)
    assert a["label_2"] == tfr.float_feature(0.5)
    assert a["note"] == tfr.bytes_feature(b"first")
    assert a["pair"] == tfr.int64_feature(1, 2)
    assert a["positive"] == tfr.int64_feature(1)
    assert b["label_1"] == tfr.int64_feature(-3) and b["positive"] == tfr.int64_feature(0)
    assert "label_2" not in b and "note" not in b  # NULL → absent
    assert c["label_1"] == tfr.int64_feature(2**40) and c["pair"] == tfr.int64_feature(2**40, 2**41)
    for record in records.values():
        assert set(record) - {"label_2", "note"} == {"path", "jpg_bytes", "label_1", "pair", "positive"}
        data = record["jpg_bytes"].values[0]
        assert sniff_format(data) == "jpg"
        assert decode_image(data).shape == (24, 32)


def test_rejects_list_every_image_and_label_row_left_out(labelled):
    root, _, config, _ = labelled
    rows = tables.read_table(*rejects_location(config.output)).to_pylist()
    by_uri = {(r["uri"].replace(str(root / "jpgs") + "/", ""), r["error_type"]): r for r in rows}
    assert set(by_uri) == {
        ("sub/d.jpg", "DuplicateLabel"),
        ("sub/e.jpg", "NoLabel"),
        ("cut.jpg", "ImageDecodeError"),
        ("fake.jpg", "FormatMismatchError"),
        ("missing.jpg", "NoImage"),
        ("gone/x.jpg", "NoImage"),
        ("", "NullPath"),
    }
    assert by_uri[("sub/d.jpg", "DuplicateLabel")]["message"].startswith("2 label rows for one image")
    assert "dup one" in by_uri[("sub/d.jpg", "DuplicateLabel")]["message"]
    assert by_uri[("gone/x.jpg", "NoImage")]["message"].startswith("2 label row(s)")
    assert by_uri[("cut.jpg", "ImageDecodeError")]["stage"] == "decode"
    assert all(
        r["stage"] == "join" for k, r in by_uri.items() if k[1] not in ("ImageDecodeError", "FormatMismatchError")
    )


def test_features_json_spec(labelled):
    _, out, config, _ = labelled
    doc = tfr.read_description(config.output)
    specs = {f["name"]: f for f in doc["features"]}
    assert list(specs) == ["path", "jpg_bytes", "label_1", "label_2", "note", "pair", "positive"]
    assert {n: (f["dtype"], f["shape"], f["varlen"]) for n, f in specs.items()} == {
        "path": ("string", [], False),
        "jpg_bytes": ("string", [], False),
        "label_1": ("int64", [], False),
        "label_2": ("float32", [], False),
        "note": ("string", [], False),
        "pair": ("int64", None, True),
        "positive": ("int64", [], False),
    }
    assert specs["jpg_bytes"]["image"] == {
        "format": "jpg",
        "height": 24,
        "width": 32,
        "channels": 1,
        "resize_mode": "stretch",
        "jpeg_quality": 95,
    }
    assert specs["label_2"]["present"] == 2 and specs["label_1"]["present"] == 3 == doc["records"]
    assert doc["labels"]["rows"] == "train.labels.parquet" and (out / "train.labels.parquet").exists()
    assert doc["counts"]["orphan_label_rows"] == 4


def test_rerun_gives_identical_files(labelled):
    _, out, config, _ = labelled
    before = digests(out)
    run(config, [])
    assert digests(out) == before


def test_png_without_labels_keeps_channels_and_applies_the_regex(tmp_path):
    root = tmp_path / "pngs"
    (root / "keep").mkdir(parents=True)
    (root / "keep" / "rgb.png").write_bytes(_png(40, 40, 3))
    (root / "keep" / "grey.png").write_bytes(cv2.imencode(".png", np.zeros((30, 50), np.uint8))[1].tobytes())
    (root / "drop.png").write_bytes(_png(10, 10))
    config = ImagesToTfrecordConfig(
        inputs=[str(root) + "/**"],
        output=str(tmp_path / "o" / "p"),
        image_format="png",
        path_regex=r".*/keep/.*\.png",
        shape=(20, 10),
    )
    counts = run(config, [])
    assert (
        counts.files_matched,
        counts.files_skipped,
        counts.images_in,
        counts.records_written,
        counts.rejected,
    ) == (3, 1, 2, 2, 0)
    assert "label rows" not in counts.summary()
    records = _records(config.output)
    shapes = {Path(p).name: decode_image(r["png_bytes"].values[0]).shape for p, r in records.items()}
    assert shapes == {"rgb.png": (20, 10, 3), "grey.png": (20, 10)}
    assert all(set(r) == {"path", "png_bytes"} for r in records.values())


# ---------------------------------------------------------------------------------------------------
# Label typing, without a pipeline


def _arrow(sql: str) -> pa.Schema:
    return duckdb.sql(sql).to_arrow_table().schema


def test_label_columns_from_duckdb_types():
    schema = _arrow(
        "SELECT 'p' AS path, 1::TINYINT a, 2::HUGEINT b, 1.5 c, 1.5::FLOAT d, 'x' e, 'x'::BLOB f, true g, "
        "['a', 'b'] h, [1.5] i"
    )
    cols = {c.name: (c.kind, c.varlen) for c in label_columns_from_arrow(schema, "jpg_bytes")}
    assert cols == {
        "a": (tfr.INT64, False),
        "b": (tfr.INT64, False),
        "c": (tfr.FLOAT, False),  # DECIMAL(2,1)
        "d": (tfr.FLOAT, False),
        "e": (tfr.BYTES, False),
        "f": (tfr.BYTES, False),
        "g": (tfr.INT64, False),
        "h": (tfr.BYTES, True),
        "i": (tfr.FLOAT, True),
    }


@pytest.mark.parametrize(
    "sql, message",
    [
        ("SELECT 1 AS label", "must return a 'path' column"),
        ("SELECT 1 AS path", "must be text"),
        ("SELECT 'p' AS path, DATE '2020-01-01' AS d", "CAST it"),
        ("SELECT 'p' AS path, NULL AS n", "only NULLs"),
        ("SELECT 'p' AS path, 'x' AS jpg_bytes", "collides with the image feature"),
    ],
)
def test_label_schema_errors(sql, message):
    with pytest.raises(LabelSchemaError, match=message):
        label_columns_from_arrow(_arrow(sql), "jpg_bytes")


def test_label_values():
    cols = [
        LabelColumn("i", tfr.INT64),
        LabelColumn("f", tfr.FLOAT),
        LabelColumn("s", tfr.BYTES),
        LabelColumn("l", tfr.FLOAT, varlen=True),
    ]
    row = {"path": "p", "i": decimal.Decimal("7"), "f": decimal.Decimal("0.25"), "s": "é", "l": [1, 2.5]}
    assert label_feature_values(row, cols) == {
        "i": tfr.int64_feature(7),
        "f": tfr.float_feature(0.25),
        "s": tfr.bytes_feature("é"),
        "l": tfr.float_feature(1.0, 2.5),
    }
    assert label_feature_values({"i": None, "f": None, "s": None, "l": None}, cols) == dict.fromkeys("ifsl")
    with pytest.raises(ValueError, match="NULL inside its list"):
        label_feature_values({"l": [1.0, None]}, cols)
    with pytest.raises(ValueError, match="not an integer"):
        label_feature_values({"i": 1.5}, cols)


# ---------------------------------------------------------------------------------------------------
# BigQuery: everything but the service


class _StubBigQuery:
    """Stands in for google.cloud.bigquery.Client.query(dry_run=True): returns a result schema."""

    def __init__(self, fields):
        self.fields = fields
        self.calls = []

    def query(self, sql, job_config=None):
        self.calls.append((sql, job_config.dry_run))
        return type("Job", (), {"schema": self.fields})()


def test_bigquery_schema_to_label_columns():
    from google.cloud.bigquery import SchemaField

    fields = [
        SchemaField("path", "STRING"),
        SchemaField("n", "INTEGER"),
        SchemaField("x", "FLOAT64"),
        SchemaField("d", "NUMERIC"),
        SchemaField("ok", "BOOLEAN"),
        SchemaField("tags", "STRING", mode="REPEATED"),
    ]
    cols = label_columns_from_bigquery(fields, "jpg_bytes")
    assert [(c.name, c.kind, c.varlen, c.source_type) for c in cols] == [
        ("n", tfr.INT64, False, "INTEGER"),
        ("x", tfr.FLOAT, False, "FLOAT64"),
        ("d", tfr.FLOAT, False, "NUMERIC"),
        ("ok", tfr.INT64, False, "BOOLEAN"),
        ("tags", tfr.BYTES, True, "ARRAY<STRING>"),
    ]
    with pytest.raises(LabelSchemaError, match="CAST it"):
        label_columns_from_bigquery(
            [{"name": "path", "type": "STRING"}, {"name": "t", "type": "TIMESTAMP"}], "jpg_bytes"
        )
    with pytest.raises(LabelSchemaError, match="must be a STRING"):
        label_columns_from_bigquery([{"name": "path", "type": "INTEGER"}], "jpg_bytes")


def test_bigquery_labels_are_a_dry_run_in_the_driver_and_a_query_in_the_pipeline(tmp_path):
    """The wiring only (the query against a real BigQuery API: tests/test_bigquery_jobs.py)."""
    from google.cloud.bigquery import SchemaField

    from medbeam.transforms.bigquery import QueryRowsFn

    sql = "SELECT path, label FROM `project.dataset.table`"
    config = ImagesToTfrecordConfig(inputs=["gs://bucket/jpgs/"], output="gs://bucket/out/train", bigquery_sql=sql)
    client = _StubBigQuery([SchemaField("path", "STRING"), SchemaField("label", "INTEGER")])
    labels = resolve_labels(config, "project", client)
    assert client.calls == [(sql, True)]  # a dry run only, in the driver
    assert labels == LabelSource(
        [LabelColumn("label", tfr.INT64, False, "INTEGER")], bigquery_sql=sql, bigquery_project="project"
    )

    p = beam.Pipeline()
    images.build(p, config, labels)
    found = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            fn = getattr(node.transform, "fn", None)
            if isinstance(fn, QueryRowsFn):
                found.append(fn)

    p.visit(Visitor())
    assert len(found) == 1
    assert [s.name for s in images.feature_specs(config, labels)] == ["path", "jpg_bytes", "label"]
    with pytest.raises(ValueError, match="resolve_labels"):
        images.build(beam.Pipeline(), config, None)


def test_config_validation(tmp_path):
    base = {"inputs": [str(tmp_path)], "output": str(tmp_path / "x")}
    for bad, message in [
        ({"labels_sql": "SELECT 1", "bigquery_sql": "SELECT 1"}, "not both"),
        ({"duckdb_path": "x.duckdb"}, "give --labels-sql"),
        ({"path_regex": "("}, "not a valid regular expression"),
        ({"image_format": "gif"}, "jpg or png"),
        ({"jpeg_quality": 0}, "1-100"),
        ({"output": "gs://b/"}, "file prefix"),
        ({"inputs": []}, "at least one"),
        ({"inputs": [str(tmp_path / "missing")]}, "does not exist"),
    ]:
        with pytest.raises(ValueError, match=message):
            ImagesToTfrecordConfig(**{**base, **bad})
    folder = files.input_pattern("gs://b/jpgs", "folder")
    assert folder == "gs://b/jpgs/**" == files.input_pattern("gs://b/jpgs/", "folder")
    assert files.input_pattern("s3://b/x/*.jpg", "folder") == "s3://b/x/*.jpg"


# ---------------------------------------------------------------------------------------------------
# CLI


def test_cli_with_a_duckdb_database(tmp_path):
    (tmp_path / "jpgs").mkdir()
    (tmp_path / "jpgs" / "x.jpg").write_bytes(_jpg(30, 30))
    db = tmp_path / "labels.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE labels (path VARCHAR, y BIGINT)")
        con.execute("INSERT INTO labels VALUES (?, 1), ('/elsewhere.jpg', 2)", [str(tmp_path / "jpgs" / "x.jpg")])
    runner = CliRunner()
    args = [
        "from-images",
        "--input",
        str(tmp_path / "jpgs"),
        "--output",
        str(tmp_path / "o" / "t"),
        "--duckdb",
        str(db),
    ]
    result = runner.invoke(
        app,
        [*args, "--labels-sql", "SELECT path, y FROM labels", "--shape", "8", "8", "3", "--direct_num_workers=1"],
    )
    assert result.exit_code == 0, result.output
    assert "1 images in, 1 records written, 0 rejected; 2 label rows, 1 without an image" in result.output
    record = _records(str(tmp_path / "o" / "t"))[str(tmp_path / "jpgs" / "x.jpg")]
    assert record["y"] == tfr.int64_feature(1) and decode_image(record["jpg_bytes"].values[0]).shape == (8, 8, 3)

    failed = runner.invoke(app, [*args, "--labels-sql", "SELECT nope FROM labels"])
    assert failed.exit_code == 2 and "label query failed" in failed.output
    both = runner.invoke(app, [*args, "--labels-sql", "SELECT 1", "--bigquery-sql", "SELECT 1"])
    assert both.exit_code == 2 and "not both" in both.output


# ---------------------------------------------------------------------------------------------------
# Buckets: images, the labels CSV and the outputs all in gs:// or s3://


@pytest.mark.parametrize("fixture", ["gcs_emulator", "s3_emulator"])
def test_bucket_images_labels_and_outputs(fixture, request):
    emulator: BucketEmulator = request.getfixturevalue(fixture)
    base = f"img2tf-{emulator.scheme}"
    uris = {rel: emulator.put(f"{base}/jpgs/{rel}", IMAGES[rel]) for rel in ("a.jpg", "sub/c.jpg", "sub/e.jpg")}
    csv = "path,label\n" + f"{uris['a.jpg']},1\n{uris['sub/c.jpg']},2\n{emulator.uri(base, 'jpgs/none.jpg')},3\n"
    emulator.put(f"{base}/labels/part-1.csv", csv.encode())
    config = ImagesToTfrecordConfig(
        inputs=[emulator.uri(base, "jpgs")],
        output=emulator.uri(base, "tf", "train"),
        shape=(16, 16),
        labels_sql=f"SELECT * FROM read_csv('{emulator.uri(base, 'labels')}/*.csv')",
    )
    counts = run(config, list(emulator.beam_args))
    assert (counts.images_in, counts.records_written, counts.rejected, counts.orphan_label_rows) == (3, 2, 1, 1)
    with filesystem_options(emulator.beam_args):
        records = _records(config.output)
        doc = tfr.read_description(config.output)
        rejects = tables.read_table(*rejects_location(config.output)).to_pylist()
    assert {p: r["label"].values for p, r in records.items()} == {uris["a.jpg"]: (1,), uris["sub/c.jpg"]: (2,)}
    assert all(decode_image(r["jpg_bytes"].values[0]).shape == (16, 16, 3) for r in records.values())
    assert {r["error_type"] for r in rejects} == {"NoLabel", "NoImage"}
    assert set(emulator.keys(f"{base}/tf/")) >= {f"{base}/tf/{f}" for f in doc["files"]} | {
        f"{base}/tf/train.features.json",
        f"{base}/tf/train.labels.parquet",
    }
    assert json.loads(emulator.get(f"{base}/tf/train.features.json"))["records"] == 2


@pytest.mark.parametrize("mode", ["stretch", "pad", "crop"])
def test_cli_resize_mode_keeps_the_aspect_ratio(tmp_path, mode):
    # A 480x640 frame, white inside, resized to 100x100: only pad letterboxes it (75 rows + black bars).
    (tmp_path / "in").mkdir()
    ok, buf = cv2.imencode(".png", np.full((480, 640), 255, np.uint8))
    (tmp_path / "in" / "us.png").write_bytes(buf.tobytes())
    result = CliRunner().invoke(
        app,
        ["from-images", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o" / "t"), "--format", "png",
         "--shape", "100", "100", "--resize-mode", mode, "--direct_num_workers=1"],
    )
    assert result.exit_code == 0, result.output
    (record,) = _records(str(tmp_path / "o" / "t")).values()
    image = decode_image(record["png_bytes"].values[0])
    assert image.shape == (100, 100)
    if mode == "pad":
        assert image[:12].max() == 0 and image[-12:].max() == 0 and image[13:-13].min() == 255
    else:
        assert image.min() == 255
    spec = json.loads((tmp_path / "o" / "t.features.json").read_text())
    (png_spec,) = [f for f in spec["features"] if f["name"] == "png_bytes"]
    assert png_spec["image"]["resize_mode"] == mode


def test_label_paths_that_match_no_image_get_a_hint(tmp_path):
    (tmp_path / "jpgs").mkdir()
    (tmp_path / "jpgs" / "a.jpg").write_bytes(_jpg(8, 8))
    csv = tmp_path / "labels.csv"
    csv.write_text("path,y\njpgs/a.jpg,1\n")  # relative: the join needs the full URI
    config = ImagesToTfrecordConfig(
        inputs=[str(tmp_path / "jpgs")], output=str(tmp_path / "o" / "t"),
        labels_sql=f"SELECT * FROM read_csv('{csv}')",
    )  # fmt: skip
    counts = run(config, [])
    assert counts.records_written == 0
    summary = counts.summary()
    assert "none of the 1 label paths matched an image" in summary
    assert "'jpgs/a.jpg'" in summary and repr(str(tmp_path / "jpgs" / "a.jpg")) in summary
