"""A real BigQuery API for the tests: the local-bigquery emulator (REST + Storage APIs, GoogleSQL on DuckDB).

The emulator needs Python >= 3.13 and lives in its own virtual environment, made by
`scripts/ensure-bigquery-emulator.sh` (.bq-emulator/ in the repository, or $MEDBEAM_BQ_EMULATOR_DIR); its
pytest plugin stays out of the project's environment. Each server is a separate process,
`local-bigquery serve` on 127.0.0.1 (free REST and gRPC ports), with its own temp data dir and a temp $HOME
whose ~/.duckdb/extensions links to the extension files the script gathered, so DuckDB never tries to
download them. It is stopped by PID. Without the emulator the tests that use it are skipped, saying how
to install it; with CI=true they fail.

tests/conftest.py loads this module as a plugin: `bigquery_emulator` is one server per session; a test
that fails while using it gets the end of the emulator's log in its report.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest
import requests

from tests.helpers import free_port

REPO = Path(__file__).resolve().parent.parent
EMULATOR_DIR = Path(os.environ.get("MEDBEAM_BQ_EMULATOR_DIR") or REPO / ".bq-emulator")
EXECUTABLE = EMULATOR_DIR / "venv" / "bin" / "local-bigquery"
EXTENSIONS = EMULATOR_DIR / "duckdb-extensions"
SETUP = "scripts/ensure-bigquery-emulator.sh"
PROJECT = "medbeam-test"
#: Environment variables the emulator reads as settings (pydantic-settings, any case) or that would reach
#: into its Python: never inherited from the test process, so a session's other fixtures (gcs_emulator
#: sets STORAGE_EMULATOR_HOST) do not change it behind a test's back.
_NOT_INHERITED = {
    "bigquery_port", "bigquery_host", "grpc_port", "data_dir", "default_project_id", "default_dataset_id",
    "caller", "groups", "postgres_connection_id", "gcs_local_root", "storage_emulator_host", "postgres_uri",
    "pythonpath", "pythonhome", "virtual_env", "pythonstartup",
}  # fmt: skip


def missing_prerequisite() -> str | None:
    """Why the emulator cannot run here, or None."""
    if not (os.access(EXECUTABLE, os.X_OK) and any(EXTENSIONS.rglob("*.duckdb_extension"))):
        return f"the BigQuery emulator is not installed ({EXECUTABLE}); run {SETUP}"
    return None


def link_extensions(home: Path) -> None:
    """$HOME/.duckdb/extensions/v…/PLATFORM/NAME.duckdb_extension → the files the setup script gathered."""
    for source in EXTENSIONS.rglob("*.duckdb_extension"):
        target = home / ".duckdb" / "extensions" / source.relative_to(EXTENSIONS)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)


class BigQueryEmulator:
    """One emulator process: `start()`, `stop()`, `endpoint` and `project` for the code under test, and
    `client()` for a BigQuery client that reaches it."""

    def __init__(self, workdir: Path, project: str = PROJECT, storage_emulator_host: str | None = None):
        self.workdir = workdir
        self.project = project
        #: host:port of a GCS emulator for gs:// load jobs (the emulator's STORAGE_EMULATOR_HOST), or None
        self.storage_emulator_host = storage_emulator_host
        self.port: int | None = None
        self.grpc_port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "local-bigquery.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_address(self) -> str:
        """The BigQuery Storage API (gRPC)."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def client(self):
        """A google.cloud.bigquery.Client for `project` on this emulator, with anonymous credentials."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=self.project, credentials=AnonymousCredentials(), client_options={"api_endpoint": self.endpoint}
        )

    def _environment(self, home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k.lower() not in _NOT_INHERITED}
        env["HOME"] = str(home)
        if self.storage_emulator_host:
            env["STORAGE_EMULATOR_HOST"] = self.storage_emulator_host
        return env

    def _answers(self) -> bool:
        try:
            return requests.get(f"{self.endpoint}/bigquery/v2/projects/{self.project}/datasets", timeout=1).ok
        except requests.RequestException:
            return False

    def start(self, timeout: float = 60.0) -> BigQueryEmulator:
        home = self.workdir / "home"
        if not home.exists():
            link_extensions(home)
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        for _ in range(3):  # a port taken between free_port() and the emulator's bind(): try others
            self.port, self.grpc_port = free_port(), free_port()
            command = [str(EXECUTABLE), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
            command += ["--grpc-port", str(self.grpc_port), "--project", self.project, "--data-dir", str(data)]
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=self._environment(home), cwd=self.workdir, start_new_session=True,
                )  # fmt: skip
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                if self._answers():
                    return self
                time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"the BigQuery emulator did not start; end of its log ({self.log_path}):\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.process = None

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory) -> Iterator[BigQueryEmulator]:
    """The session's BigQuery emulator, empty at first; tests make their own datasets (unique names)."""
    reason = missing_prerequisite()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: `make test` runs {SETUP} to install it)", pytrace=False)
        pytest.skip(reason)
    with BigQueryEmulator(tmp_path_factory.mktemp("bigquery")) as server:
        yield server
        crashed = server.process is not None and server.process.poll() is not None
    if crashed:
        pytest.fail(f"the BigQuery emulator exited during the session; end of its log:\n{server.log_tail()}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used the emulator gets the end of the emulator's log as a report section."""
    report = yield
    server = getattr(item, "funcargs", {}).get("bigquery_emulator")
    if report.failed and isinstance(server, BigQueryEmulator):
        report.sections.append(("BigQuery emulator log (end)", server.log_tail()))
    return report
