"""`cxr prepare` on small datasets in each exact published layout (medbeam.datasets.cxr_synthetic), every
bad case included: records (read back with TensorFlow too), JPGs, the labels table, rejects, counts."""

from __future__ import annotations

import os
import re
from pathlib import Path

import duckdb
import numpy as np
import pytest
from typer.testing import CliRunner

from medbeam.cli import app
from medbeam.datasets import cxr
from medbeam.datasets import cxr_synthetic as syn
from medbeam.imaging.codec import decode_image
from medbeam.io import tfrecord as tfr
from medbeam.pipelines.cxr_prepare import CxrConfig, run
from tests.helpers import digests

SHAPE = (64, 48)
CODES = {None: 0, 0.0: 1, -1.0: 2, 1.0: 3}


def _prepare(layout: str, sample: syn.CxrSample, out: Path, beam_args: list[str] | None = None, **kwargs):
    input_dir = sample.root if layout in (cxr.MIMIC_2019, cxr.MIMIC_JPG) else sample.data_root
    config = CxrConfig(
        layout=layout,
        input_dir=str(input_dir),
        output_jpg_dir=str(out / "jpg"),
        output_tfrecord_dir=str(out / "tf"),
        duckdb_path=str(out / "cxr.duckdb"),
        image_shape=SHAPE,
        progress=False,
        **kwargs,
    )
    return config, run(config, beam_args or [])


def _records(tf_dir: Path) -> dict[str, list[dict[str, tfr.FeatureValue]]]:
    out = {}
    for view in cxr.VIEW_NAMES:
        shards = tfr.existing_shards(str(tf_dir / view))
        out[view] = [tfr.decode_example(record) for shard in shards for record in tfr.read_records(shard)]
    return out


def _rows(duckdb_path: str, sql: str) -> list[tuple]:
    with duckdb.connect(duckdb_path, read_only=True) as con:
        return con.execute(sql).fetchall()


def _expected_labels(image: syn.CxrImage) -> dict[str, int]:
    """The generator's intended labels in Google's encoding, by name ('Lung Opacity' is airspace_opacity)."""
    return {cxr.label_column(name): CODES[value] for name, value in image.labels.items()}


@pytest.fixture(scope="module", params=[cxr.MIMIC_2019, cxr.MIMIC_JPG, cxr.CHEXPERT])
def prepared(request, tmp_path_factory):
    layout = request.param
    writer = {cxr.MIMIC_2019: syn.write_mimic_cxr_2019, cxr.MIMIC_JPG: syn.write_mimic_cxr_jpg,
              cxr.CHEXPERT: syn.write_chexpert}[layout]  # fmt: skip
    sample = writer(tmp_path_factory.mktemp(layout) / "in", bad_cases=True)
    out = tmp_path_factory.mktemp(f"{layout}-out")
    config, counts = _prepare(layout, sample, out)
    return layout, sample, out, config, counts


def test_every_good_image_is_a_record_with_its_ids_and_labels(prepared):
    layout, sample, out, _, counts = prepared
    records = _records(out / "tf")
    by_path = {}
    for view, items in records.items():
        for features in items:
            assert features["view"].values == (cxr.VIEWS[view],)
            by_path[features["jpg_bytes"].values[0]] = features
    assert counts.records_written == len(sample.images) == sum(len(v) for v in records.values())
    labels = _rows(config_duckdb(out), "SELECT path, view_name FROM labels ORDER BY path")
    assert [p for p, _ in labels] == sorted(i.path for i in sample.images)
    assert dict(labels) == {i.path: _view_name(layout, i) for i in sample.images}
    for items in records.values():
        for features in items:
            image = _image_of(layout, sample, {k: v.values[0] for k, v in features.items()})
            assert {c: features[c].values[0] for c in cxr.LABEL_COLUMNS} == _expected_labels(image)
            assert decode_image(features["jpg_bytes"].values[0]).shape == SHAPE  # grey stays grey
            assert features["dataset"].values[0] == cxr.DATASETS[image.split]


