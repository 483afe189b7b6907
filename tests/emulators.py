"""Real, local object stores for tests: moto's S3 server and gcp-storage-emulator, as session fixtures.

Nothing is mocked: each emulator is a separate server process listening on 127.0.0.1 (a free port),
and the code under test reaches it over HTTP through the ordinary clients (boto3 behind Beam's S3
filesystem, google-cloud-storage behind Beam's GCS filesystem).

tests/conftest.py loads it as a plugin for every test module; the fixtures yield a
:class:`BucketEmulator` with one empty bucket and the Beam pipeline arguments that reach it.

* ``s3_emulator``: ``python -m moto.server``. Beam's S3 filesystem takes its endpoint and keys from
  pipeline options (``S3Options``), so ``beam_args`` carries them. Direct ``FileSystems`` calls in the
  test process only see them after ``FileSystems.set_options(PipelineOptions(beam_args))``; see
  :func:`filesystem_options`. No AWS endpoint or key is put in the environment, so a pipeline that
  fails to hand its options to its workers fails here too instead of working by accident.
* ``gcs_emulator``: ``python -m gcp_storage_emulator start --in-memory``. google-cloud-storage honours
  ``STORAGE_EMULATOR_HOST``, which is read whenever a client is made, so it is set for the session.
  Beam asks google-auth for Application Default Credentials before it makes a client and, when there
  are none, retries with exponential backoff for ~25 s before connecting anonymously. Pointing
  ``GOOGLE_APPLICATION_CREDENTIALS`` at an ``authorized_user`` file whose access token is already
  present and not expired makes that lookup succeed at once, offline: a valid token is never
  refreshed, and the emulator ignores the Authorization header. The metadata-server variables make
  any GCE probe that still happens fail at once on a closed loopback port instead of waiting.

The environment a fixture sets stays set until the session ends (then it is restored); worker
processes a pipeline starts inherit it. Run with 2 cores, each Beam S3 call makes a new boto3 client
(~0.1 s of CPU), so S3 runs are several times slower than GCS ones: keep S3 pipeline runs few.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port

BUCKET = "medbeam-test"
#: A loopback port nothing listens on (port 1 is privileged): connections are refused at once.
CLOSED_LOOPBACK = "127.0.0.1:1"
S3_KEY_ID = "testing"
S3_SECRET = "testing"
S3_REGION = "us-east-1"
GCP_PROJECT = "medbeam-test"
_START_TIMEOUT_S = 30.0
_LOOPBACK = "127.0.0.1,localhost"

# ---------------------------------------------------------------------------------------------------
# What the tests get


@dataclass(frozen=True)
class BucketEmulator:
    """One running emulator with one bucket; `uri()` builds object URIs in that bucket."""

    scheme: str  # "gs" or "s3"
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    beam_args: tuple[str, ...]  # pipeline arguments the Beam filesystem needs to reach the emulator

    def uri(self, *parts: str) -> str:
        return "/".join([f"{self.scheme}://{self.bucket}", *(p.strip("/") for p in parts if p)])

    # The store's own client, not Beam's: to seed inputs and check outputs independently of the code
    # under test.

    def put(self, key: str, data: bytes) -> str:
        if self.scheme == "s3":
            self._s3().put_object(Bucket=self.bucket, Key=key, Body=data)
        else:
            self._gcs().bucket(self.bucket).blob(key).upload_from_string(data)
        return self.uri(key)

    def get(self, key: str) -> bytes:
        if self.scheme == "s3":
            return self._s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return self._gcs().bucket(self.bucket).blob(key).download_as_bytes()

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under `prefix`, sorted."""
        if self.scheme == "s3":
            pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return sorted(o["Key"] for page in pages for o in page.get("Contents", []))
        return sorted(b.name for b in self._gcs().list_blobs(self.bucket, prefix=prefix))

    def _s3(self):
        return _s3_client(self.endpoint)

    def _gcs(self):
        return _gcs_client(self.endpoint)


# One client per emulator (making a boto3 client costs ~0.1 s of CPU: it parses the S3 service model).


@functools.lru_cache(maxsize=None)
def _s3_client(endpoint: str):
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
        region_name=S3_REGION,
    )


@functools.lru_cache(maxsize=None)
def _gcs_client(endpoint: str):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project=GCP_PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


@contextlib.contextmanager
def filesystem_options(beam_args: list[str] | tuple[str, ...]) -> Iterator[None]:
    """Direct FileSystems calls in this process see `beam_args` (S3 endpoint, keys); restored after.

    FileSystems keeps its options in one class attribute for the whole process (a pipeline's run()
    may set it too), so the previous value comes back on exit instead of leaking into other tests.
    """
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    previous = FileSystems._pipeline_options  # noqa: SLF001 - no public getter; restored as found
    FileSystems.set_options(PipelineOptions(list(beam_args)))
    try:
        yield
    finally:
        FileSystems.set_options(previous)


# ---------------------------------------------------------------------------------------------------
# Server processes


