"""Options declared once and shared by several commands: DICOMweb connection and auth, the resize mode,
inputs, progress bars, Parquet shard size.

An option group is a dataclass of Annotated fields; `@options(name=Group)` puts its fields into the
command's signature where the parameter `name: Group` stands, and hands the command one Group value.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

import typer

from medbeam.cli.core import DICOMWEB_STORE, get_current_context

INPUTS_HELP = "File, directory or glob (local, gs://, s3://); repeatable."

Progress = Annotated[bool, typer.Option(help="Progress bars on local runs.")]
RowsPerShard = Annotated[int, typer.Option(min=1, help="Rows per Parquet shard.")]


# ---------------------------------------------------------------------------------------------------
# Resizing


class ResizeMode(str, Enum):
    stretch = "stretch"
    pad = "pad"
    crop = "crop"


#: The same option in every job that resizes (tfrecord from-dicom-png, from-images, dicom export).
ResizeModeOption = Annotated[
    ResizeMode,
    typer.Option(
        help="How an image of another aspect ratio reaches the size: stretch (each axis on its own), "
        "pad (fit inside, black letterbox) or crop (cover, keep the centre)."
    ),
]


# ---------------------------------------------------------------------------------------------------
# DICOMweb: the store's URL is each command's own (required for import, a choice for export)


@dataclass(frozen=True)
class DicomwebOptions:
    """How to reach and authenticate to a DICOMweb store (`dicom import`, `dicom export --dicomweb`).

    Credentials never come on the command line in clear: `--user` names the account, the password comes
    from an environment variable (`--password-env VAR`) or a file (`--password-file PATH`); a bearer token
    likewise (`--token-env`, `--token-file`); `--google-auth` (implied by a Cloud Healthcare store) uses
    Google's application-default credentials.
    """

    user: Annotated[
        str | None, typer.Option(help="HTTP basic auth user (password from --password-env/--password-file).")
    ] = None
    password_env: Annotated[
        str | None, typer.Option(metavar="VAR", help="Environment variable holding the password.")
    ] = None
    password_file: Annotated[str | None, typer.Option(metavar="PATH", help="File holding the password.")] = None
    token_env: Annotated[
        str | None, typer.Option(metavar="VAR", help="Environment variable holding a bearer token.")
    ] = None
    token_file: Annotated[
        str | None, typer.Option(metavar="PATH", help="File holding a bearer token (re-read on every request).")
    ] = None
    google_auth: Annotated[
        bool, typer.Option(help="Google application-default credentials (gcloud / service account).")
    ] = False
    retries: Annotated[
        int, typer.Option(min=1, help="Tries per request (connection errors, 408/429/5xx), with exponential backoff.")
    ] = 5
    retry_backoff: Annotated[
        float, typer.Option(min=0.0, help="First wait between tries, in seconds; doubles each time.")
    ] = 1.0
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for a server answer (per request).")] = 300.0

    def settings(self, url: str):
        """DicomwebSettings for the store at `url`, its secrets checked (ValueError: the error path's exit 2,
        naming the variable or file, never its content). The store is named in later DicomwebErrors."""
        from medbeam.io.dicomweb import DicomwebSettings, RetryPolicy

        settings = DicomwebSettings.from_options(
            url,
            user=self.user,
            password_env=self.password_env,
            password_file=self.password_file,
            token_env=self.token_env,
            token_file=self.token_file,
            google_auth=self.google_auth,
            read_timeout_s=self.timeout,
            retry=RetryPolicy(attempts=self.retries, backoff_s=self.retry_backoff),
        )
        settings.check()
        ctx = get_current_context(silent=True)
        if ctx is not None:
            ctx.meta[DICOMWEB_STORE] = settings.url
        return settings


# ---------------------------------------------------------------------------------------------------
# Option groups in a command's signature


def options(**groups: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`@options(auth=DicomwebOptions)`: the command's parameter `auth` becomes the group's options on the
    command line, and the command receives them as one DicomwebOptions."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(func, eval_str=True)
        fields = {name: dataclasses.fields(group) for name, group in groups.items()}
        params: list[inspect.Parameter] = []
        for param in signature.parameters.values():
            group = groups.get(param.name)
            if group is None:
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                continue
            hints = typing.get_type_hints(group, include_extras=True)
            for field in fields[param.name]:
                params.append(
                    inspect.Parameter(
                        field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=hints[field.name]
                    )
                )

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            for name, group in groups.items():
                kwargs[name] = group(**{f.name: kwargs.pop(f.name) for f in fields[name]})
            return func(**kwargs)

        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


# ---------------------------------------------------------------------------------------------------
# BigQuery: every job that writes tables can also load them into a dataset (medbeam.io.bigquery).


@dataclass(frozen=True)
class BigQueryOptions:
    """Where a job's tables are also loaded: the same tables, names and types as in DuckDB, replaced on a
    rerun. `--bigquery-endpoint` (or BIGQUERY_EMULATOR_HOST) is for an emulator, with anonymous credentials;
    otherwise Google's application-default credentials."""

    bigquery_dataset: Annotated[
        str | None,
        typer.Option(
            metavar="PROJECT:DATASET", help="Also load the tables into this BigQuery dataset (created if missing)."
        ),
    ] = None
    bigquery_table_prefix: Annotated[
        str, typer.Option(help="Prefix for the BigQuery table names (keeps jobs sharing a dataset apart).")
    ] = ""
    bigquery_location: Annotated[
        str | None, typer.Option(help="Location of a dataset that is created (e.g. EU, US).")
    ] = None
    bigquery_endpoint: Annotated[
        str | None,
        typer.Option(help="BigQuery API endpoint of an emulator (anonymous credentials); also BIGQUERY_EMULATOR_HOST."),
    ] = None

    def target(self):
        """The BigQueryTarget of the flags, or None without --bigquery-dataset (ValueError: exit 2)."""
        if self.bigquery_dataset is None:
            if self.bigquery_table_prefix or self.bigquery_location:
                raise ValueError("--bigquery-table-prefix and --bigquery-location need --bigquery-dataset")
            return None
        from medbeam.io.bigquery import BigQueryTarget

        return BigQueryTarget.parse(
            self.bigquery_dataset, self.bigquery_table_prefix, self.bigquery_location, self.bigquery_endpoint
        )


def bigquery_line(target: Any, names: list[str]) -> list[str]:
    """The report line naming the BigQuery tables a run loaded (none without a target)."""
    if target is None:
        return []
    return [f"BigQuery: {', '.join(target.table_id(name) for name in names)}"]
