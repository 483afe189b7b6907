"""The import job against a real Orthanc: counts reconcile, reruns store nothing twice, retries, a server
that is down, auth, the CLI, and the way back (enumerate + retrieve give every instance, pixel for pixel).

The tests share one Orthanc (session fixture); those that need an empty store clear it, so the tests that
read what `imported` stored come first in this file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import duckdb
import pydicom
import pytest
import typer
from typer.testing import CliRunner

from medbeam.cli import dicom as dicom_cli
from medbeam.dicom import part10 as p10
from medbeam.io import dicomweb as dw
from medbeam.io import stow
from medbeam.pipelines import dicom_import as di
from medbeam.transforms import dicom_import as import_fns
from medbeam.transforms.progress import ProgressTicker
from tests.helpers import copy_dicom, data_store, write_unusable_files
from tests.orthanc import CannedServer, FlakyProxy

# orthanc, orthanc_auth (one of each per session) and closed_port come from tests/conftest.py
FAST = dw.RetryPolicy(attempts=4, backoff_s=0.02, max_backoff_s=0.2)
TEST_FILE_NAMES = [
    "CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "JPEG-lossy.dcm", "rtplan.dcm", "rtdose.dcm",
    "rtstruct.dcm", "waveform_ecg.dcm", "image_dfl.dcm", "ExplVR_BigEnd.dcm", "test-SR.dcm", "reportsi.dcm",
    "liver_1frame.dcm", "examples_palette.dcm", "examples_ybr_color.dcm", "examples_overlay.dcm",
    "SC_rgb_small_odd.dcm", "GDCMJ2K_TextGBR.dcm",
]  # fmt: skip
DATA_STORE_NAMES = [
    "emri_small.dcm", "SC_rgb.dcm", "US1_J2KR.dcm", "RG1_UNCI.dcm", "693_J2KR.dcm", "MR2_J2KI.dcm",
    "eCT_Supplemental.dcm", "JPEG-LL.dcm", "gdcm-US-ALOKA-16.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "OT-PAL-8-face.dcm",
]  # fmt: skip
#: 34 files: 30 distinct instances (three of them bare datasets, without preamble or file meta), a second
#: copy of MR_small (RLE-compressed), and 3 files that are not sendable DICOM.
FILES_IN, INSTANCES, COPIES, NOT_SENDABLE = 34, 30, 1, 3
BARE = {"bare_dataset", "OT-PAL-8-face.dcm", "rtstruct.dcm"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("import-corpus")
    copy_dicom({f"pydicom/{name}": name for name in TEST_FILE_NAMES}, root)
    copy_dicom({f"data_store/{name}": name for name in DATA_STORE_NAMES}, root)
    copy_dicom({"pydicom/deeper/MR_small_RLE": "MR_small_RLE.dcm"}, root)  # same SOP UID as MR_small
    copy_dicom({"pydicom/deeper/bare_dataset": "ExplVR_LitEndNoMeta.dcm"}, root)
    write_unusable_files(root)  # notes.txt, fake.dcm, truncated.dcm
    assert sum(1 for p in root.rglob("*") if p.is_file()) == FILES_IN
    return root


def _sources(corpus: Path) -> dict[str, Path]:
    """SOP Instance UID → the source file the import should have sent (MR_small, not its RLE copy)."""
    found: dict[str, Path] = {}
    for path in sorted(corpus.rglob("*")):
        if path.is_file() and path.name not in ("notes.txt", "fake.dcm", "truncated.dcm", "MR_small_RLE"):
            found[pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID] = path
    return found


def _config(corpus: Path, url: str, out: Path, **kwargs) -> di.ImportConfig:
    settings = kwargs.pop("settings", None) or dw.DicomwebSettings.from_options(url, retry=FAST)
    return di.ImportConfig(
        inputs=[str(corpus)],
        dicomweb=settings,
        parquet_dir=str(out / "tables"),
        duckdb_path=str(out / "import.duckdb"),
        progress=False,
        **kwargs,
    )


def _query(out: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(out / "import.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


def _without_group_lengths(ds: pydicom.Dataset) -> dict:
    return {element.tag: element.value for element in ds if element.tag.element != 0}


def _all_text(out: Path, duckdb_file: bool = True) -> str:
    """Every value of both tables, as text (Parquet and DuckDB compress: grepping their bytes proves nothing)."""
    if duckdb_file:
        rows = _query(out, "SELECT * FROM rejects") + _query(out, "SELECT * FROM dicom_import")
    else:
        from medbeam.io import tables

        rows = [
            tuple(row.values())
            for name in ("rejects", "dicom_import")
            for row in tables.read_table(str(out), name).to_pylist()
        ]
    return "\n".join(str(value) for row in rows for value in row)


def _inspect(path: Path) -> p10.FileRef:
    with open(path, "rb") as fp:
        return p10.inspect_file(fp, str(path), path.stat().st_size)


def _assert_reconciles(counts: di.ImportCounts) -> None:
    assert counts.files_in == counts.stored + counts.already_present + counts.duplicates + counts.rejected_files


@pytest.fixture(scope="module")
def imported(corpus, orthanc, tmp_path_factory):
    """The corpus imported into an empty store, then imported again."""
    orthanc.clear()
    out = tmp_path_factory.mktemp("import-out")
    first = di.run(_config(corpus, orthanc.dicomweb_url, out / "first"), [])
    after_first = orthanc.instance_count()
    second = di.run(_config(corpus, orthanc.dicomweb_url, out / "second"), [])
    return out, first, second, after_first


# ---------------------------------------------------------------------------------------------------
# Pure logic


def test_plan_batches_bounds_count_and_bytes():
    refs = [p10.FileRef(f"/f{i}", size, "1", "2", f"3.{i}", True, False) for i, size in enumerate([5, 5, 5, 20, 5, 5])]
    batches = list(stow.plan_batches(refs, max_instances=2, max_bytes=12))
    assert [[r.path for r in b] for b in batches] == [["/f0", "/f1"], ["/f2"], ["/f3"], ["/f4", "/f5"]]
    assert [len(b) for b in stow.plan_batches(refs, 10, 10**9)] == [6]
    assert stow.batch_groups(0, 50) == 1 and stow.batch_groups(1001, 50) == 6


def test_choose_copy_prefers_lossless_then_part10_then_path():
    def ref(path, part10=True, lossy=False):
        return p10.FileRef(path, 1, "1", "2", "3", part10, lossy)

    chosen, others = p10.choose_copy([ref("/a", lossy=True), ref("/c"), ref("/b", part10=False)])
    assert chosen.path == "/c" and {o.path for o in others} == {"/a", "/b"}


def test_inspect_rejects_truncated_and_wraps_bare_datasets(corpus):
    with pytest.raises(p10.IncompleteFileError, match="truncated"):
        _inspect(corpus / "truncated.dcm")
    bare = corpus / "pydicom" / "deeper" / "bare_dataset"
    ref = _inspect(bare)
    assert not ref.part10
    wrapped = p10.part10_bytes(bare.read_bytes())
    assert wrapped[128:132] == b"DICM"
    ds = pydicom.dcmread(io.BytesIO(wrapped))
    assert ds.SOPInstanceUID == ref.sop
    assert _without_group_lengths(ds) == _without_group_lengths(pydicom.dcmread(bare, force=True))


def test_send_batch_reads_duplicate_and_failure_reasons(corpus):
    """A store that answers 409/202 with FailedSOPSequence (as Azure does for duplicates) instead of 200."""
    paths = [corpus / "pydicom" / "CT_small.dcm", corpus / "pydicom" / "rtplan.dcm"]
    refs = [_inspect(p) for p in paths]
    answer = {
        "00081198": {
            "vr": "SQ",
            "Value": [
                {"00081155": {"vr": "UI", "Value": [refs[0].sop]}, "00081197": {"vr": "US", "Value": [45070]}},
                {"00081155": {"vr": "UI", "Value": [refs[1].sop]}, "00081197": {"vr": "US", "Value": [0xC000]}},
            ],
        }
    }
    with CannedServer(status=409, body=json.dumps(answer).encode()) as server:
        client = dw.DicomwebSettings.from_options(server.url, retry=FAST).make_client()
        report = stow.send_batch(client, refs, check_existing=False)
    present, refused = report.outcomes
    assert present.outcome == stow.ALREADY_PRESENT and "0xB00E" in present.detail
    assert refused.rejected and refused.stage == "store" and not refused.server_failure
    assert (
        refused.reject_row()["message"]
        == "HTTP 409: the server refused the instance: FailureReason 0xC000 (cannot understand)"
    )
    assert report.stow_requests == 1


def test_send_batch_halves_a_batch_the_server_refuses_as_a_whole(corpus):
    paths = sorted((corpus / "pydicom").glob("*.dcm"))[:4]
    refs = [_inspect(p) for p in paths]
    with CannedServer(
        status=400, body=b'{"Message": "bad request"}', headers={"Content-Type": "application/json"}
    ) as server:
        client = dw.DicomwebSettings.from_options(server.url, retry=FAST).make_client()
        report = stow.send_batch(client, refs, check_existing=False)
    assert report.stow_requests == 1 + 2 + 4  # 4 → 2 + 2 → 1 + 1 + 1 + 1
    assert all(o.rejected and o.error_type == "HTTP 400" and "bad request" in o.detail for o in report.outcomes)


def test_a_worker_stops_retrying_a_server_that_stays_down(monkeypatch):
    """After BREAKER_AFTER batches in a row failed because of the server, batches get one try each,
    until one gets through."""
    fn = import_fns.StowBatchFn(
        dw.DicomwebSettings.from_options("http://127.0.0.1:9/dw", retry=FAST), True, ProgressTicker(None)
    )
    fn.setup()
    used, down = [], [True]
    ref = p10.FileRef("/x", 1, "1", "2", "3", True, False, ("/copy",))

    def fake_send(client, batch, check_existing):
        used.append("fail-fast" if client is fn._fail_fast_client else "retrying")  # noqa: SLF001
        if down[0]:
            error = dw.DicomwebError(None, "ConnectionError: Connection refused")
            return stow.BatchReport([stow._rejected(r, "store", error) for r in batch])  # noqa: SLF001
        return stow.BatchReport([stow.Outcome(r, stow.STORED) for r in batch])

    monkeypatch.setattr(import_fns, "send_batch", fake_send)  # StowBatchFn calls it from there
    outputs = [list(fn.process([ref])) for _ in range(import_fns.BREAKER_AFTER + 2)]
    down[0] = False
    outputs += [list(fn.process([ref])) for _ in range(2)]
    assert used == ["retrying"] * import_fns.BREAKER_AFTER + ["fail-fast"] * 3 + ["retrying"]
    first = outputs[0]  # the file and its copy, both rejected
    assert [o.tag for o in first] == [import_fns.REJECTS, import_fns.REJECTS]
    assert first[1].value["uri"] == "/copy" and first[1].value["message"].startswith("a copy of /x, which was not sent")
    assert [row["outcome"] for row in outputs[-1]] == [stow.STORED, stow.DUPLICATE_IN_INPUT]
    fn.teardown()


# ---------------------------------------------------------------------------------------------------
# Import into Orthanc, and back (these read what `imported` stored: keep them before the tests that clear)


def test_import_counts_reconcile(imported):
    _, first, _, after_first = imported
    assert first.files_in == FILES_IN
    assert first.stored == INSTANCES and first.already_present == 0
    assert first.duplicates == COPIES and first.rejected_files == NOT_SENDABLE and first.server_failures == 0
    _assert_reconciles(first)
    assert after_first == INSTANCES
    assert first.summary().startswith(f"{FILES_IN} in, {INSTANCES} stored, {COPIES} already present, 3 rejected")
    assert not first.failed


def test_reimport_finds_everything_already_present(imported, orthanc):
    *_, second, _ = imported
    assert second.files_in == FILES_IN and second.stored == 0
    assert second.already_present == INSTANCES and second.duplicates == COPIES
    assert second.rejected_files == NOT_SENDABLE
    assert second.stow_requests == 0 and second.bytes_sent == 0
    _assert_reconciles(second)
    assert orthanc.instance_count() == INSTANCES  # nothing stored twice
    assert second.summary().startswith(f"{FILES_IN} in, 0 stored, {INSTANCES + COPIES} already present, 3 rejected")


def test_tables_say_what_happened_to_every_file(imported, corpus):
    out, *_ = imported
    rows = _query(out / "first", "SELECT uri, outcome, detail FROM dicom_import")
    rejects = {Path(u).name: (stage, etype) for u, stage, etype, _ in _query(out / "first", "SELECT * FROM rejects")}
    assert len(rows) + len(rejects) == FILES_IN
    assert sorted(o for _, o, _ in rows).count(stow.STORED) == INSTANCES
    duplicate = [(Path(u).name, d) for u, o, d in rows if o == stow.DUPLICATE_IN_INPUT]
    assert duplicate == [
        ("MR_small_RLE", f"same SOP instance as {corpus / 'pydicom' / 'MR_small.dcm'}, which is the copy sent")
    ]
    assert rejects == {
        "notes.txt": ("parse", "NotDicomError"),
        "fake.dcm": ("parse", "NotDicomError"),
        "truncated.dcm": ("parse", "IncompleteFileError"),
    }
    again = _query(out / "second", "SELECT outcome, count(*) FROM dicom_import GROUP BY 1 ORDER BY 1")
    assert again == [(stow.ALREADY_PRESENT, INSTANCES), (stow.DUPLICATE_IN_INPUT, COPIES)]


def test_enumerate_and_retrieve_give_back_every_instance(imported, orthanc, corpus):
    sources = _sources(corpus)
    client = dw.DicomwebSettings.from_options(orthanc.dicomweb_url, retry=FAST).make_client()
    refs = list(dw.enumerate_instances(client, page_size=7))
    assert len(refs) == INSTANCES and {r.sop for r in refs} == set(sources)
    for ref in refs:
        data = dw.retrieve_instance_bytes(client, *ref)
        got = pydicom.dcmread(io.BytesIO(data))
        source_path = sources[ref.sop]
        source = pydicom.dcmread(source_path, force=True)
        assert (got.StudyInstanceUID, got.SeriesInstanceUID, got.SOPInstanceUID) == tuple(ref)
        assert got.SOPInstanceUID == source.SOPInstanceUID
        if "PixelData" in source:
            assert got.PixelData == source.PixelData
        assert (source_path.read_bytes()[128:132] != b"DICM") == (source_path.name in BARE)
        if source_path.name in BARE:  # wrapped as Part 10: preamble + file meta; retired group lengths dropped
            assert data[128:132] == b"DICM"
            assert _without_group_lengths(got) == _without_group_lengths(source)
        else:  # Part 10 files come back byte for byte
            assert data == source_path.read_bytes()


def test_reimport_without_the_check_duplicates_nothing(imported, orthanc, corpus, tmp_path):
    """Without the QIDO-RS check, Orthanc answers a duplicate STOW-RS with success: counted as stored,
    but the store still holds each instance once."""
    counts = di.run(_config(corpus, orthanc.dicomweb_url, tmp_path, check_existing=False), [])
    assert counts.stored == INSTANCES and counts.already_present == 0
    _assert_reconciles(counts)
    assert orthanc.instance_count() == INSTANCES


# ---------------------------------------------------------------------------------------------------
# Retries, a server that is down (these clear the store)


def test_503s_are_retried_and_everything_ends_stored(orthanc, corpus, tmp_path):
    orthanc.clear()
    with FlakyProxy(orthanc.dicomweb_url, failures=3) as proxy:
        config = _config(corpus, proxy.url, tmp_path, max_batch_instances=4, max_batch_bytes=2_000_000)
        counts = di.run(config, ["--direct_running_mode=multi_threading", "--direct_num_workers=2"])
    assert proxy.failed == 3
    assert counts.stored == INSTANCES and counts.rejected_files == NOT_SENDABLE and counts.server_failures == 0
    _assert_reconciles(counts)
    assert orthanc.instance_count() == INSTANCES
    posts = [size for method, size in proxy.sent if method == "POST"]
    assert counts.stow_requests == len(posts) >= INSTANCES // 4
    # Batches hold at most 2 MB (+ multipart framing); only the one file over the bound, RG1_UNCI (7 MB),
    # goes over it, in a request of its own.
    big = (data_store() / "RG1_UNCI.dcm").stat().st_size
    over = [size for size in posts if size > 2_000_000 + 4096]
    assert len(over) == 1 and big < over[0] < big + 4096, (big, sorted(posts))


def _cli():
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """medbeam (test)"""

    app.add_typer(dicom_cli.app, name="dicom")
    return app


def _invoke(args: list[str], env: dict[str, str] | None = None):
    result = CliRunner().invoke(_cli(), ["dicom", "import", *args, "--no-progress"], env=env)
    return result, result.stdout + result.stderr


def test_cli_with_the_server_down_rejects_every_file_and_fails(corpus, closed_port, tmp_path):
    url = f"http://127.0.0.1:{closed_port}/dicom-web"
    args = ["-i", str(corpus), "--dicomweb", url, "--duckdb", str(tmp_path / "i.duckdb"), "--retries", "2"]
    result, output = _invoke([*args, "--retry-backoff", "0.01"])
    assert result.exit_code == 1, output
    assert f"{FILES_IN} in, 0 stored, 0 already present, {FILES_IN} rejected" in output
    assert f"{INSTANCES + COPIES} rejected because of the server, not the data" in output
    with duckdb.connect(str(tmp_path / "i.duckdb"), read_only=True) as con:
        stages = con.execute("SELECT stage, error_type, count(*) FROM rejects GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
        message = con.execute("SELECT message FROM rejects WHERE stage = 'store' LIMIT 1").fetchone()[0]
    assert stages == [
        ("parse", "IncompleteFileError", 1),
        ("parse", "NotDicomError", 2),
        ("store", "ConnectionError", INSTANCES + COPIES),
    ]
    assert "no answer from the server" in message and "refused" in message.lower()


def test_cli_stops_at_once_when_the_url_is_not_a_dicomweb_endpoint(orthanc, corpus, tmp_path):
    result, output = _invoke(
        ["-i", str(corpus), "--dicomweb", orthanc.url + "/no-such-root", "--parquet-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "HTTP 404 (GET /no-such-root/studies)" in output
    assert not (tmp_path / "rejects").exists()  # stopped before the pipeline


def test_cli_auth_right_wrong_and_missing_credentials(orthanc_auth, corpus, tmp_path):
    user, password = orthanc_auth.auth
    base = ["-i", str(corpus), "--dicomweb", orthanc_auth.dicomweb_url, "--user", user, "--password-env", "MB_PW"]

    result, output = _invoke([*base, "--parquet-dir", str(tmp_path / "wrong")], env={"MB_PW": "not-" + password})
    assert result.exit_code == 1
    assert "HTTP 401" in output and "refused the credentials" in output and "--password-env" in output

    result, output = _invoke([*base, "--parquet-dir", str(tmp_path / "unset")], env={"MB_PW": ""})
    assert result.exit_code == 2 and "MB_PW" in output

    out = tmp_path / "right"
    args = [*base, "--parquet-dir", str(out), "--batch-instances", "8", "--direct_num_workers=1"]  # a Beam flag
    result, output = _invoke(args, env={"MB_PW": password})
    assert result.exit_code == 0, output
    assert f"{FILES_IN} in, {INSTANCES} stored, {COPIES} already present, {NOT_SENDABLE} rejected" in output
    assert orthanc_auth.instance_count() == INSTANCES

    assert password not in output and password not in _all_text(out, duckdb_file=False)


def test_refused_credentials_mid_run_reject_every_file_without_the_secret(orthanc_auth, corpus, tmp_path, monkeypatch):
    user, password = orthanc_auth.auth
    wrong = "wrong-" + password
    monkeypatch.setenv("MB_PW", wrong)
    settings = dw.DicomwebSettings.from_options(orthanc_auth.dicomweb_url, user=user, password_env="MB_PW", retry=FAST)
    counts = di.run(_config(corpus, "", tmp_path, settings=settings, preflight=False), [])
    assert counts.stored == 0 and counts.server_failures == INSTANCES + COPIES and counts.failed
    _assert_reconciles(counts)
    messages = [m for (m,) in _query(tmp_path, "SELECT message FROM rejects WHERE stage = 'store'")]
    assert len(messages) == INSTANCES + COPIES
    assert all("HTTP 401" in m and "refused the credentials" in m for m in messages)
    assert not any(secret in _all_text(tmp_path) for secret in (wrong, password))
