"""DICOMweb client side, without Beam: store URLs, credentials, retries, STOW-RS, QIDO-RS and WADO-RS.

Everything a worker needs travels as a picklable :class:`DicomwebSettings` (the URL, the auth mode, the
*names* of the environment variables or files that hold secrets, timeouts, the retry policy). Each worker
calls :meth:`DicomwebSettings.make_client` once, in ``DoFn.setup()``, and gets a dicomweb-client
``DICOMwebClient`` whose ``requests`` session

- authenticates with HTTP basic auth or a bearer token read from the environment or a file at request
  time (so rotated token files are picked up), or with Google application-default credentials;
- retries 408/429/5xx answers and connection errors with exponential backoff, a bounded number of times,
  for every request (STOW, QIDO, WADO), honouring ``Retry-After``.

Secrets never live in a settings object, a client's or an auth object's repr, a log line, an exception
message or a reject: objects hold only where a secret comes from, and every error message from a server
goes through :meth:`DicomwebClient.redact` before it is raised.

The module-level functions take any ``DICOMwebClient`` (those made here are best: they carry the retries):

- :func:`enumerate_instances` walks QIDO-RS studies → series → instances, page by page;
- :func:`retrieve_instance_bytes` fetches one instance's Part 10 bytes as stored (no transcoding);
- :func:`store_instances_bytes` posts several Part 10 files in one STOW-RS request and parses the answer;
- :func:`find_existing_instances` asks which SOP Instance UIDs the store already holds.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import requests
from dicomweb_client.api import DICOMwebClient
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.util.retry import Retry

from medbeam.dicom.reader import has_dicm_prefix, looks_like_bare_dataset

logger = logging.getLogger(__name__)

GOOGLE_HEALTHCARE_API = "https://healthcare.googleapis.com/v1"
GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
#: QIDO-RS page size: small enough for every server's cap on `limit` we know of, large enough to be cheap.
DEFAULT_PAGE_SIZE = 1000
#: UID list matching: how many UIDs one QIDO-RS query carries (keeps URLs well under 8 KB).
UIDS_PER_QUERY = 50

AUTH_NONE, AUTH_BASIC, AUTH_BEARER, AUTH_GOOGLE = "none", "basic", "bearer", "google"
AUTH_MODES = (AUTH_NONE, AUTH_BASIC, AUTH_BEARER, AUTH_GOOGLE)

_SHORTHAND = re.compile(
    r"^/?(projects/[^/\s?#]+/locations/[^/\s?#]+/datasets/[^/\s?#]+/dicomStores/[^/\s?#]+?)(?:/dicomWeb)?/?$"
)
_GOOGLE_HOST = "healthcare.googleapis.com"

# DICOM JSON tags of the STOW-RS response (PS3.18 Table 10.5.3-1).
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
    ``https://healthcare.googleapis.com/v1/projects/P/locations/L/datasets/D/dicomStores/S/dicomWeb``; any
    URL on healthcare.googleapis.com implies Google auth too. URLs carrying credentials or a query string
    are refused (without echoing them): secrets belong in environment variables or files.
    """
    text = value.strip()
    match = _SHORTHAND.match(text)
    if match:
        return f"{GOOGLE_HEALTHCARE_API}/{match.group(1)}/dicomWeb", True
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
    """urllib3's Retry, but the first retry waits too (urllib3 retries the first time at once)."""

    def get_backoff_time(self) -> float:
        errors = 0
        for entry in reversed(self.history):
            if entry.redirect_location is not None:
                break
            errors += 1
        if errors == 0:
            return 0.0
        wait = self.backoff_factor * (2 ** (errors - 1))
        wait += random.random() * 0.1 * wait
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


class _BasicAuth(AuthBase):
    """HTTP basic auth whose password is read from its source on every request."""

    def __init__(self, user: str, password: _Secret):
        self.user, self.password = user, password

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        pair = f"{self.user}:{self.password.resolve()}".encode()
        request.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return request

    def __repr__(self) -> str:
        return f"<basic auth as {self.user!r}, password {self.password!r}>"


