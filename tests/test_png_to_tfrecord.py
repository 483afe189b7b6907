"""`tfrecord from-dicom-png` end to end on the DirectRunner: records, rejects, counts, shards, reruns, buckets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from medbeam.cli.tfrecord import app
from medbeam.imaging.codec import decode_image
from medbeam.io import tables
from medbeam.io import tfrecord as tfr
from medbeam.io.examples import (
    LayoutError,
    dicom_png_example,
    parse_png_path,
    rejects_location,
)
from medbeam.pipelines.png_to_tfrecord import PngToTfrecordConfig, run
from tests.emulators import BucketEmulator, filesystem_options
from tests.helpers import copy_dicom, dicom_file, digests

STUDY, SERIES = "1.2.840.1", "1.2.840.1.2"


def _png(h: int, w: int, c: int | None = None, dtype=np.uint8) -> bytes:
    rng = np.random.default_rng(h * 1000 + w)
    top = 65535 if dtype == np.uint16 else 255
    shape = (h, w) if c is None else (h, w, c)
    ok, buf = cv2.imencode(".png", (rng.random(shape) * top).astype(dtype))
    assert ok
    return buf.tobytes()


def _tree() -> dict[str, bytes]:
    """relative path → bytes: 4 single-frame PNGs, one 3-frame instance, and 4 files that are not records."""
    ok, jpg = cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))
    return {
        f"{STUDY}/{SERIES}/1.1.png": _png(64, 48),
        f"{STUDY}/{SERIES}/1.2.png": _png(40, 40, dtype=np.uint16),  # 16-bit export
        f"{STUDY}/{SERIES}/1.3.png": _png(50, 70, 3),  # colour
        "2.5/2.5.1/1.4.png": _png(20, 20),
        **{f"{STUDY}/{SERIES}/9.9/{frame:04d}.png": _png(30 + frame, 30) for frame in (1, 2, 3)},
        f"{STUDY}/stray.png": _png(10, 10),  # wrong depth: a "path" reject
        f"{STUDY}/{SERIES}/cut.png": _png(30, 30)[:200],  # truncated: a "decode" reject
        f"{STUDY}/{SERIES}/jpeg.png": jpg.tobytes(),  # a JPEG named .png: a "decode" reject
        "README.txt": b"not a png",  # skipped, not rejected
    }


EXPECTED = {
    (STUDY, SERIES, "1.1", 1),
    (STUDY, SERIES, "1.2", 1),
    (STUDY, SERIES, "1.3", 1),
    ("2.5", "2.5.1", "1.4", 1),
    (STUDY, SERIES, "9.9", 1),
    (STUDY, SERIES, "9.9", 2),
    (STUDY, SERIES, "9.9", 3),
}


def _write_tree(root: Path) -> Path:
    for rel, data in _tree().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _records(prefix: str) -> dict[tuple, dict[str, tfr.FeatureValue]]:
    out = {}
    for shard in tfr.existing_shards(prefix):
        for data in tfr.read_records(shard):
            d = tfr.decode_example(data)
            key = (
                d["study"].values[0].decode(),
                d["series"].values[0].decode(),
                d["instance"].values[0].decode(),
                d["frame"].values[0],
            )
            assert key not in out
            out[key] = d
    return out


@pytest.fixture(scope="module")
def resized(tmp_path_factory):
    root = _write_tree(tmp_path_factory.mktemp("png"))
    out = tmp_path_factory.mktemp("out")
    config = PngToTfrecordConfig(input=str(root), output=str(out / "dicom"), shape=(32, 32, 1), num_shards=2)
    return root, out, config, run(config, [])


def test_counts_reconcile(resized):
    _, _, _, counts = resized
    assert counts.pngs_in == len(_tree()) - 1
    assert counts.files_skipped == 1 and counts.files_matched == len(_tree())
    assert counts.records_written == len(EXPECTED)
    assert counts.rejected == 3
    assert counts.pngs_in == counts.records_written + counts.rejected
    assert counts.shards == 2
    assert counts.summary() == "10 PNGs in, 7 records written, 3 rejected (1 non-PNG files skipped)"


def test_records_have_googles_features_plus_frame_and_the_requested_shape(resized):
    _, _, config, _ = resized
    records = _records(config.output)
    assert set(records) == EXPECTED
    for record in records.values():
        assert set(record) == {"study", "series", "instance", "frame", "png_bytes"}
        assert all(v.kind == tfr.BYTES for k, v in record.items() if k != "frame")
        assert record["frame"].kind == tfr.INT64
        img = decode_image(record["png_bytes"].values[0])
        assert img.shape == (32, 32)
    assert decode_image(records[(STUDY, SERIES, "1.2", 1)]["png_bytes"].values[0]).dtype == np.uint16


def test_rejects_say_where_and_why(resized):
    _, out, config, _ = resized
    table_dir, name = rejects_location(config.output)
    assert (table_dir, name) == (str(out / "dicom_tables"), "rejects")  # the one rejects convention
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in tables.read_table(table_dir, name).to_pylist()}
    assert set(rows) == {"stray.png", "cut.png", "jpeg.png"}
    assert (rows["stray.png"]["stage"], rows["stray.png"]["error_type"]) == ("path", "LayoutError")
    assert (rows["cut.png"]["stage"], rows["cut.png"]["error_type"]) == ("decode", "ImageDecodeError")
    assert (rows["jpeg.png"]["stage"], rows["jpeg.png"]["error_type"]) == ("decode", "FormatMismatchError")


def test_features_json_describes_the_dataset(resized):
    _, _, config, _ = resized
    doc = tfr.read_description(config.output)
    assert doc["files"] == ["dicom-00000-of-00002.tfrecord", "dicom-00001-of-00002.tfrecord"]
    assert doc["file_pattern"] == "dicom-*-of-00002.tfrecord"
    assert doc["records"] == 7 and doc["job"] == "from-dicom-png"
    specs = {f["name"]: f for f in doc["features"]}
    assert list(specs) == ["study", "series", "instance", "frame", "png_bytes"]
    assert specs["frame"]["dtype"] == "int64" and specs["study"]["dtype"] == "string"
    assert all(f["shape"] == [] and not f["varlen"] and f["present"] == 7 for f in specs.values())
    assert specs["png_bytes"]["image"] == {
        "format": "png", "height": 32, "width": 32, "channels": 1, "resize_mode": "stretch"
    }
    assert doc["rejects"] == "dicom_tables/rejects/_manifest.json"
    assert doc["counts"]["rejected"] == 3


def test_rerun_writes_identical_files_and_no_shape_keeps_the_bytes(resized, tmp_path):
    # Its own output, not `resized`'s: the pass-through run below replaces what it finds, and the other
    # tests read `resized`'s records (32x32, 2 shards) in whatever order they run.
    root, _, fixture_config, _ = resized
    out = tmp_path / "out"
    out.mkdir()
    config = dataclasses.replace(fixture_config, output=str(out / "dicom"))
    run(config, [])
    before = digests(out)
    run(config, [])
    assert digests(out) == before

    passthrough = PngToTfrecordConfig(input=str(root), output=config.output)  # auto shards, no resize
    counts = run(passthrough, [])
    assert counts.records_written == 7 and counts.rejected == 3 and counts.shards == 1
    assert [Path(p).name for p in tfr.existing_shards(config.output)] == ["dicom-00000-of-00001.tfrecord"]
    records = _records(config.output)
    assert records[(STUDY, SERIES, "9.9", 2)]["png_bytes"].values[0] == _tree()[f"{STUDY}/{SERIES}/9.9/0002.png"]


def test_dicom_png_example_is_what_the_export_calls():
    data = dicom_png_example("1.2", "1.2.3", "1.2.3.4", b"\x89PNG", frame=2)
    assert tfr.decode_example(data) == {
        "frame": tfr.int64_feature(2),
        "instance": tfr.bytes_feature(b"1.2.3.4"),
        "png_bytes": tfr.bytes_feature(b"\x89PNG"),
        "series": tfr.bytes_feature(b"1.2.3"),
        "study": tfr.bytes_feature(b"1.2"),
    }
    assert tfr.decode_example(dicom_png_example("a", "b", "c", b""))["frame"].values == (1,)


def test_parse_png_path():
    assert parse_png_path("s/se/i.png") == ("s", "se", "i", 1)
    assert parse_png_path("s/se/i/0012.PNG") == ("s", "se", "i", 12)
    for bad in ("s/i.png", "s/se/i/x.png", "s/se/i/0000.png", "s/se/.png", "a/b/c/d/e.png"):
        with pytest.raises(LayoutError):
            parse_png_path(bad)


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        PngToTfrecordConfig(input=str(tmp_path / "missing"), output=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="file prefix"):
        PngToTfrecordConfig(input=str(tmp_path), output=str(tmp_path) + "/")
    with pytest.raises(ValueError):
        PngToTfrecordConfig(input=str(tmp_path), output=str(tmp_path / "x"), shape=(5, 5, 2))


def test_cli(tmp_path):
    root = tmp_path / "png"
    (root / "s" / "se").mkdir(parents=True)
    (root / "s" / "se" / "i.png").write_bytes(_png(40, 30, 3))
    result = CliRunner().invoke(
        app,
        [
            "from-dicom-png",
            "--input",
            str(root),
            "--output",
            str(tmp_path / "o" / "d"),
            "--shape",
            "16",
            "12",
            "3",
            "--num-shards",
            "2",
            "--direct_num_workers=1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 PNGs in, 1 records written, 0 rejected" in result.output
    record = _records(str(tmp_path / "o" / "d"))[("s", "se", "i", 1)]
    assert decode_image(record["png_bytes"].values[0]).shape == (16, 12, 3)
    bad = CliRunner().invoke(
        app, ["from-dicom-png", "--input", str(root), "--output", str(tmp_path / "o" / "d"), "--shape", "16"]
    )
    assert bad.exit_code == 2 and "--shape" in bad.output


def test_export_then_convert(tmp_path):
    """The real contract: what `dicom export` writes is what from-dicom-png reads (multi-frame included)."""
    from medbeam.pipelines.dicom_export import ExportConfig
    from medbeam.pipelines.dicom_export import run as export

    names = ("CT_small.dcm", "emri_small.dcm")  # emri_small has 10 frames
    src = copy_dicom({name: name for name in names}, tmp_path / "dcm")
    export(
        ExportConfig(
            inputs=[str(src)], png_dir=str(tmp_path / "png"), parquet_dir=str(tmp_path / "pq"), progress=False
        ),
        [],
    )
    counts = run(PngToTfrecordConfig(input=str(tmp_path / "png"), output=str(tmp_path / "tf" / "d")), [])
    assert (counts.pngs_in, counts.records_written, counts.rejected) == (11, 11, 0)
    frames = sorted(k[3] for k in _records(str(tmp_path / "tf" / "d")))
    assert frames == [1, 1, *range(2, 11)]


@pytest.mark.parametrize("fixture", ["gcs_emulator", "s3_emulator"])
def test_bucket_input_and_output(fixture, request):
    emulator: BucketEmulator = request.getfixturevalue(fixture)
    base = f"png2tf-{emulator.scheme}"
    keep = {k: v for k, v in _tree().items() if k.startswith(STUDY)}
    for rel, data in keep.items():
        emulator.put(f"{base}/png/{rel}", data)
    config = PngToTfrecordConfig(
        input=emulator.uri(base, "png"), output=emulator.uri(base, "tf", "dicom"), shape=(16, 16), num_shards=2
    )
    counts = run(config, list(emulator.beam_args))
    assert (counts.pngs_in, counts.records_written, counts.rejected) == (len(keep), 6, 3)
    keys = emulator.keys(f"{base}/tf/")
    with filesystem_options(emulator.beam_args):
        doc = tfr.read_description(config.output)
        records = _records(config.output)
    assert doc["files"] and all(f"{base}/tf/{name}" in keys for name in doc["files"])
    assert all(name.endswith("-of-00002.tfrecord") for name in doc["files"])
    assert f"{base}/tf/dicom_tables/rejects/_manifest.json" in keys
    assert len(records) == 6
    assert all(decode_image(r["png_bytes"].values[0]).shape[:2] == (16, 16) for r in records.values())


def test_cli_mounted_as_a_sub_app(tmp_path):
    """How cli.py wires it: `medbeam tfrecord …`; --shape's extra numbers survive the parent group."""
    import typer

    parent = typer.Typer()
    parent.command("other")(lambda: None)
    parent.add_typer(app, name="tfrecord")
    args = ["tfrecord", "from-dicom-png", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]
    result = CliRunner().invoke(parent, [*args, "--shape", "8", "8", "1", "--runner", "DirectRunner"])
    assert result.exit_code == 2 and "not a directory" in result.output  # parsed fine, then validated
    assert "from-images" in CliRunner().invoke(parent, ["tfrecord", "--help"]).output


