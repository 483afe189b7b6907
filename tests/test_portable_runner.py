"""Every job under Beam's portability framework, the path Flink, Spark and Dataflow Runner v2 run Python by.

Each test runs one job twice on a tiny input: with the default (local) runner, and with
`--runner PortableRunner --job_endpoint embed --environment_type LOOPBACK` (an in-process job server
whose SDK harness runs the transforms over the Fn API, as a real portable runner's workers would), into
two output folders, and asserts the same counts and the same outputs: files by content digest, Parquet
tables by their rows, TFRecords by their decoded records, DuckDB files by their tables, table manifests
by the shards they name (they name them by absolute path, so their bytes differ by the output folder).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pydicom
import pytest

from medbeam.io import dicomweb as dw
from medbeam.io import tfrecord as tfr
from medbeam.pipelines import dicom_import as di
from medbeam.pipelines.decompress import DecompressConfig
from medbeam.pipelines.decompress import run as run_decompress
from medbeam.pipelines.dicom_export import ExportConfig
from medbeam.pipelines.dicom_export import run as run_export
from medbeam.pipelines.images_to_tfrecord import ImagesToTfrecordConfig
from medbeam.pipelines.images_to_tfrecord import run as run_images
from medbeam.pipelines.png_to_tfrecord import PngToTfrecordConfig
from medbeam.pipelines.png_to_tfrecord import run as run_pngs
from medbeam.pipelines.predictions_load import PredictionsLoadConfig
from medbeam.pipelines.predictions_load import run as run_predictions
from medbeam.pipelines.untar import UntarConfig
from medbeam.pipelines.untar import run as run_untar
from tests import test_images_to_tfrecord as images_tests
from tests import test_png_to_tfrecord as png_tests

pytest_plugins = ["tests.emulators", "tests.orthanc"]
pytestmark = pytest.mark.usefixtures("restore_filesystem_options")

PORTABLE = ["--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "LOOPBACK"]
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


# ---------------------------------------------------------------------------------------------------
# Comparing two output folders


def _text(value, root: Path):
    """Values with this run's output folder written as `<out>` (the two runs write to different folders)."""
    if isinstance(value, str):
        return value.replace(str(root), "<out>")
    if isinstance(value, bytes):
        return value.replace(str(root).encode(), b"<out>")
    if isinstance(value, dict):
        return {k: _text(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_text(v, root) for v in value)
    return value


def _rows(rows: list[dict], root: Path) -> list[str]:
    return sorted(repr(_text(row, root)) for row in rows)


def _duckdb_tables(path: Path, root: Path) -> dict[str, list[str]]:
    with duckdb.connect(str(path), read_only=True) as con:
        names = [name for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        tables = {}
        for name in names:
            cursor = con.execute(f'SELECT * FROM "{name}"')
            columns = [c[0] for c in cursor.description]
            tables[name] = _rows([dict(zip(columns, row, strict=True)) for row in cursor.fetchall()], root)
    return tables


def _snapshot(root: Path) -> dict[str, object]:
    """relative path → what the file holds, comparable across output folders."""
    snapshot: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        rel = str(path.relative_to(root))
        if path.name == "_manifest.json":
            manifest = json.loads(path.read_text())
            # The shards it names are compared by their own entries; here, which ones it names.
            manifest["files"] = sorted(str(Path(f).relative_to(root)) for f in manifest["files"])
            snapshot[rel] = manifest
        elif path.suffix == ".parquet":
            snapshot[rel] = _rows(pq.read_table(path).to_pylist(), root)
        elif path.suffix == ".tfrecord":
            snapshot[rel] = sorted(repr(_text(tfr.decode_example(r), root)) for r in tfr.read_records(str(path)))
        elif path.suffix == ".duckdb":
            snapshot[rel] = _duckdb_tables(path, root)
        elif path.suffix == ".wal":
            continue
        else:
            snapshot[rel] = hashlib.sha256(_text(path.read_bytes(), root)).hexdigest()
    return snapshot


def _assert_same_outputs(default: Path, portable: Path, expected_files: set[str] | None = None) -> None:
    a, b = _snapshot(default), _snapshot(portable)
    assert a.keys() == b.keys()
    for rel in a:
        assert a[rel] == b[rel], rel
    if expected_files is not None:
        assert expected_files <= a.keys()


def _both(run, make_config, out: Path):
    """(default-runner counts, portable-runner counts), each run into its own folder under `out`."""
    return run(make_config(out / "default"), []), run(make_config(out / "portable"), list(PORTABLE))


# ---------------------------------------------------------------------------------------------------
# dicom export


@pytest.fixture(scope="module")
def dicom_corpus(tmp_path_factory) -> Path:
    """5 files: 2 renderable instances (one with a second copy), a non-image, a non-DICOM file."""
    root = tmp_path_factory.mktemp("dicom")
    (root / "a").mkdir()
    shutil.copy(TEST_FILES / "CT_small.dcm", root / "CT_small.dcm")
    shutil.copy(TEST_FILES / "MR_small.dcm", root / "a" / "MR_small.dcm")
    shutil.copy(TEST_FILES / "MR_small_RLE.dcm", root / "a" / "MR_small_RLE.dcm")  # same SOP instance
    shutil.copy(TEST_FILES / "rtplan.dcm", root / "rtplan.dcm")  # no pixels: a row, no PNG
    (root / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 300)
    return root


def test_dicom_export(dicom_corpus, tmp_path):
    def config(out: Path) -> ExportConfig:
        return ExportConfig(
            inputs=[str(dicom_corpus)],
            png_dir=str(out / "png"),
            duckdb_path=str(out / "m.duckdb"),
            tfrecord_prefix=str(out / "tfr" / "train"),
            progress=False,
        )

    default, portable = _both(run_export, config, tmp_path)
    assert default == portable
    assert (default.files_in, default.pngs, default.duplicates, default.rejected_files) == (5, 2, 1, 1)
    _assert_same_outputs(
        tmp_path / "default",
        tmp_path / "portable",
        {"m.duckdb", "m_parquet/dicom_metadata/_manifest.json", "png/_medbeam/outputs/_manifest.json"},
    )


# ---------------------------------------------------------------------------------------------------
# dicom import


def test_dicom_import(dicom_corpus, orthanc, tmp_path):
    def config(out: Path) -> di.ImportConfig:
        return di.ImportConfig(
            inputs=[str(dicom_corpus)],
            dicomweb=dw.DicomwebSettings.from_options(orthanc.dicomweb_url),
            parquet_dir=str(out / "tables"),
            duckdb_path=str(out / "import.duckdb"),
            max_batch_instances=2,  # 3 instances: two batches, as on a real corpus
            progress=False,
        )

    def stored() -> list[str]:
        instances = orthanc.rest("GET", "/instances?expand").json()
        return sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in instances)

    orthanc.clear()
    default = di.run(config(tmp_path / "default"), [])
    stored_by_default = stored()
    orthanc.clear()
    portable = di.run(config(tmp_path / "portable"), list(PORTABLE))
    assert default == portable
    assert (default.files_in, default.stored, default.duplicates, default.rejected_files) == (5, 3, 1, 1)
    assert default.batches == 2
    assert stored() == stored_by_default and len(stored_by_default) == 3
    _assert_same_outputs(
        tmp_path / "default", tmp_path / "portable", {"import.duckdb", "tables/dicom_import/_manifest.json"}
    )


# ---------------------------------------------------------------------------------------------------
# tfrecord from-dicom-png, from-images


def test_png_to_tfrecord(tmp_path):
    root = png_tests._write_tree(tmp_path / "png")

    def config(out: Path) -> PngToTfrecordConfig:
        return PngToTfrecordConfig(input=str(root), output=str(out / "dicom"), shape=(32, 32, 1), num_shards=2)

    default, portable = _both(run_pngs, config, tmp_path)
    assert default == portable
    assert (default.records_written, default.rejected, default.shards) == (len(png_tests.EXPECTED), 3, 2)
    _assert_same_outputs(
        tmp_path / "default", tmp_path / "portable", {"dicom-00000-of-00002.tfrecord", "dicom.features.json"}
    )


def test_images_to_tfrecord_with_a_label_query(tmp_path):
    root = images_tests._corpus(tmp_path / "corpus")
    sql = images_tests._sql(images_tests._labels_csv(root))

    def config(out: Path) -> ImagesToTfrecordConfig:
        return ImagesToTfrecordConfig(
            inputs=[str(root / "jpgs"), str(root / "jpgs" / "sub")],
            output=str(out / "train"),
            shape=(24, 32, 1),
            labels_sql=sql,
            num_shards=2,
        )

    default, portable = _both(run_images, config, tmp_path)
    assert default == portable
    assert (default.records_written, default.rejected, default.orphan_label_rows) == (3, 4, 4)
    _assert_same_outputs(
        tmp_path / "default",
        tmp_path / "portable",
        {"train.features.json", "train.labels.parquet", "train_tables/rejects/_manifest.json"},
    )
    # Which of the 2 shards get records depends on the hash of the (temporary) image paths.
    assert list((tmp_path / "default").glob("train-0000[01]-of-00002.tfrecord"))


# ---------------------------------------------------------------------------------------------------
# files untar, decompress


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), mtime=0)


