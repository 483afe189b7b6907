"""The export job on gs:// and s3:// through Beam's FileSystems, against real local emulators (no mocks).

First plain Beam on each store (so an emulator problem shows up apart from a pipeline problem), then the
whole export with inputs and outputs in a bucket, then inputs in one place and outputs in another.
"""

from __future__ import annotations

import io
import json

import apache_beam as beam
import cv2
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from medbeam.pipelines.dicom_export import ExportConfig, run
from tests.emulators import SCHEMES, BucketEmulator, filesystem_options
from tests.helpers import dicom_file, query

pytestmark = pytest.mark.usefixtures("restore_filesystem_options")

#: key under the input prefix → the test file it holds. MR_small_RLE is the same SOP instance as MR_small.
CORPUS = {
    "a/CT_small.dcm": "CT_small.dcm",
    "a/b/MR_small": "MR_small.dcm",  # no extension: found by content
    "a/b/MR_small_RLE.dcm": "MR_small_RLE.dcm",  # a second copy of MR_small's instance
    "SC_rgb_2frame.dcm": "SC_rgb_2frame.dcm",  # RGB, 2 frames → {sop}/0001.png, {sop}/0002.png
    "JPEG2000.dcm": "JPEG2000.dcm",  # compressed pixels
    "rtplan.dcm": "rtplan.dcm",  # no pixels: a row, no PNG, no reject
}
NOT_DICOM = "notes.txt"
DICOM_FILES = len(CORPUS)
EXPECTED_PNGS = 1 + 1 + 2 + 1  # CT, MR (once), 2 RGB frames, JPEG 2000
RENDERED_INSTANCES = 4


def _corpus_bytes() -> dict[str, bytes]:
    data = {key: dicom_file(name).read_bytes() for key, name in CORPUS.items()}
    data[NOT_DICOM] = b"not an image\n" * 20
    return data