def test_resize_mode_pad_letterboxes(tmp_path):
    root = tmp_path / "png"
    (root / "s" / "se").mkdir(parents=True)
    ok, buf = cv2.imencode(".png", np.full((480, 640), 255, np.uint8))
    (root / "s" / "se" / "i.png").write_bytes(buf.tobytes())
    config = PngToTfrecordConfig(input=str(root), output=str(tmp_path / "o" / "d"), shape=(100, 100), resize_mode="pad")
    run(config, [])
    image = decode_image(_records(str(tmp_path / "o" / "d"))[("s", "se", "i", 1)]["png_bytes"].values[0])
    assert image.shape == (100, 100) and image[:12].max() == 0 and image[-12:].max() == 0 and image[50].min() == 255
    with pytest.raises(ValueError, match="resize mode"):
        PngToTfrecordConfig(input=str(root), output=str(tmp_path / "o" / "e"), resize_mode="squash")


def test_export_manifest_is_not_an_input(tmp_path):
    from medbeam.pipelines.dicom_export import ExportConfig
    from medbeam.pipelines.dicom_export import run as export

    png_dir = tmp_path / "png"
    export(ExportConfig(inputs=[str(dicom_file("CT_small.dcm"))], png_dir=str(png_dir),
                        parquet_dir=str(tmp_path / "t"), progress=False))  # fmt: skip
    assert (png_dir / "_medbeam").is_dir()
    counts = run(PngToTfrecordConfig(input=str(png_dir), output=str(tmp_path / "o" / "d")), [])
    assert (counts.files_matched, counts.files_skipped, counts.records_written) == (1, 0, 1)