def test_untar(tmp_path):
    inputs = tmp_path / "archives"
    inputs.mkdir()
    (inputs / "one.tar.gz").write_bytes(_tar_gz({"scans/a.png": b"a" * 3000, "labels.csv": b"x,y\n"}))
    (inputs / "two.tar.gz").write_bytes(_tar_gz({"scans/b.png": b"b" * 500, "../escape": b"evil"}))
    (inputs / "corrupt.tar.gz").write_bytes(b"\x1f\x8b" + b"\xff" * 200)

    def config(out: Path) -> UntarConfig:
        return UntarConfig(inputs=[str(inputs)], output_dir=str(out / "out"), archive_subdir=True)

    default, portable = _both(run_untar, config, tmp_path)
    assert default == portable
    assert (default.archives_in, default.members_written, default.members_rejected) == (3, 3, 1)
    assert default.archives_rejected == 1
    _assert_same_outputs(
        tmp_path / "default",
        tmp_path / "portable",
        {"out/one/scans/a.png", "out/two/scans/b.png", "out/_medbeam/rejects/_manifest.json"},
    )


def test_decompress(tmp_path):
    inputs = tmp_path / "compressed"
    (inputs / "sub").mkdir(parents=True)
    (inputs / "a.csv.gz").write_bytes(gzip.compress(images_tests.IMAGES["a.jpg"], mtime=0))
    (inputs / "sub" / "b.txt.gz").write_bytes(gzip.compress(b"hello\n" * 100, mtime=0))
    (inputs / "cut.gz").write_bytes(gzip.compress(b"x" * 5000, mtime=0)[:30])
    (inputs / "plain.txt").write_bytes(b"not selected")

    def config(out: Path) -> DecompressConfig:
        return DecompressConfig(inputs=[str(inputs)], output_dir=str(out / "out"))

    default, portable = _both(run_decompress, config, tmp_path)
    assert default == portable
    assert (default.files_in, default.written, default.rejected) == (3, 2, 1)
    _assert_same_outputs(
        tmp_path / "default",
        tmp_path / "portable",
        {"out/compressed/a.csv", "out/compressed/sub/b.txt", "out/_medbeam/outputs/_manifest.json"},
    )