def _headers() -> dict[str, pydicom.Dataset]:
    """SOPInstanceUID → header of the source file, to know what each PNG must look like."""
    out = {}
    for name in CORPUS.values():
        ds = pydicom.dcmread(dicom_file(name), stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = ds
    return out


def _upload_corpus(store: BucketEmulator, prefix: str) -> dict[str, str]:
    """Upload with the store's own client; returns relative key → URI."""
    return {key: store.put(f"{prefix}/{key}", data) for key, data in _corpus_bytes().items()}


def _decode_png(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a PNG"
    return image


# ---------------------------------------------------------------------------------------------------
# Plain Beam on the emulators


def test_filesystems_round_trip(store: BucketEmulator):
    base = store.uri("roundtrip")
    payload = bytes(range(256)) * 4096  # 1 MiB: more than one read buffer
    with filesystem_options(store.beam_args):
        with FileSystems.create(f"{base}/dir/a.bin") as f:
            f.write(payload)
        with FileSystems.create(f"{base}/dir/sub/b.txt") as f:
            f.write(b"hello")
        assert store.get("roundtrip/dir/a.bin") == payload  # what Beam wrote is in the bucket

        with FileSystems.open(f"{base}/dir/a.bin") as f:
            assert f.read() == payload
        with FileSystems.open(f"{base}/dir/a.bin") as f:
            f.seek(1000)
            assert f.read(10) == payload[1000:1010]

        matched = FileSystems.match([f"{base}/dir/**", f"{base}/dir/*.bin", f"{base}/nothing/*"])
        assert {(m.path, m.size_in_bytes) for m in matched[0].metadata_list} == {
            (f"{base}/dir/a.bin", len(payload)),
            (f"{base}/dir/sub/b.txt", 5),
        }
        assert [m.path for m in matched[1].metadata_list] == [f"{base}/dir/a.bin"]
        assert matched[2].metadata_list == []
        assert FileSystems.exists(f"{base}/dir/sub/b.txt")

        FileSystems.delete([f"{base}/dir/a.bin", f"{base}/dir/sub/b.txt"])
        assert not FileSystems.exists(f"{base}/dir/a.bin")
        assert FileSystems.match([f"{base}/**"])[0].metadata_list == []
    assert store.keys("roundtrip/") == []


def test_match_files_in_a_pipeline(store: BucketEmulator):
    """The pipeline's options alone reach the filesystem, in worker processes too.

    The export switches to multi-processing for large inputs; those workers learn the S3 endpoint only
    from the pipeline options Beam hands them (the GCS emulator, from the inherited environment).
    """
    for key in ("matchfiles/x/1.dcm", "matchfiles/x/y/2.dcm", "matchfiles/3.txt"):
        store.put(key, b"data of " + key.encode())
    FileSystems.set_options(None)  # nothing left over from earlier tests
    options = PipelineOptions(
        [*store.beam_args, "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    )
    with beam.Pipeline(options=options) as p:
        sizes = (
            p
            | fileio.MatchFiles(store.uri("matchfiles", "**"))
            | beam.Map(lambda m: (m.path, m.size_in_bytes))
        )
        contents = (
            p
            | "Match .dcm" >> fileio.MatchFiles(store.uri("matchfiles", "x", "**.dcm"))
            | fileio.ReadMatches()
            | beam.Map(lambda f: f.read())
        )
        assert_that(
            sizes,
            equal_to([(store.uri(k), len(b"data of " + k.encode())) for k in
                      ("matchfiles/x/1.dcm", "matchfiles/x/y/2.dcm", "matchfiles/3.txt")]),
            label="sizes",
        )
        assert_that(
            contents,
            equal_to([b"data of matchfiles/x/1.dcm", b"data of matchfiles/x/y/2.dcm"]),
            label="contents",
        )


# ---------------------------------------------------------------------------------------------------
# The export, all in a bucket


@pytest.fixture(scope="module", params=sorted(SCHEMES))
def bucket_export(request, tmp_path_factory):
    """Inputs, PNGs and Parquet tables in one bucket; DuckDB locally (it must be a local file)."""
    store: BucketEmulator = request.getfixturevalue(SCHEMES[request.param])
    uris = _upload_corpus(store, "export/in")
    duckdb_path = tmp_path_factory.mktemp(f"export-{store.scheme}") / "m.duckdb"
    config = ExportConfig(
        inputs=[store.uri("export", "in", "**")],
        png_dir=store.uri("export", "out", "png"),
        parquet_dir=store.uri("export", "out", "tables"),
        duckdb_path=str(duckdb_path),
        progress=False,
    )
    previous = FileSystems._pipeline_options  # noqa: SLF001 - run() sets them for the process
    try:
        counts = run(config, beam_args=list(store.beam_args))
    finally:
        FileSystems.set_options(previous)
    return store, uris, config, counts, duckdb_path


def test_bucket_export_counts_reconcile(bucket_export):
    *_, counts, duckdb_path = bucket_export
    assert counts.files_in == DICOM_FILES + 1
    assert counts.instances == DICOM_FILES, query(duckdb_path, "SELECT * FROM rejects ORDER BY uri")
    assert counts.rejected_files == 1
    assert counts.files_in == counts.instances + counts.rejected_files
    assert counts.pngs == EXPECTED_PNGS
    assert counts.rendered_instances == RENDERED_INSTANCES
    assert counts.duplicates == 1
    assert counts.pixel_errors == 0


def test_bucket_export_metadata_rows_name_the_bucket_uris(bucket_export):
    store, uris, _, _, duckdb_path = bucket_export
    paths = [p for (p,) in query(duckdb_path, "SELECT path FROM dicom_metadata ORDER BY path")]
    assert sorted(paths) == sorted(uri for key, uri in uris.items() if key != NOT_DICOM)
    assert all(p.startswith(f"{store.scheme}://{store.bucket}/export/in/") for p in paths)
    sizes = dict(query(duckdb_path, "SELECT path, file_size FROM dicom_metadata"))
    corpus = _corpus_bytes()
    assert sizes == {uris[key]: len(corpus[key]) for key in CORPUS}


def test_bucket_export_rejects(bucket_export):
    _, uris, _, _, duckdb_path = bucket_export
    rejects = {(uri, stage): error_type for uri, stage, error_type, _ in query(duckdb_path, "SELECT * FROM rejects")}
    assert rejects == {
        (uris[NOT_DICOM], "parse"): "NotDicomError",
        (uris["a/b/MR_small_RLE.dcm"], "duplicate"): "DuplicateInstance",  # MR_small's path sorts first
    }


def test_bucket_export_pngs_are_in_the_bucket(bucket_export):
    store, _, _, _, duckdb_path = bucket_export
    headers = _headers()
    keys = [k for k in store.keys("export/out/png/") if not k.startswith("export/out/png/_medbeam/")]
    assert len(keys) == EXPECTED_PNGS
    assert "export/out/png/_medbeam/outputs/_manifest.json" in store.keys("export/out/png/_medbeam/")
    expected = set()
    for study, series, sop in query(
        duckdb_path, "SELECT DISTINCT StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID FROM dicom_metadata"
    ):
        ds = headers[sop]
        if "Rows" not in ds:  # no image (the header was read without its pixels)
            continue
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        base = f"export/out/png/{study}/{series}/{sop}"
        names = [f"{base}.png"] if frames == 1 else [f"{base}/{i:04d}.png" for i in range(1, frames + 1)]
        expected.update(names)
        for key in names:
            image = _decode_png(store.get(key))
            assert image.shape[:2] == (ds.Rows, ds.Columns), key
            assert image.dtype == np.uint8
            assert image.ndim == (3 if ds.SamplesPerPixel == 3 else 2), key
    assert set(keys) == expected
    # and Beam sees the same objects
    with filesystem_options(store.beam_args):
        matched = FileSystems.match([store.uri("export", "out", "png", "**.png")])[0].metadata_list
    assert sorted(m.path for m in matched) == [store.uri(k) for k in keys]


def test_bucket_export_parquet_shards_are_in_the_bucket(bucket_export):
    store, _, config, _, _ = bucket_export
    keys = store.keys("export/out/tables/")
    for table, rows in (("dicom_metadata", DICOM_FILES), ("rejects", 2)):
        shards = [k for k in keys if k.startswith(f"export/out/tables/{table}/") and k.endswith(".parquet")]
        assert shards == [f"export/out/tables/{table}/{table}-00000-of-00001.parquet"]
        manifest = json.loads(store.get(f"export/out/tables/{table}/_manifest.json"))
        assert manifest["rows"] == rows
        assert manifest["files"] == [store.uri(s) for s in shards]
        assert pq.read_table(io.BytesIO(store.get(shards[0]))).num_rows == rows
        assert f"export/out/tables/{table}.bigquery-schema.json" in keys
    assert config.parquet_dir == store.uri("export", "out", "tables")


@pytest.mark.parametrize("bucket_export", ["gs"], indirect=True)  # one store: each S3 run costs ~10 s
def test_bucket_export_rerun_overwrites(bucket_export, tmp_path):
    """A second run over the same bucket replaces its outputs rather than adding to them."""
    store, _, config, first, _ = bucket_export
    before = {k: store.get(k) for k in store.keys("export/out/")}
    rerun = ExportConfig(
        inputs=config.inputs,
        png_dir=config.png_dir,
        parquet_dir=config.parquet_dir,
        duckdb_path=str(tmp_path / "again.duckdb"),
        progress=False,
    )
    assert run(rerun, beam_args=list(store.beam_args)) == first
    assert {k: store.get(k) for k in store.keys("export/out/")} == before


# ---------------------------------------------------------------------------------------------------
# Inputs in one place, outputs in others


def test_s3_input_local_pngs_gcs_tables(s3_emulator: BucketEmulator, gcs_emulator: BucketEmulator, tmp_path):
    """DICOM from s3://, PNGs to a local directory, Parquet to gs://, DuckDB locally: one run, three filesystems."""
    uris = _upload_corpus(s3_emulator, "mixed/in")
    config = ExportConfig(
        inputs=[s3_emulator.uri("mixed", "in") + "/"],  # a "directory" URI: everything under it
        png_dir=str(tmp_path / "png"),
        parquet_dir=gcs_emulator.uri("mixed", "tables"),
        duckdb_path=str(tmp_path / "m.duckdb"),
        progress=False,
    )
    counts = run(config, beam_args=[*s3_emulator.beam_args, *gcs_emulator.beam_args])
    assert (counts.files_in, counts.instances, counts.rejected_files) == (DICOM_FILES + 1, DICOM_FILES, 1), (
        query(tmp_path / "m.duckdb", "SELECT * FROM rejects ORDER BY uri")
    )
    assert counts.pngs == EXPECTED_PNGS

    headers = _headers()
    pngs = sorted((tmp_path / "png").rglob("*.png"))
    assert len(pngs) == EXPECTED_PNGS
    for png in pngs:
        relative = png.relative_to(tmp_path / "png").parts
        ds = headers[relative[2].removesuffix(".png")]
        assert relative[:2] == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
        assert _decode_png(png.read_bytes()).shape[:2] == (ds.Rows, ds.Columns)

    assert gcs_emulator.keys("mixed/tables/dicom_metadata/") == [
        "mixed/tables/dicom_metadata/_manifest.json",
        "mixed/tables/dicom_metadata/dicom_metadata-00000-of-00001.parquet",
    ]
    paths = sorted(p for (p,) in query(tmp_path / "m.duckdb", "SELECT path FROM dicom_metadata"))
    assert paths == sorted(uri for key, uri in uris.items() if key != NOT_DICOM)
    assert query(tmp_path / "m.duckdb", "SELECT uri, stage FROM rejects ORDER BY stage") == [
        (uris["a/b/MR_small_RLE.dcm"], "duplicate"),
        (uris[NOT_DICOM], "parse"),
    ]


def test_gs_without_credentials_fails_fast_saying_how_to_authenticate(tmp_path, monkeypatch):
    import time

    from medbeam.io import files
    from tests.helpers import free_port

    closed = f"127.0.0.1:{free_port()}"
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))  # no gcloud login either
    monkeypatch.setenv("GCE_METADATA_HOST", closed)  # not on Google Cloud: the metadata server is not there
    monkeypatch.setenv("GCE_METADATA_IP", closed)
    start = time.monotonic()
    with pytest.raises(files.CredentialsError, match="gcloud auth application-default login") as error:
        files.check_inputs_exist(["gs://bucket/raw/**"])
    assert "STORAGE_EMULATOR_HOST" in str(error.value)
    assert time.monotonic() - start < 30
    with pytest.raises(files.CredentialsError):
        files.check_writable_dir("gs://bucket/out", "--png-dir")


def test_s3_options_of_reads_what_beams_get_all_options_keeps():
    """The S3Options a pipeline passes to its Storage: the non-default ones, as get_all_options(drop_default)."""
    from apache_beam.options.pipeline_options import PipelineOptions, S3Options

    from medbeam.io.files import s3_options_of

    for flags in (
        [],
        ["--s3_endpoint_url=http://127.0.0.1:9000", "--s3_region_name=eu-west-1", "--s3_disable_ssl"],
        ["--s3_access_key_id=key", "--s3_secret_access_key=secret", "--runner=FnApiRunner", "--s3_verify=false"],
    ):
        options = PipelineOptions(flags)
        beams = options.view_as(S3Options).get_all_options(drop_default=True)
        assert s3_options_of(options) == {k: v for k, v in beams.items() if k.startswith("s3_")}
    set_later = PipelineOptions([])
    set_later.view_as(S3Options).s3_endpoint_url = "http://127.0.0.1:9001"
    assert s3_options_of(set_later) == {"s3_endpoint_url": "http://127.0.0.1:9001"}