def config_duckdb(out: Path) -> str:
    return str(out / "cxr.duckdb")


def _view_name(layout: str, image: syn.CxrImage) -> str:
    """frontal/lateral/other as the layout says it: the path (2019, CheXpert), ViewPosition or else the view
    code's meaning (v2)."""
    if layout == cxr.MIMIC_JPG:
        return cxr.VIEW_NAMES[cxr.view_of(image.view, image.metadata.get("ViewCodeSequence_CodeMeaning"))]
    return image.view.lower()


def _image_of(layout: str, sample: syn.CxrSample, ids: dict) -> syn.CxrImage:
    """The generated image a record's ids (plain values) name."""
    patient, study = ids["patient"], ids["study"]
    if layout == cxr.MIMIC_JPG:
        return next(i for i in sample.images if i.dicom_id == ids["dicom_id"].decode())
    view = cxr.VIEW_NAMES[ids["view"]]
    number = ids["image"]
    candidates = [i for i in sample.images if int(re.sub(r"\D", "", i.patient)) == patient
                  and int(re.sub(r"\D", "", i.study)) == study and f"view{number}_{view}" in i.path]  # fmt: skip
    assert len(candidates) == 1, (patient, study, number, view)
    return candidates[0]


def test_counts_reconcile_and_every_bad_case_is_a_reject(prepared):
    layout, sample, out, _, c = prepared
    assert c.images_in == c.records_written + c.images_rejected
    assert c.records_written == c.records_frontal + c.records_lateral + c.records_other
    rejects = _rows(config_duckdb(out), "SELECT uri, stage, error_type FROM rejects")
    kinds = {}
    for uri, stage, error_type in rejects:
        kinds.setdefault((stage, error_type), []).append(uri)
    assert len(kinds[("decode", "FormatMismatchError")]) == 1  # the PNG named .jpg
    assert len(kinds[("decode", "ImageDecodeError")]) == 1  # the truncated JPEG
    assert len(kinds[("labels", "LabelValueError")]) == 2  # the cells 2.0 and yes
    assert len(kinds[("join", "NoImage")]) == 1  # the label row whose image is missing
    assert len(kinds[("join", "ImageRejected")]) == 2  # the label rows of the PNG and the truncated JPEG
    if layout == cxr.MIMIC_JPG:  # the unlabelled image has no rows at all: no metadata row either
        assert len(kinds[("join", "NoMetadata")]) == 1 and len(kinds[("join", "NoLabel")]) == 2
    else:  # the unlabelled image, the two whose label row has an invalid cell
        assert len(kinds[("join", "NoLabel")]) == 3
    unknown = kinds[("path", "UnknownPathError")]
    assert any(u.endswith("img.jpg") for u in unknown)
    if layout == cxr.CHEXPERT:  # a repeated train.csv row: used once, the copy reported
        assert len(kinds[("join", "RepeatedLabelRow")]) == 1
    else:  # the same member in two tars (2019); the same dicom_id in another study folder (v2)
        duplicates = kinds.get(("join", "DuplicateImage"), []) + kinds.get(("join", "IdMismatch"), [])
        assert len(duplicates) == 1
    image_errors = ("NoLabel", "NoMetadata", "DuplicateLabel", "DuplicateImage", "IdMismatch", "ConflictingImages")
    image_rejects = [r for r in rejects if r[1] in ("path", "decode") or r[2] in image_errors]
    assert len(image_rejects) == c.images_rejected
    assert c.label_rows_without_image == 1 and c.label_rows_image_rejected == 2
    summary = c.summary()
    assert summary.startswith(f"{c.images_in} images in, {c.records_written} records (frontal {c.records_frontal}, ")
    assert f"; {c.label_rows_in} label rows, 1 without image" in summary


def test_jpgs_mirror_the_dataset_paths(prepared):
    layout, sample, out, _, _ = prepared
    written = {str(p.relative_to(out / "jpg")) for p in (out / "jpg").rglob("*.jpg")}
    assert written == {image.path for image in sample.images}


