"""DICOMweb client side, without Beam, on dicomweb-client: store URLs, credentials, retries, STOW/QIDO/WADO-RS.

A picklable, secret-free :class:`DicomwebSettings` (URL, auth mode, the *names* of the environment
variables or files holding secrets, timeouts, retry policy) travels to the workers; each calls
:meth:`DicomwebSettings.make_client` once, in ``DoFn.setup()``, and gets a ``DICOMwebClient`` whose
session authenticates (basic auth or a bearer token read at request time, so rotated token files are
picked up, or Google application-default credentials via ``dicomweb_client.ext.gcp``) and retries
408/429/5xx answers and connection errors with bounded exponential backoff (urllib3's Retry; the
library's own retry loop is off so that the two do not multiply), for every request.

Secrets never show in a settings object, a repr, a log line, an exception or a reject: every server
message goes through :meth:`DicomwebClient.redact` before it is raised as a :class:`DicomwebError`.
QIDO-RS (:func:`enumerate_instances`, :func:`find_existing_instances`, :func:`check_connection`) is
the library's ``search_for_*``; WADO-RS and STOW-RS of Part 10 bytes (:func:`retrieve_instance_bytes`,
:func:`store_instances_bytes`) send their own request, because the library's would change the bytes,
through the same session and with the library's multipart codec.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import takewhile
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import requests
from dicomweb_client import DICOMwebClient, session_utils
from dicomweb_client.ext.gcp import GoogleCloudHealthcareURL
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase, HTTPBasicAuth
from urllib3.util.retry import Retry

from medbeam.dicom.reader import has_dicm_prefix, looks_like_bare_dataset

#: What dicomweb_client.ext.gcp asks application-default credentials for.
GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
#: QIDO-RS page size: small enough for every server's cap on `limit` we know of, large enough to be cheap.
DEFAULT_PAGE_SIZE = 1000
#: UID list matching: how many UIDs one QIDO-RS query carries (keeps URLs well under 8 KB).
UIDS_PER_QUERY = 50

AUTH_NONE, AUTH_BASIC, AUTH_BEARER, AUTH_GOOGLE = "none", "basic", "bearer", "google"
AUTH_MODES = (AUTH_NONE, AUTH_BASIC, AUTH_BEARER, AUTH_GOOGLE)
_GOOGLE_HOST = "healthcare.googleapis.com"

# DICOM JSON tags of the STOW-RS response (PS3.18 Table 10.5.3-1) and of QIDO-RS rows.
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"

#: Failure reasons that mean "this SOP instance is already stored": 0x0111 is DICOM's Duplicate SOP
#: Instance; 45070 (0xB00E) is what Azure's DICOM service answers for an instance it already has.
DUPLICATE_FAILURE_REASONS = frozenset({0x0111, 45070})
FAILURE_REASON_NAMES = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
    0xA770: "instance too large",
    45070: "instance already exists",
}

_PART10_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_SINGLE_PART_ACCEPT = "application/dicom; transfer-syntax=*"
#: DICOM files are large and compress poorly: asking for gzip made Orthanc's WADO-RS 8x slower (measured).
_NO_COMPRESSION = {"Accept-Encoding": "identity"}
_JSON_ACCEPT = "application/dicom+json, application/json"


# ---------------------------------------------------------------------------------------------------
# URLs


def expand_dicomweb_url(value: str) -> tuple[str, bool]:
    """(DICOMweb base URL, whether Google auth is implied) for a URL or a Cloud Healthcare store name.

    ``projects/P/locations/L/datasets/D/dicomStores/S`` becomes
    ``https://healthcare.googleapis.com/v1/projects/P/locations/L/datasets/D/dicomStores/S/dicomWeb``
    (dicomweb-client's GoogleCloudHealthcareURL); any URL on healthcare.googleapis.com implies Google auth
    too. URLs carrying credentials or a query string are refused (without echoing them): secrets belong in
    environment variables or files.
    """
    text = value.strip()
    names = text.strip("/").removesuffix("/dicomWeb").split("/")
    healthcare_path = ["projects", "locations", "datasets", "dicomStores"]
    if names[0] == "projects" and len(names) == 8 and names[::2] == healthcare_path:
        return str(GoogleCloudHealthcareURL(*names[1::2])), True
    parts = urlsplit(text)
    if "@" in parts.netloc:
        raise ValueError(
            "the DICOMweb URL must not carry credentials: give --user with --password-env/--password-file, "
            "or --token-env/--token-file"
        )
    if parts.query or parts.fragment:
        raise ValueError("the DICOMweb URL must not carry a query string; put tokens in --token-env/--token-file")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"not a DICOMweb URL: {text[:200]!r}; give http(s)://host[:port]/path or "
            "projects/P/locations/L/datasets/D/dicomStores/S"
        )
    return text.rstrip("/"), parts.hostname == _GOOGLE_HOST


def instance_url(base_url: str, study: str, series: str, sop: str) -> str:
    """The WADO-RS URL of one instance: a stable name for it in rows and rejects."""
    return f"{base_url.rstrip('/')}/studies/{_q(study)}/series/{_q(series)}/instances/{_q(sop)}"


def _q(uid: str) -> str:
    return quote(uid, safe="")


# ---------------------------------------------------------------------------------------------------
# Settings (picklable, secret-free) → client


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff: waits of backoff_s, 2×, 4×… (capped), plus up to 10 % jitter.

    `attempts` counts every try of one request (1 = never retry). Retried: connection errors, read
    timeouts and the statuses below (a server's ``Retry-After`` is honoured, up to max_backoff_s).
    STOW-RS is retried too: storing the same instance again is harmless.
    """

    attempts: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    statuses: tuple[int, ...] = (408, 429, 500, 502, 503, 504)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("retry attempts must be at least 1")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("retry backoff must not be negative")


class _Backoff(Retry):
    """urllib3's Retry, but the first retry waits too (urllib3 retries the first time at once), ±10 % jitter."""

    def get_backoff_time(self) -> float:
        errors = len(list(takewhile(lambda entry: entry.redirect_location is None, reversed(self.history))))
        if errors == 0:
            return 0.0
        wait = self.backoff_factor * (2 ** (errors - 1)) * (1 + 0.1 * random.random())
        return float(max(0.0, min(self.backoff_max, wait)))


def _retry(policy: RetryPolicy) -> Retry:
    retries = policy.attempts - 1
    return _Backoff(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        redirect=5,
        allowed_methods=None,  # every method, POST included
        status_forcelist=policy.statuses,
        backoff_factor=policy.backoff_s,
        backoff_max=policy.max_backoff_s,
        raise_on_status=False,  # the last answer comes back, so its status and reason can be reported
        respect_retry_after_header=True,
        retry_after_max=max(1, int(policy.max_backoff_s)),
    )


class DicomwebConfigError(ValueError):
    """The settings cannot work: a secret's environment variable is unset, its file unreadable, …"""


class _Secret:
    """Where a secret lives (an environment variable or a file), read when needed and never kept."""

    def __init__(self, what: str, env: str | None = None, file: str | None = None):
        if (env is None) == (file is None):
            raise ValueError(f"the {what} comes from exactly one environment variable or file")
        self.what, self.env, self.file = what, env, file

    def resolve(self) -> str:
        if self.env is not None:
            value = os.environ.get(self.env, "").strip()
            if not value:
                raise DicomwebConfigError(f"environment variable {self.env} (the {self.what}) is not set or empty")
            return value
        try:
            with open(os.path.expanduser(self.file), encoding="utf-8") as fp:
                value = fp.read().strip()
        except OSError as exc:
            raise DicomwebConfigError(f"cannot read the {self.what} from {self.file}: {exc.strerror}") from None
        if not value:
            raise DicomwebConfigError(f"the {self.what} file {self.file} is empty")
        return value

    def __repr__(self) -> str:
        where = f"${self.env}" if self.env is not None else self.file
        return f"<{self.what} from {where}>"


class _Auth(AuthBase):
    """HTTP basic auth (with a user) or a bearer token, the secret read from its source on every request
    (a rotated token file is picked up); requests' own auth classes would keep the secret."""

    def __init__(self, secret: _Secret, user: str | None = None):
        self.secret, self.user = secret, user

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.user is not None:
            return HTTPBasicAuth(self.user, self.secret.resolve())(request)
        request.headers["Authorization"] = f"Bearer {self.secret.resolve()}"
        return request

    def __repr__(self) -> str:
        if self.user is not None:
            return f"<basic auth as {self.user!r}, password {self.secret!r}>"
        return f"<bearer token {self.secret!r}>"


@dataclass(frozen=True)
class DicomwebSettings:
    """How to reach one DICOMweb store; picklable, and free of secrets (only where they are).

    auth: ``none``; ``basic`` (user + password_env or password_file); ``bearer`` (token_env or token_file);
    ``google`` (application-default credentials: ``gcloud auth application-default login`` locally, the
    service account on Dataflow). On remote runners the environment variables and files must exist on
    the workers too (Google auth needs nothing there).
    """

    url: str
    auth: str = AUTH_NONE
    user: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    token_env: str | None = None
    token_file: str | None = None
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: TLS: a CA bundle path for servers with a private CA; None = the system's.
    ca_bundle: str | None = None

    def __post_init__(self) -> None:
        if self.auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {self.auth!r}")
        password_sources = [s for s in (self.password_env, self.password_file) if s]
        token_sources = [s for s in (self.token_env, self.token_file) if s]
        if self.auth == AUTH_BASIC:
            if not self.user or len(password_sources) != 1:
                raise ValueError("basic auth needs --user and one of --password-env / --password-file")
        elif self.user or password_sources:
            raise ValueError("--user and --password-env/--password-file go together, without a token or Google auth")
        if self.auth == AUTH_BEARER and len(token_sources) != 1:
            raise ValueError("token auth needs one of --token-env / --token-file")
        if self.auth != AUTH_BEARER and token_sources:
            raise ValueError("--token-env/--token-file cannot be combined with basic or Google auth")
        if self.auth == AUTH_GOOGLE and not self.url.startswith("https://"):
            raise ValueError("Google auth sends tokens: the DICOMweb URL must be https://")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("timeouts must be positive")

    @classmethod
    def from_options(
        cls,
        url: str,
        *,
        user: str | None = None,
        password_env: str | None = None,
        password_file: str | None = None,
        token_env: str | None = None,
        token_file: str | None = None,
        google_auth: bool = False,
        **kwargs: Any,
    ) -> DicomwebSettings:
        """Settings from command-line style options: expands the URL and infers the auth mode."""
        base_url, google_implied = expand_dicomweb_url(url)
        if user or password_env or password_file:
            auth = AUTH_BASIC
        elif token_env or token_file:
            auth = AUTH_BEARER
        elif google_auth or google_implied:
            auth = AUTH_GOOGLE
        else:
            auth = AUTH_NONE
        if google_auth and auth != AUTH_GOOGLE:
            raise ValueError("--google-auth cannot be combined with --user/--password-* or --token-*")
        return cls(
            url=base_url,
            auth=auth,
            user=user,
            password_env=password_env,
            password_file=password_file,
            token_env=token_env,
            token_file=token_file,
            **kwargs,
        )

    def _secrets(self) -> list[_Secret]:
        if self.auth == AUTH_BASIC:
            return [_Secret("password", self.password_env, self.password_file)]
        if self.auth == AUTH_BEARER:
            return [_Secret("token", self.token_env, self.token_file)]
        return []

    def check(self) -> None:
        """Raise DicomwebConfigError now if a secret cannot be read (the message names only its source)."""
        for secret in self._secrets():
            secret.resolve()

    def describe(self) -> str:
        """One line for humans: URL and how it authenticates (no secrets)."""
        how = {
            AUTH_NONE: "no auth",
            AUTH_BASIC: f"basic auth as {self.user!r}",
            AUTH_BEARER: "bearer token",
            AUTH_GOOGLE: "Google application-default credentials",
        }[self.auth]
        return f"{self.url} ({how})"

    def make_client(self) -> DicomwebClient:
        """A DICOMwebClient with an authenticated, retrying requests session. Call once per worker."""
        secrets = self._secrets()
        if self.auth == AUTH_GOOGLE:
            session = _google_session()
        elif secrets:
            session = session_utils.create_session_from_auth(_Auth(secrets[0], self.user))
        else:
            session = session_utils.create_session()
        for prefix in ("http://", "https://"):
            session.mount(prefix, HTTPAdapter(max_retries=_retry(self.retry), pool_maxsize=16))
        if self.ca_bundle:
            try:
                session_utils.add_certs_to_session(session, ca_bundle=self.ca_bundle)
            except OSError as exc:
                raise DicomwebConfigError(str(exc)) from None
        return DicomwebClient(self, session)


def _google_session() -> requests.Session:
    try:
        from dicomweb_client.ext.gcp import session_utils as gcp
        from google.auth.exceptions import DefaultCredentialsError
    except ImportError as exc:  # pragma: no cover - google-auth comes with apache-beam[gcp]
        raise DicomwebConfigError("Google auth needs the google-auth package: pip install 'medbeam[gcp]'") from exc
    try:
        return gcp.create_session_from_gcp_credentials()  # application-default credentials, GOOGLE_SCOPES
    except DefaultCredentialsError as exc:
        raise DicomwebConfigError(
            "no Google application-default credentials: run `gcloud auth application-default login` "
            "or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file"
        ) from exc


class DicomwebClient(DICOMwebClient):
    """dicomweb-client's DICOMwebClient, made by DicomwebSettings.make_client().

    Retries are done once, by the session's transport (for every request): the library's own retry loop
    is switched off so that the two do not multiply. Non-conformant UIDs (found in real stores) are
    accepted. Each answer's Warning header is noted, so that QIDO-RS paging sees truncated pages.
    """

    def __init__(self, settings: DicomwebSettings, session: requests.Session):
        self._last = threading.local()
        timeout = (settings.connect_timeout_s, settings.read_timeout_s)
        super().__init__(
            settings.url, session=session, timeout=timeout, permissive_uid=True, callback=self._note_answer
        )
        self.set_http_retry_params(retry=False)
        self._secrets, self._user = settings._secrets(), settings.user  # noqa: SLF001 - our own settings class

    def _note_answer(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        # PS3.18 8.3.4.4: a server that returns fewer matches than exist says so in a Warning header.
        self._last.truncated = "Warning" in response.headers
        return response

    @property
    def last_answer_truncated(self) -> bool:
        """Whether this thread's last answer had a Warning header (a QIDO-RS page the server cut short)."""
        return getattr(self._last, "truncated", False)

    @property
    def session(self) -> requests.Session:
        return self._session

    def redact(self, text: str) -> str:
        """`text` with every current secret (and its basic-auth encoding) replaced by ***."""
        for secret in self._secrets:
            try:
                value = secret.resolve()
            except DicomwebConfigError:
                continue
            text = text.replace(value, "***")
            if self._user is not None:
                text = text.replace(base64.b64encode(f"{self._user}:{value}".encode()).decode("ascii"), "***")
        return text

    def __repr__(self) -> str:
        return f"DicomwebClient({self.base_url!r})"


# ---------------------------------------------------------------------------------------------------
# Errors


class DicomwebError(Exception):
    """A DICOMweb request failed: HTTP status (None when no answer came back) and a short reason."""

    def __init__(self, status: int | None, reason: str, method: str = "", url: str = ""):
        super().__init__(status, reason, method, url)
        self.status, self.reason, self.method, self.url = status, reason, method, url

    @property
    def unreachable(self) -> bool:
        """The server could not be used at all: no answer, overloaded or failing (after retries), or auth refused."""
        return self.status is None or self.status >= 500 or self.status in (401, 403, 407, 408, 429)

    @property
    def auth_refused(self) -> bool:
        return self.status in (401, 403)

    @property
    def error_type(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else "ConnectionError"

    def __str__(self) -> str:
        where = f" ({self.method} {urlsplit(self.url).path})" if self.method else ""
        if self.status is None:
            return f"no answer from the server{where}: {self.reason}"
        if self.auth_refused:
            return (
                f"HTTP {self.status}{where}: the server refused the credentials ({self.reason}); check --user and "
                "--password-env/--password-file, --token-env/--token-file, or --google-auth"
            )
        return f"HTTP {self.status}{where}: {self.reason}"


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _answer_reason(response: requests.Response) -> str:
    """The server's own words about a failure, short: a JSON message field, or the start of the body."""
    reason = response.reason or ""
    body = ""
    try:
        payload = response.json()
    except ValueError:
        if "text" in response.headers.get("Content-Type", "") or not response.headers.get("Content-Type"):
            body = response.text
    else:
        if isinstance(payload, dict):
            for key in ("Message", "message", "error", "Details", "detail"):
                value = payload.get(key)
                if isinstance(value, dict):
                    value = value.get("message")
                if isinstance(value, str) and value:
                    body = value
                    break
    body = _short(body, 200)
    return f"{reason}: {body}" if reason and body else (reason or body or "no reason given")


def _describe_exception(exc: requests.RequestException) -> str:
    text = str(exc)
    cause = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    kind = type(exc).__name__
    if isinstance(exc, requests.ConnectionError) and cause:
        return f"{kind}: {cause.group(1).strip()}"
    return f"{kind}: {_short(text, 200)}"


def _redact(client: DICOMwebClient, text: str) -> str:
    return client.redact(text) if isinstance(client, DicomwebClient) else text


@contextmanager
def _errors(client: DICOMwebClient) -> Iterator[None]:
    """requests' exceptions (raised by the library's transactions or by ours) → DicomwebError, redacted."""
    try:
        yield
    except requests.HTTPError as exc:
        answer = exc.response
        reason = _redact(client, _answer_reason(answer))
        raise DicomwebError(answer.status_code, reason, answer.request.method or "", answer.url) from None
    except requests.JSONDecodeError:  # an answer < 400 that is not DICOM JSON
        raise DicomwebError(200, "the QIDO-RS answer is not JSON: is this a DICOMweb URL?") from None
    except requests.RequestException as exc:
        method, url = getattr(exc.request, "method", None) or "", getattr(exc.request, "url", None) or ""
        raise DicomwebError(None, _redact(client, _describe_exception(exc)), method, url) from None


def _send(client: DICOMwebClient, method: str, url: str, ok: Iterable[int] = (), **kwargs: Any) -> requests.Response:
    """One hand-made request through the client's session (its auth and retries); statuses ≥ 400 not in
    `ok` raise DicomwebError with the server's reason."""
    with _errors(client):
        # The library's session and timeout (private attributes: pinned by the dicomweb-client version range).
        response = client._session.request(method, url, timeout=client._timeout, **kwargs)  # noqa: SLF001
        if response.status_code not in set(ok):
            response.raise_for_status()
    return response


def check_connection(client: DICOMwebClient) -> None:
    """One small QIDO-RS request: raises DicomwebError if the store is unreachable, refuses the credentials
    or is not there (a wrong base path answers 404)."""
    with _errors(client):
        client.search_for_studies(limit=1)


# ---------------------------------------------------------------------------------------------------
# QIDO-RS: the library's search_for_studies / search_for_series / search_for_instances


class InstanceRef(NamedTuple):
    study: str
    series: str
    sop: str


def _first_value(row: dict[str, Any], tag: str) -> Any:
    values = (row.get(tag) or {}).get("Value") or [None]
    return values[0]


def _search(client: DICOMwebClient, search: Callable[..., list], missing_ok: bool = False, **query: Any) -> list:
    """The rows of one QIDO-RS request (`search` is one of the client's search_for_* methods).

    With `missing_ok`, a 404 (a study or series the store does not, or no longer, have) is no rows.
    """
    try:
        with _errors(client):
            return search(**query)
    except DicomwebError as exc:
        if missing_ok and exc.status == 404:
            return []
        raise


def _pages(
    client: DICOMwebClient, search: Callable[..., list], page_size: int, missing_ok: bool = False, **query: Any
) -> Iterator[dict[str, Any]]:
    """Every row of a QIDO-RS query, `page_size` at a time (limit/offset): a page shorter than `page_size`
    ends it unless the server's Warning header said it cut the page short."""
    offset = 0
    while True:
        rows = _search(client, search, missing_ok, limit=page_size, offset=offset, **query)
        truncated = getattr(client, "last_answer_truncated", False)
        yield from rows
        if not rows or (len(rows) < page_size and not truncated):
            return
        offset += len(rows)


def _distinct(rows: Iterable[dict[str, Any]], tag: str) -> Iterator[str]:
    """The distinct values of `tag` (a page boundary that moved under concurrent stores repeats a row)."""
    seen: set[str] = set()
    for row in rows:
        value = _first_value(row, tag)
        if value and value not in seen:
            seen.add(value)
            yield value


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def enumerate_instances(
    client: DICOMwebClient,
    studies: Iterable[str] | None = None,
    series: Iterable[str] | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Iterator[InstanceRef]:
    """Every instance in the store, or in the given studies and/or series, as (study, series, sop).

    QIDO-RS studies → series → instances, each level paginated with limit/offset. With `series` alone, the
    studies they belong to are looked up first; with both, only those series of those studies. Unknown
    UIDs give nothing, but a store that is not there (a wrong base path: 404) or cannot be reached raises
    DicomwebError, with check_connection's message. Lazy: the first instances come before the whole store
    is listed.
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    check_connection(client)
    wanted_series = list(dict.fromkeys(series)) if series is not None else None
    if studies is None and wanted_series is not None:
        pairs: Iterable[tuple[str, str]] = _studies_of_series(client, wanted_series, page_size)
    else:
        pairs = _series_of_studies(client, studies, wanted_series, page_size)
    for study, one_series in pairs:
        rows = _pages(
            client,
            client.search_for_instances,
            page_size,
            missing_ok=True,
            study_instance_uid=study,
            series_instance_uid=one_series,
            fields=[_SOP_UID],
        )
        for sop in _distinct(rows, _SOP_UID):
            yield InstanceRef(study, one_series, sop)


def _series_of_studies(
    client: DICOMwebClient, studies: Iterable[str] | None, wanted: list[str] | None, page_size: int
) -> Iterator[tuple[str, str]]:
    if studies is None:
        studies = _distinct(_pages(client, client.search_for_studies, page_size, fields=[_STUDY_UID]), _STUDY_UID)
    wanted_set = set(wanted) if wanted is not None else None
    for study in dict.fromkeys(studies):
        rows = _pages(
            client, client.search_for_series, page_size, missing_ok=True, study_instance_uid=study, fields=[_SERIES_UID]
        )
        for one_series in _distinct(rows, _SERIES_UID):
            if wanted_set is None or one_series in wanted_set:
                yield study, one_series


def _studies_of_series(client: DICOMwebClient, wanted: list[str], page_size: int) -> Iterator[tuple[str, str]]:
    found: dict[str, str] = {}
    for chunk in _chunks(wanted, UIDS_PER_QUERY):
        query = {"search_filters": {"SeriesInstanceUID": ",".join(chunk)}, "fields": [_STUDY_UID, _SERIES_UID]}
        for row in _pages(client, client.search_for_series, page_size, **query):
            one_series, study = _first_value(row, _SERIES_UID), _first_value(row, _STUDY_UID)
            if one_series in chunk and study:
                found.setdefault(one_series, study)
    for one_series in wanted:
        if one_series in found:
            yield found[one_series], one_series


def find_existing_instances(client: DICOMwebClient, sop_uids: Iterable[str]) -> set[str]:
    """Which of these SOP Instance UIDs the store already holds (QIDO-RS with UID list matching).

    A server that refuses list matching (400) is asked one UID at a time instead.
    """
    uids = list(dict.fromkeys(sop_uids))
    existing: set[str] = set()
    for chunk in _chunks(uids, UIDS_PER_QUERY):
        try:
            existing |= _existing(client, chunk)
        except DicomwebError as exc:
            if exc.status != 400 or len(chunk) == 1:
                raise
            for uid in chunk:
                existing |= _existing(client, [uid])
    return existing


def _existing(client: DICOMwebClient, chunk: Sequence[str]) -> set[str]:
    filters = {"SOPInstanceUID": ",".join(chunk)}
    rows = _search(
        client, client.search_for_instances, True, search_filters=filters, fields=[_SOP_UID], limit=len(chunk) * 2
    )
    return set(_distinct(rows, _SOP_UID)) & set(chunk)


# ---------------------------------------------------------------------------------------------------
# WADO-RS


def retrieve_instance_bytes(client: DICOMwebClient, study: str, series: str, sop: str) -> bytes:
    """One instance's Part 10 file, as the store holds it (``transfer-syntax=*``: no transcoding).

    Asks for the standard multipart/related answer, without HTTP compression; a server that refuses it
    (400/406/415) is asked for a single ``application/dicom`` part. Raises DicomwebError (404 if the store
    does not have it).
    """
    # By hand, not the library's retrieve_instance(): that one parses the file into a pydicom Dataset (and
    # asks for an explicit transfer syntax), so the bytes given back would not be the stored file's. Only
    # the request is ours; the answer is split by the library's multipart decoder.
    url = instance_url(client.base_url, study, series, sop)
    try:
        response = _send(client, "GET", url, headers={"Accept": _PART10_ACCEPT, **_NO_COMPRESSION})
    except DicomwebError as exc:
        if exc.status not in (400, 406, 415):
            raise
        response = _send(client, "GET", url, headers={"Accept": _SINGLE_PART_ACCEPT, **_NO_COMPRESSION})
    status = response.status_code
    if response.headers.get("Content-Type", "").lower().startswith("multipart/related"):
        try:
            parts = list(client._decode_multipart_message(response, stream=False))  # noqa: SLF001
        except ValueError as exc:
            raise DicomwebError(status, f"unreadable multipart answer: {exc}", "GET", url) from None
    else:
        parts = [response.content]
    if len(parts) != 1:
        raise DicomwebError(status, f"expected one DICOM part, got {len(parts)}", "GET", url)
    data = bytes(parts[0])
    if not has_dicm_prefix(data[:132]) and not looks_like_bare_dataset(data[:8]):
        raise DicomwebError(status, "the answer is not a DICOM file", "GET", url)
    return data


# ---------------------------------------------------------------------------------------------------
# STOW-RS


@dataclass
class StowResult:
    """What the server said about one STOW-RS request, per SOP Instance UID."""

    status: int
    #: stored (or already there, for servers that answer duplicates as successes): uid → warning or None
    stored: dict[str, str | None] = field(default_factory=dict)
    #: refused: uid → DICOM FailureReason (None when the server gave none)
    failed: dict[str, int | None] = field(default_factory=dict)


def failure_reason_text(reason: int | None, kind: str = "FailureReason") -> str:
    """`FailureReason 0xA900 (data set does not match SOP class)` for a STOW-RS failure (or warning) code."""
    if reason is None:
        return f"no {kind} given"
    name = FAILURE_REASON_NAMES.get(reason)
    if name is None and 0xA700 <= reason <= 0xA7FF:
        name = "out of resources"
    elif name is None and 0xA900 <= reason <= 0xA9FF:
        name = "data set does not match SOP class"
    elif name is None and 0xC000 <= reason <= 0xCFFF:
        name = "cannot understand"
    return f"{kind} 0x{reason:04X}" + (f" ({name})" if name else "")


def stow_body(blobs: Sequence[bytes]) -> tuple[bytes, str]:
    """A STOW-RS request's body for Part 10 files, byte for byte, and its Content-Type (a fresh boundary):
    made by the library's multipart encoder."""
    content_type = f'multipart/related; type="application/dicom"; boundary={uuid.uuid4().hex}'
    return DICOMwebClient._encode_multipart_message(blobs, content_type), content_type  # noqa: SLF001


def store_instances_bytes(client: DICOMwebClient, blobs: Sequence[bytes]) -> StowResult:
    """Store Part 10 files, byte for byte, in one STOW-RS request; the per-instance answer.

    200 (all stored), 202 (some refused) and 409 (all refused) come back as a StowResult; any other
    failure raises DicomwebError (after the session's retries).
    """
    # By hand, not the library's store_instances(): that one takes pydicom Datasets and writes them out
    # again, so the store would not get the files' own bytes; and its answer keeps no per-instance
    # FailureReason. The body is made by the library's multipart encoder (stow_body).
    body, content_type = stow_body(blobs)
    url = f"{client.base_url}/studies"
    headers = {"Content-Type": content_type, "Accept": _JSON_ACCEPT}
    response = _send(client, "POST", url, ok=(409,), headers=headers, data=body)
    result = StowResult(response.status_code)
    try:
        payload = json.loads(response.content) if response.content else {}
    except ValueError:
        payload = {}  # a success without a DICOM JSON answer: nothing per instance to read
    if isinstance(payload, list):
        payload = payload[0] if payload else {}
    for item in (payload.get(_REFERENCED_SOP_SEQUENCE) or {}).get("Value") or []:
        uid = _first_value(item, _REFERENCED_SOP_INSTANCE_UID)
        if uid:
            warning = _first_value(item, _WARNING_REASON)
            result.stored[uid] = None if warning is None else failure_reason_text(int(warning), "WarningReason")
    for item in (payload.get(_FAILED_SOP_SEQUENCE) or {}).get("Value") or []:
        uid = _first_value(item, _REFERENCED_SOP_INSTANCE_UID)
        if uid:
            reason = _first_value(item, _FAILURE_REASON)
            result.failed[uid] = int(reason) if reason is not None else None
    if response.status_code == 409 and not result.failed:
        raise DicomwebError(409, _redact(client, _answer_reason(response)), "POST", url)
    return result
