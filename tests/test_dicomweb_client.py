"""medbeam.io.dicomweb: URLs, settings, credentials (never shown), retries, STOW/QIDO/WADO against Orthanc."""

from __future__ import annotations

import base64
import email
import io
import json
import logging
import pickle
import time

import pydicom
import pytest

from medbeam.io import dicomweb as dw
from tests.helpers import TEST_FILES
from tests.orthanc import CannedServer, FlakyProxy

# orthanc, orthanc_auth (one of each per session) and closed_port come from tests/conftest.py
FAST = dw.RetryPolicy(attempts=4, backoff_s=0.02, max_backoff_s=0.1)
SAMPLES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "image_dfl.dcm"]


def _settings(url: str, **kwargs) -> dw.DicomwebSettings:
    return dw.DicomwebSettings.from_options(url, retry=kwargs.pop("retry", FAST), **kwargs)


def _uids(name: str) -> dw.InstanceRef:
    ds = pydicom.dcmread(TEST_FILES / name, stop_before_pixels=True)
    return dw.InstanceRef(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


@pytest.fixture
def stored_samples(orthanc):
    orthanc.clear()
    client = _settings(orthanc.dicomweb_url).make_client()
    result = dw.store_instances_bytes(client, [(TEST_FILES / n).read_bytes() for n in SAMPLES])
    assert result.status == 200 and len(result.stored) == len(SAMPLES) and not result.failed
    return client


# ---------------------------------------------------------------------------------------------------
# URLs and settings


def test_expand_url_and_cloud_healthcare_shorthand():
    store = "projects/p1/locations/us-central1/datasets/d1/dicomStores/s1"
    expected = f"https://healthcare.googleapis.com/v1/{store}/dicomWeb"
    assert dw.expand_dicomweb_url(store) == (expected, True)
    assert dw.expand_dicomweb_url(f"/{store}/dicomWeb/") == (expected, True)
    assert dw.expand_dicomweb_url(expected + "/") == (expected, True)
    assert dw.expand_dicomweb_url("http://localhost:8042/dicom-web/") == ("http://localhost:8042/dicom-web", False)
    with pytest.raises(ValueError, match="not a DICOMweb URL"):
        dw.expand_dicomweb_url("ftp://host/x")
    with pytest.raises(ValueError, match="query string"):
        dw.expand_dicomweb_url("https://host/dicom-web?access_token=abc")


def test_url_with_credentials_is_refused_without_echoing_them():
    with pytest.raises(ValueError) as info:
        dw.expand_dicomweb_url("https://alice:s3cr3t-pw@host/dicom-web")
    assert "s3cr3t-pw" not in str(info.value) and "--password-env" in str(info.value)


def test_auth_mode_is_inferred_and_bad_combinations_refused():
    assert _settings("http://h/dw").auth == dw.AUTH_NONE
    assert _settings("http://h/dw", user="u", password_env="P").auth == dw.AUTH_BASIC
    assert _settings("http://h/dw", token_file="/t").auth == dw.AUTH_BEARER
    assert _settings("https://h/dw", google_auth=True).auth == dw.AUTH_GOOGLE
    assert _settings("projects/p/locations/l/datasets/d/dicomStores/s").auth == dw.AUTH_GOOGLE
    with pytest.raises(ValueError, match="--user"):
        _settings("http://h/dw", user="u")
    with pytest.raises(ValueError, match="--user"):
        _settings("http://h/dw", password_env="P")
    with pytest.raises(ValueError):
        _settings("http://h/dw", user="u", password_env="P", token_env="T")
    with pytest.raises(ValueError, match="https"):
        _settings("http://h/dw", google_auth=True)
    with pytest.raises(ValueError):
        dw.RetryPolicy(attempts=0)


def test_settings_pickle_and_hold_no_secret(monkeypatch, tmp_path):
    monkeypatch.setenv("MB_TEST_PASSWORD", "hunter2-very-secret")
    settings = _settings("http://h/dw", user="alice", password_env="MB_TEST_PASSWORD")
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert "hunter2" not in repr(settings) and "hunter2" not in pickle.dumps(settings).decode("latin-1")
    client = settings.make_client()
    for text in (repr(client), repr(client.session.auth), settings.describe()):
        assert "hunter2" not in text
    assert "MB_TEST_PASSWORD" in repr(client.session.auth)


def test_missing_secret_names_its_source_only(monkeypatch, tmp_path):
    monkeypatch.delenv("MB_TEST_UNSET", raising=False)
    with pytest.raises(dw.DicomwebConfigError, match="MB_TEST_UNSET"):
        _settings("http://h/dw", token_env="MB_TEST_UNSET").check()
    with pytest.raises(dw.DicomwebConfigError, match="cannot read the token"):
        _settings("http://h/dw", token_file=str(tmp_path / "nope")).check()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(dw.DicomwebConfigError, match="empty"):
        _settings("http://h/dw", token_file=str(tmp_path / "empty")).check()


# ---------------------------------------------------------------------------------------------------
# Credentials on the wire, and never anywhere else


def test_bearer_token_from_a_file_is_re_read_when_rotated(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    with CannedServer() as server:
        client = _settings(server.url, token_file=str(token_file)).make_client()
        dw.check_connection(client)
        token_file.write_text("second-token")
        dw.check_connection(client)
    assert [r[2]["authorization"] for r in server.requests] == ["Bearer first-token", "Bearer second-token"]


def test_google_auth_uses_application_default_credentials(monkeypatch):
    import google.auth
    from google.auth.transport.requests import AuthorizedSession
    from google.oauth2.credentials import Credentials

    calls = []

    def fake_default(scopes=None, **kwargs):
        calls.append(scopes)
        return Credentials(token="fake-google-token"), "some-project"

    monkeypatch.setattr(google.auth, "default", fake_default)
    client = _settings("projects/p/locations/l/datasets/d/dicomStores/s").make_client()
    assert isinstance(client.session, AuthorizedSession)
    assert calls == [list(dw.GOOGLE_SCOPES)]
    assert client.base_url.startswith("https://healthcare.googleapis.com/v1/projects/p/")
    with CannedServer() as server:  # the session itself, pointed at a local server
        client.session.get(server.url + "/studies", timeout=5)
    assert server.requests[0][2]["authorization"] == "Bearer fake-google-token"


def test_basic_auth_right_and_wrong_password(orthanc_auth, monkeypatch, caplog):
    user, password = orthanc_auth.auth
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MB_TEST_PASSWORD", password)
    good = _settings(orthanc_auth.dicomweb_url, user=user, password_env="MB_TEST_PASSWORD").make_client()
    dw.check_connection(good)
    list(dw.enumerate_instances(good))  # QIDO-RS works with the right password

    monkeypatch.setenv("MB_TEST_PASSWORD", "wrong-" + password)
    bad = _settings(orthanc_auth.dicomweb_url, user=user, password_env="MB_TEST_PASSWORD").make_client()
    with pytest.raises(dw.DicomwebError) as info:
        dw.check_connection(bad)
    error = info.value
    assert error.status == 401 and error.auth_refused and error.unreachable
    assert "refused the credentials" in str(error)
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    for text in (str(error), repr(error), caplog.text):
        assert password not in text and encoded not in text


def test_server_error_text_is_redacted(monkeypatch):
    monkeypatch.setenv("MB_TEST_TOKEN", "tok-echoed-back-by-server")
    body = json.dumps({"Message": "bad token tok-echoed-back-by-server"}).encode()
    with CannedServer(status=400, body=body, headers={"Content-Type": "application/json"}) as server:
        client = _settings(server.url, token_env="MB_TEST_TOKEN").make_client()
        with pytest.raises(dw.DicomwebError) as info:
            dw.check_connection(client)
    assert info.value.status == 400
    assert "tok-echoed" not in str(info.value) and "bad token ***" in str(info.value)


# ---------------------------------------------------------------------------------------------------
# Retries


def test_qido_and_wado_retry_through_503s(orthanc, stored_samples):
    with FlakyProxy(orthanc.dicomweb_url, failures=3, methods=("GET",)) as proxy:
        client = _settings(proxy.url).make_client()
        refs = list(dw.enumerate_instances(client))
        assert proxy.failed == 3
        proxy.remaining = 2
        data = dw.retrieve_instance_bytes(client, *refs[0])
    assert proxy.failed == 5
    assert {r.sop for r in refs} == {_uids(n).sop for n in SAMPLES}
    assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == refs[0].sop


def test_stow_retries_then_stores(orthanc):
    orthanc.clear()
    with FlakyProxy(orthanc.dicomweb_url, failures=2) as proxy:
        client = _settings(proxy.url).make_client()
        result = dw.store_instances_bytes(client, [(TEST_FILES / "CT_small.dcm").read_bytes()])
    assert proxy.failed == 2 and result.status == 200
    assert list(result.stored) == [_uids("CT_small.dcm").sop]
    assert orthanc.instance_count() == 1


def test_retries_are_bounded_and_the_last_answer_is_reported(orthanc):
    with FlakyProxy(orthanc.dicomweb_url, failures=100, methods=("GET",)) as proxy:
        client = _settings(proxy.url, retry=dw.RetryPolicy(attempts=3, backoff_s=0.01)).make_client()
        with pytest.raises(dw.DicomwebError) as info:
            dw.check_connection(client)
    assert proxy.failed == 3
    assert info.value.status == 503 and info.value.unreachable
    assert "medbeam test proxy" in str(info.value)


def test_connection_errors_back_off_exponentially(closed_port):
    policy = dw.RetryPolicy(attempts=4, backoff_s=0.1, max_backoff_s=1.0)
    client = _settings(f"http://127.0.0.1:{closed_port}/dicom-web", retry=policy).make_client()
    start = time.monotonic()
    with pytest.raises(dw.DicomwebError) as info:
        dw.check_connection(client)
    elapsed = time.monotonic() - start
    assert info.value.status is None and info.value.unreachable
    assert "refused" in str(info.value).lower()
    assert 0.1 + 0.2 + 0.4 <= elapsed < 3.0  # waits of 0.1, 0.2, 0.4 s (+ ≤10 % jitter)


# ---------------------------------------------------------------------------------------------------
# QIDO-RS, WADO-RS, STOW-RS


def test_enumerate_pages_and_filters(stored_samples):
    client = stored_samples
    everything = list(dw.enumerate_instances(client))
    assert sorted(everything) == sorted(dw.enumerate_instances(client, page_size=1))
    assert {r.sop for r in everything} == {_uids(n).sop for n in SAMPLES}
    assert len(everything) == len(SAMPLES)
    ct = _uids("CT_small.dcm")
    assert list(dw.enumerate_instances(client, studies=[ct.study, "1.2.3.4.5"])) == [ct]
    assert list(dw.enumerate_instances(client, series=[ct.series])) == [ct]
    assert list(dw.enumerate_instances(client, studies=[ct.study], series=["9.9.9"])) == []
    with pytest.raises(ValueError):
        next(dw.enumerate_instances(client, page_size=0))


def test_retrieve_gives_the_stored_file_byte_for_byte(stored_samples):
    for name in SAMPLES:
        ref = _uids(name)
        assert dw.retrieve_instance_bytes(stored_samples, *ref) == (TEST_FILES / name).read_bytes()
    with pytest.raises(dw.DicomwebError) as info:
        dw.retrieve_instance_bytes(stored_samples, "1.2.3", "4.5.6", "7.8.9")
    assert info.value.status == 404 and not info.value.unreachable


def test_find_existing_instances(stored_samples):
    wanted = [_uids(n).sop for n in SAMPLES]
    assert dw.find_existing_instances(stored_samples, [*wanted, "1.2.3.999"]) == set(wanted)
    assert dw.find_existing_instances(stored_samples, []) == set()


def test_stow_answer_with_duplicates_and_failures_is_read_per_instance():
    answer = {
        "00081198": {
            "vr": "SQ",
            "Value": [
                {"00081155": {"vr": "UI", "Value": ["1.2.3"]}, "00081197": {"vr": "US", "Value": [45070]}},
                {"00081155": {"vr": "UI", "Value": ["1.2.4"]}, "00081197": {"vr": "US", "Value": [0xA900]}},
            ],
        },
        "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.5"]}}]},
    }
    with CannedServer(status=202, body=json.dumps(answer).encode()) as server:
        result = dw.store_instances_bytes(_settings(server.url).make_client(), [b"x", b"y", b"z"])
    assert result.status == 202
    assert result.stored == {"1.2.5": None}
    assert result.failed == {"1.2.3": 45070, "1.2.4": 0xA900}
    assert dw.failure_reason_text(0xA900) == "FailureReason 0xA900 (data set does not match SOP class)"
    method, path, headers, body = server.requests[0]
    assert (method, path) == ("POST", "/dicom-web/studies")
    assert headers["content-type"].startswith('multipart/related; type="application/dicom"; boundary=')
    message = email.message_from_bytes(b"Content-Type: " + headers["content-type"].encode() + b"\r\n\r\n" + body)
    assert [part.get_payload(decode=True) for part in message.get_payload()] == [b"x", b"y", b"z"]