class _BearerAuth(AuthBase):
    """A bearer token read from its source on every request (a rotated token file is picked up)."""

    def __init__(self, token: _Secret):
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token.resolve()}"
        return request

    def __repr__(self) -> str:
        return f"<bearer token {self.token!r}>"


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
        if self.auth == AUTH_GOOGLE:
            session = _google_session()
        else:
            session = requests.Session()
        session.mount("http://", HTTPAdapter(max_retries=_retry(self.retry), pool_maxsize=16))
        session.mount("https://", HTTPAdapter(max_retries=_retry(self.retry), pool_maxsize=16))
        if self.ca_bundle:
            session.verify = self.ca_bundle
        secrets = self._secrets()
        if self.auth == AUTH_BASIC:
            session.auth = _BasicAuth(self.user, secrets[0])
        elif self.auth == AUTH_BEARER:
            session.auth = _BearerAuth(secrets[0])
        return DicomwebClient(
            self.url,
            session=session,
            timeout=(self.connect_timeout_s, self.read_timeout_s),
            secrets=secrets,
            user=self.user,
        )


def _google_session() -> requests.Session:
    try:
        import google.auth
        from google.auth.transport.requests import AuthorizedSession
    except ImportError as exc:  # pragma: no cover - google-auth comes with apache-beam[gcp]
        raise DicomwebConfigError("Google auth needs the google-auth package: pip install 'medbeam[gcp]'") from exc
    try:
        credentials, _ = google.auth.default(scopes=list(GOOGLE_SCOPES))
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise DicomwebConfigError(
            "no Google application-default credentials: run `gcloud auth application-default login` "
            "or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file"
        ) from exc
    return AuthorizedSession(credentials)


class DicomwebClient(DICOMwebClient):
    """dicomweb-client's DICOMwebClient, made by DicomwebSettings.make_client().

    Retries are done once, by the session's transport (for every request, its own included): the
    library's own retry loop is switched off so that the two do not multiply.
    """

    def __init__(
        self,
        url: str,
        *,
        session: requests.Session,
        timeout: tuple[float, float],
        secrets: Sequence[_Secret] = (),
        user: str | None = None,
    ):
        super().__init__(url, session=session, timeout=timeout)
        self.set_http_retry_params(retry=False)
        self.timeout = timeout
        self._secrets = tuple(secrets)
        self._user = user

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
            forms = [value]
            if self._user is not None:
                forms.append(base64.b64encode(f"{self._user}:{value}".encode()).decode("ascii"))
            for form in forms:
                text = text.replace(form, "***")
        return text

    def __repr__(self) -> str:
        return f"DicomwebClient({self.base_url!r})"


# ---------------------------------------------------------------------------------------------------
# Requests and errors


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


def _session_of(client: DICOMwebClient) -> requests.Session:
    return client._session


def _timeout_of(client: DICOMwebClient) -> Any:
    return getattr(client, "timeout", None) or getattr(client, "_timeout", 60)


def _redact(client: DICOMwebClient, text: str) -> str:
    return client.redact(text) if isinstance(client, DicomwebClient) else text


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


def _request(
    client: DICOMwebClient,
    method: str,
    url: str,
    *,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    ok: Iterable[int] = (),
) -> requests.Response:
    """One request through the client's session (its retries included); errors → DicomwebError.

    Statuses < 400 and those in `ok` come back; anything else raises, with the server's reason.
    """
    try:
        response = _session_of(client).request(
            method, url, params=params, headers=headers, data=data, timeout=_timeout_of(client)
        )
    except DicomwebConfigError:
        raise
    except requests.RequestException as exc:
        raise DicomwebError(None, _redact(client, _describe_exception(exc)), method, url) from None
    if response.status_code >= 400 and response.status_code not in set(ok):
        reason = _redact(client, _answer_reason(response))
        raise DicomwebError(response.status_code, reason, method, url)
    return response


def check_connection(client: DICOMwebClient) -> None:
    """One small QIDO-RS request: raises DicomwebError if the store is unreachable or refuses the credentials."""
    _request(client, "GET", f"{client.base_url}/studies", params={"limit": 1}, headers={"Accept": _JSON_ACCEPT})


# ---------------------------------------------------------------------------------------------------
# QIDO-RS


