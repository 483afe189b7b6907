"""Real DICOMweb servers for the tests: private Orthanc instances on loopback, and a flaky proxy.

Each server gets its own temp dir (config, storage, log), a free port, no DICOM listener, remote access
off, the DICOMweb plugin, and runs as `/usr/sbin/Orthanc CONFIG`, stopped by PID. Orthanc 1.10 has no
bind-address setting and listens on every interface, so it starts with a tiny LD_PRELOAD shim (compiled
here with gcc) that rewrites bind() on AF_INET/AF_INET6 to the loopback address; `listening_addresses()`
checks the result from /proc. `scripts/ensure-orthanc.sh` installs the Debian packages; without them
(or without gcc) the DICOMweb tests are skipped with a message saying so; with CI=true they fail.

tests/conftest.py loads the fixtures as a plugin (one server of each kind per session, shared by every
module); test modules import the helper classes they use.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers import free_port

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
DICOMWEB_ROOT = "/dicom-web"
TEST_USER = "medbeam"

LOOPBACK_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

/* bind() on any IPv4/IPv6 address becomes bind() on loopback: the server is unreachable from outside. */
typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real_bind;
    if (!real_bind) real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in copy;
        memcpy(&copy, addr, sizeof copy);
        copy.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return real_bind(fd, (const struct sockaddr *)&copy, sizeof copy);
    }
    if (addr && addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 copy;
        memcpy(&copy, addr, sizeof copy);
        copy.sin6_addr = in6addr_loopback;
        return real_bind(fd, (const struct sockaddr *)&copy, sizeof copy);
    }
    return real_bind(fd, addr, len);
}
"""


def missing_prerequisite() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if not (os.access(ORTHANC, os.X_OK) and os.path.exists(DICOMWEB_PLUGIN)):
        return f"Orthanc with its DICOMweb plugin is not installed ({ORTHANC}); run scripts/ensure-orthanc.sh"
    if shutil.which("gcc") is None:
        return "gcc is needed to build the loopback-only bind() shim for Orthanc"
    return None


def build_loopback_shim(directory: Path) -> Path:
    source = directory / "loopback_bind.c"
    library = directory / "loopback_bind.so"
    source.write_text(LOOPBACK_SHIM)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
        check=True,
        capture_output=True,
    )
    return library


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket of process `pid`, from /proc (what `ss -ltnp` shows)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            address_hex, port_hex = local.split(":")
            raw = bytes.fromhex(address_hex[:width])
            if width == 8:
                address = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:  # four little-endian 32-bit words
                address = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
            found.append((address, int(port_hex, 16)))
    return found


class OrthancServer:
    """One private Orthanc: `start()`, `stop()`, REST helpers, and `dicomweb_url` for the code under test."""

    def __init__(self, workdir: Path, shim: Path, users: dict[str, str] | None = None):
        self.workdir = workdir
        self.shim = shim
        self.users = users or {}
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return self.url + DICOMWEB_ROOT

    @property
    def auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items())) if self.users else None

    def _config(self) -> dict:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        return {
            "Name": "medbeam-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "HttpsVerifyPeers": False,
            "SaveJobs": False,
            "StorageCompression": False,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT + "/"},
        }

    def start(self, timeout: float = 30.0) -> OrthancServer:
        last_error = ""
        for _ in range(3):  # a port taken between free_port() and Orthanc's bind(): try another
            self.port = free_port()
            config = self.workdir / "orthanc.json"
            config.write_text(json.dumps(self._config(), indent=2))
            env = {**os.environ, "LD_PRELOAD": str(self.shim)}
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if requests.get(self.url + "/system", auth=self.auth, timeout=1).ok:
                        return self
                except requests.RequestException:
                    pass
                time.sleep(0.05)
            last_error = self.log_path.read_text(errors="replace")[-2000:]
            self.stop()
        raise RuntimeError(f"Orthanc did not start; end of its log:\n{last_error}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def rest(self, method: str, path: str, **kwargs) -> requests.Response:
        response = requests.request(method, self.url + path, auth=self.auth, timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def statistics(self) -> dict:
        return self.rest("GET", "/statistics").json()

    def instance_count(self) -> int:
        return int(self.statistics()["CountInstances"])

    def clear(self) -> None:
        """Delete everything stored."""
        for patient in self.rest("GET", "/patients").json():
            self.rest("DELETE", f"/patients/{patient}")
        assert self.instance_count() == 0

    def listening(self) -> list[tuple[str, int]]:
        assert self.process is not None
        return listening_addresses(self.process.pid)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class FlakyProxy:
    """An HTTP proxy on 127.0.0.1 in front of `upstream` that answers 503 to the first `failures` requests
    whose method is in `methods`, and forwards everything else unchanged."""

    def __init__(self, upstream: str, failures: int, methods: tuple[str, ...] = ("POST",)):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")
        self.remaining = failures
        self.methods = methods
        self.failed = 0
        self.forwarded = 0
        #: (method, body size) of every forwarded request
        self.sent: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.prefix}"

    def _should_fail(self, method: str, size: int) -> bool:
        with self._lock:
            if method in self.methods and self.remaining > 0:
                self.remaining -= 1
                self.failed += 1
                return True
            self.forwarded += 1
            self.sent.append((method, size))
            return False

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                if proxy._should_fail(self.command, len(body)):
                    message = b"Service Unavailable (medbeam test proxy)"
                    self.send_response(503)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(message)))
                    self.end_headers()
                    self.wfile.write(message)
                    return
                skip = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                connection = HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
                try:
                    connection.request(self.command, self.path, body=body or None, headers=headers)
                    answer = connection.getresponse()
                    payload = answer.read()
                finally:
                    connection.close()
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in skip:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        return Handler

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def loopback_shim(tmp_path_factory) -> Path:
    reason = missing_prerequisite()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: `make test` runs scripts/ensure-orthanc.sh to install it)", pytrace=False)
        pytest.skip(reason)
    return build_loopback_shim(tmp_path_factory.mktemp("shim"))


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory, loopback_shim) -> Iterator[OrthancServer]:
    """An Orthanc without authentication; tests that need an empty store call `orthanc.clear()`."""
    with OrthancServer(tmp_path_factory.mktemp("orthanc"), loopback_shim) as server:
        yield server


@pytest.fixture(scope="session")
def orthanc_auth(tmp_path_factory, loopback_shim) -> Iterator[OrthancServer]:
    """An Orthanc with HTTP basic auth and one registered user, TEST_USER, with a random password."""
    users = {TEST_USER: "pw-" + secrets.token_urlsafe(18)}
    with OrthancServer(tmp_path_factory.mktemp("orthanc-auth"), loopback_shim, users=users) as server:
        yield server


class CannedServer:
    """A loopback HTTP server that records each request (method, path, lower-cased headers, body) and answers every
    one with the same canned (status, headers, body): for checking what a client sends and how it reads
    answers no real server gives on demand."""

    def __init__(self, status: int = 200, body: bytes = b"[]", headers: dict[str, str] | None = None):
        self.status, self.body = status, body
        self.headers = headers or {"Content-Type": "application/dicom+json"}
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(server.status)
                for key, value in server.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            do_GET = do_POST = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/dicom-web"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
