"""What every `medbeam` command shares: the error path, the Beam pass-through and the help epilog.

The error path (in `Command.invoke`, so every command has it, and in `Group.main` for click's own
usage errors) is:

* bad arguments: exit 2 with one line `error: …`, no traceback. That covers click's usage errors, flags
  that neither the command nor Beam knows, `fail()` in a command, and the ValueError (job configs, and
  run(): OutputLocationError included) and FileNotFoundError (a named input missing) a command lets out;
  a message that starts with a config field's name gets the flag's name instead (`flag_message`).
* medbeam.io.dicomweb.DicomwebError (the server refused the request): exit 1, one line.
* a finished run: `report()` prints `counts.summary()`, and exits 1 when the counts say `failed`.

This module imports neither Beam nor the pipelines at import time: `medbeam --help` stays fast.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

try:  # typer >= 0.2x carries its own copy of click
    from typer._click.exceptions import ClickException, UsageError
    from typer._click.globals import get_current_context  # noqa: F401 - for medbeam.cli.options
except ImportError:  # older typer: click itself
    from click import ClickException, UsageError, get_current_context  # noqa: F401

#: Flags a command does not know stay in ctx.args (and go to Beam once checked).
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

BEAM_HELP = (
    "Apache Beam pipeline options pass through unchanged: --runner, --project, --region, --temp_location, "
    "--direct_num_workers, --direct_running_mode, … (any Beam pipeline option); any other flag is an error."
)
NO_BEAM_HELP = "Runs locally on Beam's DirectRunner; it takes no Beam pipeline options."

#: ctx.meta key: the DICOMweb store a command talks to, named in its DicomwebError messages.
DICOMWEB_STORE = "medbeam.dicomweb_store"

#: Config fields (or phrases) that start a config's message, and what the command line calls them,
#: where that is not simply the option of the same name (`bit_depth` → `--bit-depth` needs no entry).
#: Used only when the command has the flag.
FIELD_FLAGS = {
    "duckdb_path": "--duckdb",
    "tfrecord_num_shards": "--tfrecord-shards",
    "max_batch_instances": "--batch-instances",
    "read_timeout_s": "--timeout",
    "resize mode": "--resize-mode",
    "image format": "--format",
    "window": "--window",
    "resize": "--resize",
    "channels": "--shape: channels",
    "image height": "--shape: image height",
    "image width": "--shape: image width",
}


def fail(message: str, code: int = 2) -> NoReturn:
    """The one way a command stops on an error: `error: message` on stderr, exit `code`."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


def report(counts: Any, lines: Iterable[str] = (), *, failed: str | None = None) -> None:
    """After a run: the counts' summary, then `lines` (those starting `warning: ` go to stderr), and exit 1
    with `failed` (or a generic message) when the counts have a truthy `failed`."""
    typer.echo(counts.summary())
    for line in lines:
        if line.startswith("warning: "):
            warn(line.removeprefix("warning: "))
        else:
            typer.echo(line)
    if getattr(counts, "failed", False):
        fail(failed or "the run failed; see the rejects table", code=1)


def example_epilog(example: str, *, beam: bool = True) -> str:
    return f"Example: {example}\n\n{BEAM_HELP if beam else NO_BEAM_HELP}"


# ---------------------------------------------------------------------------------------------------
# Messages that name flags


def _long_flag(param: Any) -> str | None:
    names = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return names[0] if names else None


def command_flags(command: TyperCommand) -> dict[str, str]:
    """Parameter name → its long flag (`bit_depth` → `--bit-depth`), for the command's options."""
    flags = {}
    for param in command.params:
        flag = _long_flag(param)
        if flag and param.name:
            flags[param.name] = flag
    return flags


def flag_message(message: str, command: TyperCommand | None) -> str:
    """`bit_depth must be 8 or 16` → `--bit-depth must be 8 or 16`: the leading subject of a config's message
    (one or two, joined by `and`), when it is a field the command has a flag for."""
    if command is None:
        return message
    own = command_flags(command)
    known = set(own.values())
    subjects = {name: flag for name, flag in own.items() if "_" in name}  # one-word names only via the table
    subjects.update({k: v for k, v in FIELD_FLAGS.items() if v.split(":")[0] in known})

    def subject(text: str) -> tuple[str, str] | None:
        for key in sorted(subjects, key=len, reverse=True):
            if text.startswith(key) and text[len(key) : len(key) + 1] in ("", " "):
                return subjects[key], text[len(key) :]
        return None

    hit = subject(message)
    if hit is None:
        return message
    flag, rest = hit
    if rest.startswith(" and "):
        second = subject(rest[len(" and ") :])
        if second is not None:
            rest = " and " + second[0] + second[1]
    return flag + rest


# ---------------------------------------------------------------------------------------------------
# Beam pass-through