def test_retrieve_reads_multipart_with_content_lengths_and_single_part_answers():
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    with_length = (
        b"--B\r\nContent-Type: application/dicom\r\nContent-Length: %d\r\n\r\n%s\r\n--B--\r\n" % (len(data), data)
    )
    answers = [
        (with_length, 'multipart/related; type="application/dicom"; boundary="B"'),
        (data, "application/dicom"),
    ]
    for body, content_type in answers:
        with CannedServer(body=body, headers={"Content-Type": content_type}) as server:
            client = _settings(server.url).make_client()
            assert dw.retrieve_instance_bytes(client, *_uids("CT_small.dcm")) == data
        assert server.requests[0][2]["accept-encoding"] == "identity"
    with CannedServer(body=b"<html>not DICOM</html>", headers={"Content-Type": "text/html"}) as server:
        with pytest.raises(dw.DicomwebError, match="not a DICOM file"):
            dw.retrieve_instance_bytes(_settings(server.url).make_client(), "1.2", "3.4", "5.6")


# ---------------------------------------------------------------------------------------------------
# A store that is not there: one clear line, the same from check_connection and enumerate_instances


def _one_line_errors(client) -> tuple[dw.DicomwebError, dw.DicomwebError, dw.DicomwebError]:
    errors = []
    for call in (
        lambda: dw.check_connection(client),
        lambda: list(dw.enumerate_instances(client)),
        lambda: list(dw.enumerate_instances(client, studies=["1.2.3"])),
    ):
        with pytest.raises(dw.DicomwebError) as info:
            call()
        errors.append(info.value)
    texts = {str(e) for e in errors}
    assert len(texts) == 1, texts  # the message `dicom import` prints, word for word
    text = texts.pop()
    assert "\n" not in text and "Traceback" not in text and len(text) < 300
    return tuple(errors)


def test_wrong_base_path_is_an_error_not_an_empty_store(orthanc, stored_samples):
    client = _settings(orthanc.url + "/no-such-root").make_client()
    error, *_ = _one_line_errors(client)
    assert error.status == 404 and not error.unreachable
    assert str(error).startswith("HTTP 404 (GET /no-such-root/studies)")


def test_nothing_listening_is_an_error(closed_port):
    client = _settings(f"http://127.0.0.1:{closed_port}/dicom-web", retry=dw.RetryPolicy(attempts=1)).make_client()
    error, *_ = _one_line_errors(client)
    assert error.status is None and error.unreachable
    assert str(error) == "no answer from the server (GET /dicom-web/studies): ConnectionError: Connection refused"