class InstanceRef(NamedTuple):
    study: str
    series: str
    sop: str


def _first_value(row: dict[str, Any], tag: str) -> Any:
    values = (row.get(tag) or {}).get("Value") or [None]
    return values[0]


def _qido(client: DICOMwebClient, path: str, params: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """(rows, whether the server says more matched than it returned) for one QIDO-RS request; 404 → no rows."""
    response = _request(
        client, "GET", f"{client.base_url}/{path}", params=params, headers={"Accept": _JSON_ACCEPT}, ok=(404,)
    )
    if response.status_code == 404 or response.status_code == 204 or not response.content:
        return [], False
    try:
        rows = response.json()
    except ValueError:
        raise DicomwebError(response.status_code, "QIDO-RS answer is not JSON", "GET", response.url) from None
    if isinstance(rows, dict):
        rows = [rows]
    # PS3.18 8.3.4.4: a server that returns fewer matches than exist says so in a Warning header.
    truncated = "warning" in {k.lower() for k in response.headers}
    return rows, truncated


def _qido_pages(client: DICOMwebClient, path: str, params: dict[str, Any], page_size: int) -> Iterator[dict[str, Any]]:
    """Every row of a QIDO-RS query, `page_size` at a time (limit/offset)."""
    offset = 0
    while True:
        rows, truncated = _qido(client, path, {**params, "limit": page_size, "offset": offset})
        yield from rows
        if not rows or (len(rows) < page_size and not truncated):
            return
        offset += len(rows)


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

    QIDO-RS studies → series → instances, each level paginated with limit/offset (a page shorter than
    `page_size` ends a level unless the server's Warning header says it truncated the answer). With
    `series` alone, the studies they belong to are looked up first; with both, only those series of those
    studies. Unknown UIDs give nothing. Lazy: the first instances come before the whole store is listed.
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    wanted_series = list(dict.fromkeys(series)) if series is not None else None
    if studies is None and wanted_series is not None:
        pairs: Iterable[tuple[str, str]] = _studies_of_series(client, wanted_series, page_size)
    else:
        pairs = _series_of_studies(client, studies, wanted_series, page_size)
    for study, one_series in pairs:
        seen: set[str] = set()
        path = f"studies/{_q(study)}/series/{_q(one_series)}/instances"
        for row in _qido_pages(client, path, {"includefield": _SOP_UID}, page_size):
            sop = _first_value(row, _SOP_UID)
            if sop and sop not in seen:  # a page boundary that moved under concurrent stores
                seen.add(sop)
                yield InstanceRef(study, one_series, sop)


def _all_studies(client: DICOMwebClient, page_size: int) -> Iterator[str]:
    seen: set[str] = set()
    for row in _qido_pages(client, "studies", {"includefield": _STUDY_UID}, page_size):
        study = _first_value(row, _STUDY_UID)
        if study and study not in seen:
            seen.add(study)
            yield study


def _series_of_studies(
    client: DICOMwebClient, studies: Iterable[str] | None, wanted: list[str] | None, page_size: int
) -> Iterator[tuple[str, str]]:
    wanted_set = set(wanted) if wanted is not None else None
    study_uids = _all_studies(client, page_size) if studies is None else dict.fromkeys(studies)
    for study in study_uids:
        seen: set[str] = set()
        path = f"studies/{_q(study)}/series"
        for row in _qido_pages(client, path, {"includefield": _SERIES_UID}, page_size):
            one_series = _first_value(row, _SERIES_UID)
            if one_series and one_series not in seen and (wanted_set is None or one_series in wanted_set):
                seen.add(one_series)
                yield study, one_series


def _studies_of_series(client: DICOMwebClient, wanted: list[str], page_size: int) -> Iterator[tuple[str, str]]:
    found: dict[str, str] = {}
    for chunk in _chunks(wanted, UIDS_PER_QUERY):
        params = {"SeriesInstanceUID": ",".join(chunk), "includefield": f"{_STUDY_UID},{_SERIES_UID}"}
        for row in _qido_pages(client, "series", params, page_size):
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
    params = {"SOPInstanceUID": ",".join(chunk), "includefield": _SOP_UID, "limit": len(chunk) * 2}
    rows, _ = _qido(client, "instances", params)
    wanted = set(chunk)
    return {uid for row in rows if (uid := _first_value(row, _SOP_UID)) in wanted}


# ---------------------------------------------------------------------------------------------------
# WADO-RS


def retrieve_instance_bytes(client: DICOMwebClient, study: str, series: str, sop: str) -> bytes:
    """One instance's Part 10 file, as the store holds it (``transfer-syntax=*``: no transcoding).

    Asks for the standard multipart/related answer, without HTTP compression; a server that refuses it
    (400/406) is asked for a single ``application/dicom`` part. Raises DicomwebError (404 if the store
    does not have it).
    """
    url = instance_url(client.base_url, study, series, sop)
    try:
        response = _request(client, "GET", url, headers={"Accept": _PART10_ACCEPT, **_NO_COMPRESSION})
    except DicomwebError as exc:
        if exc.status not in (400, 406, 415):
            raise
        response = _request(client, "GET", url, headers={"Accept": _SINGLE_PART_ACCEPT, **_NO_COMPRESSION})
    parts = decode_multipart(response.headers.get("Content-Type", ""), response.content)
    if len(parts) != 1:
        raise DicomwebError(response.status_code, f"expected one DICOM part, got {len(parts)}", "GET", url)
    data = parts[0]
    if not has_dicm_prefix(data[:132]) and not looks_like_bare_dataset(data[:8]):
        raise DicomwebError(response.status_code, "the answer is not a DICOM file", "GET", url)
    return data


def decode_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a multipart/related body (each part's Content-Length is used when given);
    a body that is not multipart is its own single part."""
    if not content_type.lower().startswith("multipart/"):
        return [body]
    match = re.search(r'boundary="?([^";]+)"?', content_type, flags=re.IGNORECASE)
    if not match:
        raise ValueError("multipart answer without a boundary")
    delimiter = b"--" + match.group(1).strip().encode("latin-1")
    parts: list[bytes] = []
    position = body.find(delimiter)
    while position != -1:
        position += len(delimiter)
        if body[position : position + 2] == b"--":  # closing delimiter
            break
        header_end = body.find(b"\r\n\r\n", position)
        if header_end == -1:
            break
        headers = body[position:header_end].decode("latin-1")
        start = header_end + 4
        length = re.search(r"(?im)^content-length:\s*(\d+)\s*$", headers)
        if length:
            end = start + int(length.group(1))
            next_delimiter = body.find(delimiter, end)
        else:
            next_delimiter = body.find(b"\r\n" + delimiter, start)
            end = next_delimiter
            next_delimiter = next_delimiter + 2 if next_delimiter != -1 else -1
        if end < start or end > len(body):
            raise ValueError("truncated multipart answer")
        parts.append(body[start:end])
        position = next_delimiter
    return parts


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


def encode_multipart(blobs: Sequence[bytes]) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/related application/dicom request."""
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
    pieces: list[bytes] = []
    for blob in blobs:
        pieces += [head, blob, b"\r\n"]
    pieces.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(pieces), f'multipart/related; type="application/dicom"; boundary={boundary}'


def store_instances_bytes(client: DICOMwebClient, blobs: Sequence[bytes]) -> StowResult:
    """Store Part 10 files, byte for byte, in one STOW-RS request; the per-instance answer.

    200 (all stored), 202 (some refused) and 409 (all refused) come back as a StowResult; any other
    failure raises DicomwebError (after the session's retries).
    """
    body, content_type = encode_multipart(blobs)
    url = f"{client.base_url}/studies"
    headers = {"Content-Type": content_type, "Accept": _JSON_ACCEPT}
    response = _request(client, "POST", url, headers=headers, data=body, ok=(409,))
    result = StowResult(response.status_code)
    if not response.content:
        if response.status_code == 409:
            raise DicomwebError(409, _redact(client, _answer_reason(response)), "POST", url)
        return result
    try:
        payload = json.loads(response.content)
    except ValueError:
        if response.status_code == 409:
            raise DicomwebError(409, _redact(client, _answer_reason(response)), "POST", url) from None
        return result  # a success without a DICOM JSON answer: nothing per instance to read
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