class _ParseError(Exception):
    pass


def beam_parser() -> argparse.ArgumentParser:
    """Beam's own parser, built as PipelineOptions.get_all_options builds it: every PipelineOptions
    subclass adds its arguments. What it does not know, Beam would log as unparseable and drop."""
    from apache_beam.options.pipeline_options import (
        PipelineOptions,
        _BeamArgumentParser,
    )

    class Parser(_BeamArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise _ParseError(message)

    parser = Parser(allow_abbrev=False, add_help=False)
    subset: dict[str, type] = {}
    for cls in PipelineOptions.__subclasses__():
        subset.setdefault(str(cls), cls)
    for cls in subset.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - as Beam does
    return parser


def _suggestion(flag: str, candidates: Iterable[str]) -> str | None:
    by_key = {c.replace("_", "-"): c for c in candidates}
    close = difflib.get_close_matches(flag.replace("_", "-"), list(by_key), n=1, cutoff=0.75)
    return by_key[close[0]] if close else None


def check_beam_args(args: list[str], command: TyperCommand | None = None) -> None:
    """Refuse (exit 2) what neither the command nor Beam knows, and Beam flags with bad values."""
    if not args:
        return
    parser = beam_parser()
    try:
        _, unknown = parser.parse_known_args(args)
    except _ParseError as exc:
        fail(f"Beam pipeline option {exc}")
    flags = [a.split("=", 1)[0] for a in unknown if a.startswith("-") and a != "--"]
    if flags:
        names = ", ".join(dict.fromkeys(flags))
        own = list(command_flags(command).values()) if command is not None else []
        beam_flags = [o for action in parser._actions for o in action.option_strings]  # noqa: SLF001
        hint = _suggestion(flags[0], [*own, *beam_flags])
        fail(
            f"unknown option{'s' if len(set(flags)) > 1 else ''} {names} "
            "(not a medbeam option of this command, nor a Beam pipeline option)"
            + (f"; did you mean {hint}?" if hint else "")
        )
    stray = [a for a in unknown if a != "--"]
    if stray:
        fail(f"unexpected argument{'s' if len(stray) > 1 else ''} {' '.join(stray)}")


# ---------------------------------------------------------------------------------------------------
# Command and group classes


def _dicomweb_errors() -> tuple[type[BaseException], ...]:
    module = sys.modules.get("medbeam.io.dicomweb")  # not imported: nothing can have raised its error
    return (module.DicomwebError,) if module is not None else ()


def _job_failures() -> tuple[type[BaseException], ...]:
    """The runner's JobFailed, when a pipeline has been imported (never imported just for this)."""
    import sys

    module = sys.modules.get("medbeam.pipelines.runner")
    return (module.JobFailed,) if module is not None else ()


class Command(TyperCommand):
    """A medbeam command: its callback runs inside the one error path."""

    def check_extra_args(self, ctx: typer.Context) -> None:
        if ctx.args:  # a command without pass-through never gets here: click refuses extra arguments
            check_beam_args(list(ctx.args), self)

    def invoke(self, ctx: typer.Context) -> Any:
        self.check_extra_args(ctx)
        try:
            return super().invoke(ctx)
        except _dicomweb_errors() as exc:
            store = ctx.meta.get(DICOMWEB_STORE)
            fail(f"{store}: {exc}" if store else str(exc), code=1)
        except _job_failures() as exc:  # a worker stopped the run with one of medbeam's one-line errors
            fail(str(exc), code=1)
        except (ValueError, FileNotFoundError) as exc:
            fail(flag_message(str(exc), self))


class Group(TyperGroup):
    """A medbeam command group. Run as the top command, click's usage errors end on one line too."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # the help is the answer (rich printed it already)
                if exc.format_message():
                    typer.echo(exc.format_message(), err=True)
                sys.exit(exc.exit_code)
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            typer.secho(f"error: {exc.format_message()}{hint}", fg=typer.colors.RED, err=True)
            sys.exit(exc.exit_code)
        except ClickException as exc:
            typer.secho(f"error: {exc.format_message()}", fg=typer.colors.RED, err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.secho("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def new_app(help: str) -> typer.Typer:  # noqa: A002 - typer's name
    """A command group; mounted with `app.add_typer(module.app, name=…)`."""
    return typer.Typer(cls=Group, help=help, no_args_is_help=True)


def command(
    app: typer.Typer, name: str, *, example: str, beam: bool = True, cls: type[Command] = Command
):
    """Register a command: the error path, the example and the Beam line in its help, and (with `beam`)
    the pass-through of Beam pipeline options (the callback takes `ctx` and hands `ctx.args` to run())."""
    return app.command(
        name,
        cls=cls,
        context_settings=dict(PASS_THROUGH) if beam else {},
        epilog=example_epilog(example, beam=beam),
    )