# ---------------------------------------------------------------------------------------------------
# cxr prepare


def test_cxr_prepare(tmp_path):
    from medbeam.datasets.cxr_synthetic import write_mimic_cxr_2019
    from medbeam.pipelines.cxr_prepare import CxrConfig
    from medbeam.pipelines.cxr_prepare import run as run_cxr

    sample = write_mimic_cxr_2019(tmp_path / "in", patients=3, bad_cases=["missing_image", "not_jpeg"])

    def config(out: Path) -> CxrConfig:
        return CxrConfig(layout="mimic-cxr-2019", input_dir=str(sample.root), output_jpg_dir=str(out / "jpg"),
                         output_tfrecord_dir=str(out / "tf"), duckdb_path=str(out / "cxr.duckdb"),
                         image_shape=(32, 32), progress=False)  # fmt: skip

    default, portable = _both(run_cxr, config, tmp_path)
    assert default == portable
    assert (default.records_written, default.rejected) == (len(sample.images), 1)
    _assert_same_outputs(tmp_path / "default", tmp_path / "portable", {"tf/frontal.features.json", "cxr.duckdb"})


# ---------------------------------------------------------------------------------------------------
# infer


def test_infer(tmp_path):
    from medbeam.pipelines.infer import InferConfig
    from medbeam.pipelines.infer import run as run_infer
    from tests import test_infer as infer_tests

    model = infer_tests._keras_model()
    model.save(tmp_path / "m.keras")
    images = {p: infer_tests._jpg(p) for p in range(10000001, 10000006)}
    records = [infer_tests._record(p, j) for p, j in images.items()]
    tfr.write_records(str(tmp_path / "r-00000-of-00001.tfrecord"), records)

    def config(out: Path) -> InferConfig:
        return InferConfig(inputs=[str(tmp_path / "r-*")], model=str(tmp_path / "m.keras"), plugin="mimic-cxr",
                           batch_size=2, duckdb_path=str(out / "p.duckdb"), progress=False)  # fmt: skip

    default, portable = _both(run_infer, config, tmp_path)
    assert default == portable and default.rows_written == 5
    _assert_same_outputs(tmp_path / "default", tmp_path / "portable", {"p.duckdb"})