def test_spilled_jpgs_are_gone_after_the_run(prepared):
    """The resized JPGs wait in {parquet-dir}/_spill between reading and writing; nothing is left there."""
    _, _, _, config, _ = prepared
    assert config.spill_dir.startswith(config.parquet_dir)
    assert not os.path.exists(config.spill_dir)


def test_labels_table_types(prepared):
    layout, _, out, _, _ = prepared
    columns = dict(_rows(config_duckdb(out), "SELECT column_name, data_type FROM information_schema.columns "
                                             "WHERE table_name = 'labels'"))  # fmt: skip
    assert all(columns[c] == "BIGINT" for c in cxr.LABEL_COLUMNS)
    assert columns["patient"] == columns["study"] == columns["view"] == "BIGINT"
    if layout == cxr.MIMIC_JPG:
        assert (columns["StudyDate"], columns["StudyTime"], columns["Rows"]) == ("DATE", "TIME", "BIGINT")
        rows = _rows(config_duckdb(out), "SELECT dicom_id, StudyDate, Rows, split, image FROM labels")
        assert all(r[1].year >= 2100 and r[2] > 0 and r[3] in ("train", "validate", "test") for r in rows)
    if layout == cxr.CHEXPERT:
        assert columns["age"] == "BIGINT" and columns["sex"] == "VARCHAR"


def test_rerun_gives_identical_outputs(prepared, tmp_path):
    layout, sample, out, config, counts = prepared
    before = digests(out / "tf") | digests(out / "jpg")
    again = run(config, [])
    assert again == counts
    assert digests(out / "tf") | digests(out / "jpg") == before


def test_tensorflow_reads_the_records(prepared):
    layout, sample, out, _, _ = prepared
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("tensorflow is not installed (pip install 'medbeam[tensorflow]')")
    spec = {"jpg_bytes": tf.io.FixedLenFeature([], tf.string)}
    spec |= {name: tf.io.FixedLenFeature([], tf.int64) for name in ("patient", "study", "image", "view", "dataset")}
    spec |= {name: tf.io.FixedLenFeature([], tf.int64) for name in cxr.LABEL_COLUMNS}
    if layout == cxr.MIMIC_JPG:
        spec |= {"dicom_id": tf.io.FixedLenFeature([], tf.string)}
    seen = 0
    for view in cxr.VIEW_NAMES:
        for raw in tf.data.TFRecordDataset(tfr.existing_shards(str(out / "tf" / view))):
            example = tf.io.parse_single_example(raw, spec)
            pixels = tf.io.decode_jpeg(example["jpg_bytes"]).numpy()
            assert pixels.shape == (*SHAPE, 1) and pixels.dtype == np.uint8
            features = {k: v.numpy() for k, v in example.items() if k != "jpg_bytes"}
            assert features["view"] == cxr.VIEWS[view]
            image = _image_of(layout, sample, {k: v if isinstance(v, bytes) else v.item() for k, v in features.items()})
            assert {c: int(features[c]) for c in cxr.LABEL_COLUMNS} == _expected_labels(image)
            seen += 1
    assert seen == len(sample.images)


# ---------------------------------------------------------------------------------------------------
# The pure layout rules


def test_label_encoding_and_names():
    assert [cxr.encode_label(v) for v in ("", "0.0", "-1.0", "1.0", "0", "1", " 1.0 ")] == [0, 1, 2, 3, 1, 3, 3]
    for bad in ("2.0", "yes", "0.5", "nan"):
        with pytest.raises(cxr.LabelValueError):
            cxr.encode_label(bad)
    assert cxr.label_column("Lung Opacity") == cxr.label_column("Airspace Opacity") == "airspace_opacity"
    assert cxr.label_column("Path") is None and len(cxr.LABEL_COLUMNS) == 14