# Loopback only, and never through a proxy the environment may name.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(url: str) -> bool:
    try:
        with _opener.open(url, timeout=1) as response:
            response.read()
        return True
    except urllib.error.HTTPError:
        return True  # it answered, which is all readiness means
    except OSError:
        return False


class ServerProcess:
    """A server subprocess on a free loopback port: started, waited for, stopped, its log kept."""

    def __init__(self, name: str, argv: Callable[[int], list[str]], probe_path: str, log_dir: Path):
        self.name = name
        self._argv = argv
        self._probe_path = probe_path
        self.log_path = log_dir / f"{name}.log"
        self._proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, attempts: int = 3) -> ServerProcess:
        for _ in range(attempts):  # another process may take the free port before the server binds it
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    self._argv(self.port),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_server_env(),
                )
            deadline = time.monotonic() + _START_TIMEOUT_S
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _answers(self.endpoint + self._probe_path):
                    return self
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"{self.name} did not start on 127.0.0.1; its log:\n{self.log_tail()}")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        env.pop(name, None)
    return env


def _no_proxy_for_loopback(mp: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        current = os.environ.get(name, "")
        mp.setenv(name, f"{current},{_LOOPBACK}" if current else _LOOPBACK)


# ---------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def s3_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BucketEmulator]:
    """moto's S3 server with an empty bucket; `beam_args` holds the S3Options that reach it."""
    log_dir = tmp_path_factory.mktemp("s3-emulator")
    server = ServerProcess(
        "moto",
        lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        "/moto-api/",
        log_dir,
    ).start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            _no_proxy_for_loopback(mp)
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # botocore never probes an instance role
            # Only the pipeline options may say where S3 is and which keys to use: no profile, config
            # file, endpoint or key from the developer's environment.
            mp.setenv("AWS_CONFIG_FILE", str(log_dir / "no-aws-config"))
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(log_dir / "no-aws-credentials"))
            for name in (
                "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
                "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3",
            ):
                mp.delenv(name, raising=False)
            emulator = BucketEmulator(
                scheme="s3",
                endpoint=server.endpoint,
                bucket=BUCKET,
                beam_args=(
                    f"--s3_endpoint_url={server.endpoint}",
                    f"--s3_access_key_id={S3_KEY_ID}",
                    f"--s3_secret_access_key={S3_SECRET}",
                    f"--s3_region_name={S3_REGION}",
                ),
            )
            emulator._s3().create_bucket(Bucket=BUCKET)  # noqa: SLF001 - its own client
            yield emulator
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BucketEmulator]:
    """gcp-storage-emulator (in memory) with an empty bucket; the environment points GCS clients at it."""
    log_dir = tmp_path_factory.mktemp("gcs-emulator")
    server = ServerProcess(
        "gcp-storage-emulator",
        lambda port: [
            sys.executable, "-m", "gcp_storage_emulator", "start",
            "--host=127.0.0.1", f"--port={port}", "--in-memory", "--quiet",
        ],
        "/storage/v1/b",
        log_dir,
    ).start()
    credentials = log_dir / "application_default_credentials.json"
    credentials.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "medbeam-test",
                "client_secret": "medbeam-test",
                "refresh_token": "medbeam-test",
                "token": "medbeam-test-token",
                "expiry": "2999-01-01T00:00:00Z",
            }
        )
    )
    try:
        with pytest.MonkeyPatch.context() as mp:
            _no_proxy_for_loopback(mp)
            mp.setenv("STORAGE_EMULATOR_HOST", server.endpoint)
            mp.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
            mp.setenv("GOOGLE_CLOUD_PROJECT", GCP_PROJECT)
            mp.setenv("NO_GCE_CHECK", "true")
            mp.setenv("GCE_METADATA_HOST", CLOSED_LOOPBACK)
            mp.setenv("GCE_METADATA_IP", CLOSED_LOOPBACK)
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
            emulator = BucketEmulator(scheme="gs", endpoint=server.endpoint, bucket=BUCKET, beam_args=())
            emulator._gcs().create_bucket(BUCKET)  # noqa: SLF001 - its own client
            yield emulator
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------------
# Fixtures the gs:// and s3:// tests of every job share

#: scheme → the session fixture of its emulator
SCHEMES = {"gs": "gcs_emulator", "s3": "s3_emulator"}


@pytest.fixture
def restore_filesystem_options() -> Iterator[None]:
    """run() and beam.Pipeline() set FileSystems' process-wide options: leave them as found.
    Modules use it for every test: `pytestmark = pytest.mark.usefixtures("restore_filesystem_options")`."""
    from apache_beam.io.filesystems import FileSystems

    previous = FileSystems._pipeline_options  # noqa: SLF001
    yield
    FileSystems.set_options(previous)


@pytest.fixture(params=sorted(SCHEMES))
def store(request: pytest.FixtureRequest) -> BucketEmulator:
    """Each test that takes it runs once against gs:// and once against s3://."""
    return request.getfixturevalue(SCHEMES[request.param])
