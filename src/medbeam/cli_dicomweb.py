"""`medbeam dicom import`: DICOM files → a DICOMweb store. Wired into the main CLI with `register(dicom_app)`.

Credentials never come on the command line in clear: `--user` names the account, the password comes from
an environment variable (`--password-env VAR`) or a file (`--password-file PATH`); a bearer token likewise
(`--token-env`, `--token-file`); `--google-auth` (implied by a Cloud Healthcare store) uses Google's
application-default credentials. Flags the command does not know pass through to Apache Beam.
"""

from __future__ import annotations

from typing import Annotated

import typer

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

DicomwebUrl = Annotated[
    str,
    typer.Option(
        "--dicomweb",
        help="DICOMweb base URL (e.g. http://localhost:8042/dicom-web) or a Cloud Healthcare store: "
        "projects/P/locations/L/datasets/D/dicomStores/S (implies --google-auth).",
    ),
]
User = Annotated[str | None, typer.Option(help="HTTP basic auth user (password from --password-env/--password-file).")]
PasswordEnv = Annotated[str | None, typer.Option(metavar="VAR", help="Environment variable holding the password.")]
PasswordFile = Annotated[str | None, typer.Option(metavar="PATH", help="File holding the password.")]
TokenEnv = Annotated[str | None, typer.Option(metavar="VAR", help="Environment variable holding a bearer token.")]
TokenFile = Annotated[
    str | None, typer.Option(metavar="PATH", help="File holding a bearer token (re-read on every request).")
]
GoogleAuth = Annotated[bool, typer.Option(help="Google application-default credentials (gcloud / service account).")]
Retries = Annotated[
    int, typer.Option(min=1, help="Tries per request (connection errors, 408/429/5xx), with exponential backoff.")
]
RetryBackoff = Annotated[float, typer.Option(min=0.0, help="First wait between tries, in seconds; doubles each time.")]
Timeout = Annotated[float, typer.Option(min=0.1, help="Seconds to wait for a server answer (per request).")]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def dicomweb_settings(
    url: str,
    *,
    user: str | None = None,
    password_env: str | None = None,
    password_file: str | None = None,
    token_env: str | None = None,
    token_file: str | None = None,
    google_auth: bool = False,
    retries: int = 5,
    retry_backoff: float = 1.0,
    timeout: float = 300.0,
):
    """DicomwebSettings from the command-line options (shared by `dicom import` and `dicom export --dicomweb`);
    a bad combination exits with a clear message (code 2)."""
    from medbeam.io.dicomweb import DicomwebSettings, RetryPolicy

    try:
        settings = DicomwebSettings.from_options(
            url,
            user=user,
            password_env=password_env,
            password_file=password_file,
            token_env=token_env,
            token_file=token_file,
            google_auth=google_auth,
            read_timeout_s=timeout,
            retry=RetryPolicy(attempts=retries, backoff_s=retry_backoff),
        )
        settings.check()
    except ValueError as exc:  # DicomwebConfigError included: names the variable or file, never its content
        _fail(str(exc))
    return settings


def dicom_import(
    ctx: typer.Context,
    inputs: Annotated[
        list[str],
        typer.Option("--input", "-i", help="File, directory or glob (local, gs://, s3://); repeatable."),
    ],
    dicomweb: DicomwebUrl,
    user: User = None,
    password_env: PasswordEnv = None,
    password_file: PasswordFile = None,
    token_env: TokenEnv = None,
    token_file: TokenFile = None,
    google_auth: GoogleAuth = False,
    parquet_dir: Annotated[
        str | None,
        typer.Option(
            help="Tables dicom_import (what happened to each file) and rejects, as Parquet (any filesystem). "
            "Default: next to --duckdb, else ./medbeam-import."
        ),
    ] = None,
    duckdb: Annotated[str | None, typer.Option(help="Also load both tables into this local DuckDB file.")] = None,
    batch_instances: Annotated[int, typer.Option(min=1, help="At most this many instances per STOW-RS request.")] = 50,
    batch_mb: Annotated[float, typer.Option(min=0.001, help="At most this many MB per STOW-RS request.")] = 32.0,
    check_existing: Annotated[
        bool,
        typer.Option(
            help="Ask the store which instances it has before sending (QIDO-RS), so reruns send nothing twice."
        ),
    ] = True,
    retries: Retries = 5,
    retry_backoff: RetryBackoff = 1.0,
    timeout: Timeout = 300.0,
    rows_per_shard: Annotated[int, typer.Option(min=1, help="Rows per Parquet shard.")] = 50_000,
    progress: Annotated[bool, typer.Option(help="Progress bars on local runs.")] = True,
) -> None:
    """Import DICOM files into a DICOMweb store (STOW-RS): batched, retried, idempotent.

    Ends with `N in, S stored, A already present, K rejected`; exits 1 when files could not be sent
    because of the server (unreachable, failing, refusing the credentials or the URL): rerun to retry,
    what is stored is not sent again.
    """
    from medbeam.io.dicomweb import DicomwebError
    from medbeam.pipelines.dicom_import import ImportConfig, run

    settings = dicomweb_settings(
        dicomweb,
        user=user,
        password_env=password_env,
        password_file=password_file,
        token_env=token_env,
        token_file=token_file,
        google_auth=google_auth,
        retries=retries,
        retry_backoff=retry_backoff,
        timeout=timeout,
    )
    try:
        config = ImportConfig(
            inputs=inputs,
            dicomweb=settings,
            parquet_dir=parquet_dir,
            duckdb_path=duckdb,
            max_batch_instances=batch_instances,
            max_batch_bytes=max(1, int(batch_mb * 1024 * 1024)),
            check_existing=check_existing,
            rows_per_shard=rows_per_shard,
            progress=progress,
        )
    except ValueError as exc:
        _fail(str(exc))
    try:
        counts = run(config, ctx.args)
    except DicomwebError as exc:  # the preflight request: credentials refused, or not a DICOMweb URL
        _fail(f"{settings.url}: {exc}", code=1)
    except ValueError as exc:  # e.g. Google credentials missing
        _fail(str(exc), code=1)
    typer.echo(counts.summary())
    if config.duckdb_path:
        typer.echo(f"tables: {config.duckdb_path} (dicom_import, rejects); Parquet: {config.parquet_dir}")
    else:
        typer.echo(f"tables: Parquet under {config.parquet_dir} (dicom_import, rejects)")
    if counts.failed:
        typer.secho(
            f"error: {counts.server_failures} files were not sent because of the server ({settings.describe()}); "
            "see the rejects table, then rerun: instances already stored are not sent again",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)


def register(dicom_app: typer.Typer) -> None:
    """Add `import` to the `medbeam dicom` command group."""
    dicom_app.command("import", context_settings=_PASS_THROUGH)(dicom_import)