def test_v2_labels_are_mapped_by_name_not_position():
    names = sorted(n if n != "Airspace Opacity" else "Lung Opacity" for n in cxr.LABEL_NAMES)
    cells = {h: "" for h in ["subject_id", "study_id", *names]}
    cells |= {"subject_id": "10000032", "study_id": "50414267", "Lung Opacity": "1.0", "Atelectasis": "-1.0"}
    row = cxr.parse_label_row(cxr.MIMIC_JPG, cells)
    assert row.key == "p10000032/s50414267"
    assert row.labels["airspace_opacity"] == 3 and row.labels["atelectasis"] == 2 and row.labels["no_finding"] == 0
    assert list(row.labels) == list(cxr.LABEL_COLUMNS)


@pytest.mark.parametrize(
    ("layout", "path", "ids"),
    [
        (cxr.MIMIC_2019, "x.tar!train/p10524315/s01/view1_frontal.jpg", (10524315, 1, 1, 0, 0)),
        (cxr.MIMIC_2019, "valid/p19000001/s02/view3_other.jpg", (19000001, 2, 3, 2, 1)),
        (cxr.CHEXPERT, "/d/CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", (64541, 1, 1, 0, 1)),
        (cxr.MIMIC_JPG, "gs://b/files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg",
         (10000032, 50414267, None, None, None)),
    ],
)
def test_image_paths(layout, path, ids):
    key = cxr.parse_image_path(layout, path)
    assert (key.patient, key.study, key.image, key.view, key.dataset) == ids


@pytest.mark.parametrize(
    ("layout", "path"),
    [
        (cxr.MIMIC_2019, "train/p1/s01/img.jpg"),
        (cxr.MIMIC_2019, "test/p10524315/s01/view1_frontal.jpg"),
        (cxr.MIMIC_JPG, "files/p11/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"),
        (cxr.MIMIC_JPG, "files/p10/p10000032/s50414267/not-a-dicom-id.jpg"),
        (cxr.CHEXPERT, "CheXpert-v1.0-small/train/patient00001/study1/view1_other.jpg"),
    ],
)
def test_unknown_paths(layout, path):
    with pytest.raises(cxr.UnknownPathError):
        cxr.parse_image_path(layout, path)


def test_v2_views():
    assert [cxr.view_of(p, None) for p in ("PA", "AP", "LATERAL", "LL", "LAO", "")] == [0, 0, 1, 1, 2, 2]
    assert [cxr.view_of("", m) for m in ("postero-anterior", "antero-posterior", "left lateral", "")] == [0, 0, 1, 2]