# ---------------------------------------------------------------------------------------------------
# predictions load: the layout is a CombineGlobally, then a side input of the row step


def test_predictions_load(tmp_path):
    inputs = tmp_path / "predictions"
    inputs.mkdir()
    lines = [{"v": [0.5, 1.0], "of": [[1, 0], [0, 1]], "k": "a"}, {"v": [2, 3], "k": "b", "ok": True}, "{bad"]
    (inputs / "prediction.results-00000-of-00002").write_text("\n".join(
        line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")  # fmt: skip
    (inputs / "prediction.results-00001-of-00002").write_bytes(gzip.compress(b'{"v": [1], "k": "c"}\n', mtime=0))

    def config(out: Path) -> PredictionsLoadConfig:
        return PredictionsLoadConfig(inputs=[str(inputs)], duckdb_path=str(out / "p.duckdb"), progress=False)

    default, portable = _both(run_predictions, config, tmp_path)
    assert default == portable
    assert (default.lines_in, default.rows_written, default.rejected) == (4, 2, 2)
    _assert_same_outputs(tmp_path / "default", tmp_path / "portable", {"p_parquet/predictions/_manifest.json"})


# ---------------------------------------------------------------------------------------------------
# dicom deidentify


def test_dicom_deidentify(tmp_path, monkeypatch):
    from medbeam.dicom import burned_in
    from medbeam.pipelines import dicom_deidentify as dd
    from medbeam.transforms.deidentify import KeySource
    from tests import deid_corpus

    corpus = tmp_path / "in"
    deid_corpus.build_corpus(corpus)
    monkeypatch.setenv("MEDBEAM_TEST_DEID_KEY", "portable-runner-key-0123456789")
    # OCR when Tesseract is there (always in CI, where `make test` installs it: missing, the run fails)
    in_ci = os.environ.get("CI", "").lower() == "true"
    ocr = burned_in.FLAGGED if in_ci or burned_in.tesseract_path() else burned_in.NONE

    def config(out: Path) -> dd.DeidentifyConfig:
        return dd.DeidentifyConfig(
            inputs=[str(corpus)],
            key=KeySource(env="MEDBEAM_TEST_DEID_KEY"),
            output_dir=str(out / "deid"),
            duckdb_path=str(out / "deid.duckdb"),
            redact_burned_in=ocr,
            progress=False,
        )

    default, portable = _both(dd.run, config, tmp_path / "runs")
    assert default == portable
    assert (default.files_in, default.deidentified, default.rejected_files) == (9, 6, 3)
    _assert_same_outputs(
        tmp_path / "runs" / "default",
        tmp_path / "runs" / "portable",
        {"deid.duckdb", "deid_parquet/deid_audit/_manifest.json", "deid/_medbeam/outputs/_manifest.json"},
    )