def test_cli(tmp_path):
    sample = syn.write_mimic_cxr_2019(tmp_path / "in", patients=2, studies_per_patient=1)
    result = CliRunner().invoke(
        app,
        ["cxr", "prepare", "--layout", "mimic-cxr-2019", "--input-tars", str(tmp_path / "in" / "*.tar.gz"),
         "--input-csv", str(sample.csvs["train"]), "--input-csv", str(sample.csvs["valid"]),
         "--output-tfrecord-dir", str(tmp_path / "tf"), "--output-image-shape", "32", "32",
         "--duckdb", str(tmp_path / "c.duckdb"), "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    n = len(sample.images)
    assert f"{n} images in, {n} records (frontal" in result.output and ", 0 rejected; " in result.output
    assert f"TFRecords: {tmp_path / 'tf'}/" in result.output
    bad = CliRunner().invoke(app, ["cxr", "prepare", "--layout", "mimic-cxr-jpg", "--duckdb", "x.duckdb"])
    assert bad.exit_code == 2 and "--input-dir" in bad.output


def test_v2_images_in_tars(tmp_path):
    """MIMIC-CXR-JPG's files/ tree may arrive as tars: the same records as from the loose files."""
    sample = syn.write_mimic_cxr_jpg(tmp_path / "in", patients=3, as_tars=True, keep_loose=True)
    loose = _prepare(cxr.MIMIC_JPG, sample, tmp_path / "loose")[1]
    config = CxrConfig(layout=cxr.MIMIC_JPG, input_dir=str(sample.root), input_tars=[str(t) for t in sample.tars],
                       output_tfrecord_dir=str(tmp_path / "tars" / "tf"), image_shape=SHAPE, progress=False,
                       parquet_dir=str(tmp_path / "tars" / "tables"))  # fmt: skip
    from_tars = run(config, [])
    assert from_tars.records_written == loose.records_written == len(sample.images) and from_tars.rejected == 0
    assert digests(tmp_path / "tars" / "tf", "*.tfrecord") == digests(tmp_path / "loose" / "tf", "*.tfrecord")


def test_labels_and_rejects_load_into_bigquery(bigquery_emulator, tmp_path):
    sample = syn.write_chexpert(tmp_path / "in", patients=2, bad_cases=["missing_image"])
    dataset = "cxr_labels"
    result = CliRunner().invoke(
        app,
        ["cxr", "prepare", "--layout", "chexpert", "--input-dir", str(sample.data_root),
         "--duckdb", str(tmp_path / "c.duckdb"), "--no-progress",
         "--bigquery-dataset", f"{bigquery_emulator.project}:{dataset}",
         "--bigquery-endpoint", bigquery_emulator.endpoint],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    client = bigquery_emulator.client()
    table = f"{bigquery_emulator.project}.{dataset}.labels"
    assert f"BigQuery: {table}, {bigquery_emulator.project}.{dataset}.rejects" in result.output
    got = sorted(tuple(r) for r in client.query(f"SELECT path, cardiomegaly, age FROM `{table}`"))
    assert got == sorted(_rows(str(tmp_path / "c.duckdb"), "SELECT path, cardiomegaly, age FROM labels"))
    assert len(got) == len(sample.images)
    assert client.get_table(f"{bigquery_emulator.project}.{dataset}.rejects").num_rows == 1


def test_large_tars_read_in_parts_give_the_same_outputs(tmp_path):
    """With more than one local worker the tars are dealt into equal shares, a tar cut where a share ends
    (windows of the tar, each streamed by its own reader): the records, JPGs, tables and counts are those
    of one reader."""
    from medbeam.io.archives import deal_tars

    sample = syn.write_mimic_cxr_2019(tmp_path / "in", patients=6, bad_cases=True, train_tars=1)
    dealt = deal_tars([(str(t), t.stat().st_size) for t in sample.tars], 2)
    assert any(window is not None for share in dealt for _, _, window in share)  # a tar is cut
    whole = _prepare(cxr.MIMIC_2019, sample, tmp_path / "whole")
    parts = _prepare(cxr.MIMIC_2019, sample, tmp_path / "parts",
                     beam_args=["--direct_running_mode=multi_threading", "--direct_num_workers=2"])  # fmt: skip
    assert parts[1] == whole[1]
    assert digests(tmp_path / "parts" / "tf", "*.tfrecord") == digests(tmp_path / "whole" / "tf", "*.tfrecord")
    assert digests(tmp_path / "parts" / "jpg", "*.jpg") == digests(tmp_path / "whole" / "jpg", "*.jpg")
    sql = "SELECT * FROM {} ORDER BY ALL"
    for table in ("labels", "rejects"):
        assert _rows(str(tmp_path / "parts" / "cxr.duckdb"), sql.format(table)) == _rows(
            str(tmp_path / "whole" / "cxr.duckdb"), sql.format(table)
        )


def test_local_runs_spread_over_threads_on_a_few_cores():
    from medbeam.pipelines.cxr_prepare import local_plan
    from medbeam.pipelines.runner import local_beam_args

    two = local_plan(60.0, cores=2)
    assert (two.workers, two.mode) == (2, "multi_threading")
    args = local_beam_args([], True, two.workers, two.mode)
    assert "--direct_running_mode=multi_threading" in args and "--direct_num_workers=2" in args
    assert local_plan(60.0, cores=16).mode == "multi_processing"
