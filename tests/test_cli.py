"""The command line's shared rules: one error path, the Beam pass-through check, --version, help epilogs.

Fast: the pipelines' run() is replaced where a test needs one, so nothing here runs Beam.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from medbeam.cli import app
from medbeam.cli.core import check_beam_args, flag_message

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _invoke(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(app, list(args), env=env)
    return result, result.output


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


def _export(tmp_path: Path, *extra: str) -> list[str]:
    return ["dicom", "export", "--input", str(tmp_path), "--png-dir", str(tmp_path / "png"),
            "--parquet-dir", str(tmp_path / "t"), "--no-progress", *extra]  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Flags that neither medbeam nor Beam knows


def test_unknown_flag_is_an_error_naming_it(tmp_path):
    result, output = _invoke(*_export(tmp_path, "--bit_depth", "16"))
    assert result.exit_code == 2
    line = _one_error_line(output)
    assert "unknown option --bit_depth" in line and "nor a Beam pipeline option" in line
    assert "did you mean --bit-depth?" in line
    assert not (tmp_path / "png").exists()  # refused before anything ran


@pytest.mark.parametrize(
    "args",
    [
        ["files", "untar", "-i", "x.tar", "--output-dir", "o", "--max-ratoi", "5"],
        ["files", "decompress", "-i", "x", "--output_dir=o"],
        ["tfrecord", "from-images", "-i", "x", "-o", "y", "--lables-sql", "SELECT 1"],
        ["tfrecord", "from-dicom-png", "-i", "x", "-o", "y", "--runer", "DirectRunner"],
        ["dicom", "import", "-i", "x", "--dicomweb", "http://localhost:1/dicom-web", "--batch_mb", "3"],
        ["predictions", "load", "-i", "x", "--flaten", "--duckdb", "p.duckdb"],
    ],
)
def test_every_command_refuses_unknown_flags(args):
    result, output = _invoke(*args)
    assert result.exit_code == 2
    flag = next(a for a in args[3:] if a.startswith("--") and a.split("=")[0] not in
                ("--output-dir", "--dicomweb"))  # fmt: skip
    assert f"unknown option {flag.split('=')[0]}" in _one_error_line(output)


def test_beam_flags_pass_through_and_are_checked():
    check_beam_args(["--runner", "DirectRunner", "--direct_num_workers=2", "--experiments", "a", "--experiments=b"])
    with pytest.raises(typer.Exit) as info:
        check_beam_args(["--runner", "DirectRunner", "--bit_depth", "16"])
    assert info.value.exit_code == 2


def test_beam_flag_values_reach_run_unchanged(tmp_path, monkeypatch):
    seen = {}

    def fake_run(config, beam_args):
        seen["args"] = beam_args
        return _Counts()

    monkeypatch.setattr("medbeam.pipelines.untar.run", fake_run)
    beam = ["--runner", "DirectRunner", "--direct_num_workers=3", "--direct_running_mode", "multi_processing"]
    result, output = _invoke("files", "untar", "-i", str(tmp_path), "--output-dir", str(tmp_path / "o"), *beam)
    assert result.exit_code == 0, output
    assert seen["args"] == beam
    assert "1 in, all good" in output


def test_bad_beam_flag_value_is_one_line(tmp_path):
    result, output = _invoke("files", "untar", "-i", "x.tar", "--output-dir", "o", "--direct_num_workers", "many")
    assert result.exit_code == 2
    assert "--direct_num_workers" in _one_error_line(output)


def test_stray_argument_is_an_error():
    result, output = _invoke("files", "untar", "-i", "x.tar", "--output-dir", "o", "stray")
    assert result.exit_code == 2 and "unexpected argument stray" in _one_error_line(output)


# ---------------------------------------------------------------------------------------------------
# Messages name the flags


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--bit-depth", "12"], "error: --bit-depth must be 8 or 16, got 12"),
        (["--window-center", "40", "--window-width", "0.5"], "error: --window-width must be >= 1"),
        (["--resize", "0", "5"], "error: --resize must be (height, width)"),
    ],
)
def test_config_error_names_the_flag(tmp_path, extra, expected):
    result, output = _invoke(*_export(tmp_path, *extra))
    assert result.exit_code == 2
    line = _one_error_line(output)
    assert line.startswith(expected), line
    assert "bit_depth" not in line and "window_width" not in line


def test_flag_message_maps_only_the_commands_own_fields():
    export = get_command(app).commands["dicom"].commands["export"]
    assert flag_message("window_center and window_width must be given together", export) == (
        "--window-center and --window-width must be given together"
    )
    assert flag_message("resize mode must be one of stretch, pad, crop; got 'x'", export).startswith("--resize-mode ")
    assert flag_message("rows_per_shard must be at least 1", export) == "--rows-per-shard must be at least 1"
    assert flag_message("/data/png_dir is not writable", export) == "/data/png_dir is not writable"
    untar = get_command(app).commands["files"].commands["untar"]
    assert flag_message("bit_depth must be 8 or 16", untar) == "bit_depth must be 8 or 16"  # not its flag
    png = get_command(app).commands["tfrecord"].commands["from-dicom-png"]
    assert flag_message("channels must be 1 (grey) or 3 (colour), got 2", png).startswith("--shape: channels")


def test_click_usage_errors_are_one_line_too():
    result, output = _invoke("dicom", "export", "--input", "x", "--png-compression", "12")
    assert result.exit_code == 2 and "--png-compression" in _one_error_line(output)
    result, output = _invoke("files", "untar", "-i", "x.tar")
    assert result.exit_code == 2 and "--output-dir" in _one_error_line(output)


# ---------------------------------------------------------------------------------------------------
# Exit codes: 2 for bad arguments, 1 for the server or a failed run


@dataclass
class _Counts:
    failed: bool = False
    server_failures: int = 0
    archives_in: int = 1
    files_in: int = 1

    def summary(self) -> str:
        return "1 in, all good" if not self.failed else "1 in, 1 failed"


def _import_args(tmp_path: Path) -> list[str]:
    return ["dicom", "import", "-i", str(tmp_path), "--dicomweb", "http://localhost:1/dicom-web",
            "--parquet-dir", str(tmp_path / "t"), "--no-progress"]  # fmt: skip


def test_run_value_error_exits_2(tmp_path, monkeypatch):
    from medbeam.io.files import OutputLocationError

    def fake_run(config, beam_args):
        raise OutputLocationError("--png-dir /nope is not writable: read-only file system")

    monkeypatch.setattr("medbeam.pipelines.dicom_export.run", fake_run)
    result, output = _invoke(*_export(tmp_path))
    assert result.exit_code == 2
    assert _one_error_line(output) == "error: --png-dir /nope is not writable: read-only file system"


def test_missing_named_input_exits_2(tmp_path):
    result, output = _invoke("files", "untar", "-i", str(tmp_path / "nope.tar"), "--output-dir", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "no such input" in _one_error_line(output)


def test_dicomweb_error_exits_1_naming_the_store(tmp_path, monkeypatch):
    from medbeam.io.dicomweb import DicomwebError

    def fake_run(config, beam_args):
        raise DicomwebError(404, "Not Found", "GET", "http://localhost:1/dicom-web/studies")

    monkeypatch.setattr("medbeam.pipelines.dicom_import.run", fake_run)
    result, output = _invoke(*_import_args(tmp_path))
    assert result.exit_code == 1
    line = _one_error_line(output)
    assert line.startswith("error: http://localhost:1/dicom-web: ") and "HTTP 404" in line


def test_failed_counts_exit_1_after_the_summary(tmp_path, monkeypatch):
    monkeypatch.setattr("medbeam.pipelines.dicom_import.run", lambda config, beam_args: _Counts(True, 3))
    result = CliRunner().invoke(app, _import_args(tmp_path))
    assert result.exit_code == 1
    assert result.stdout.startswith("1 in, 1 failed\n")
    assert "error: 3 files were not sent because of the server" in result.stderr

    monkeypatch.setattr("medbeam.pipelines.dicom_import.run", lambda config, beam_args: _Counts())
    ok = CliRunner().invoke(app, _import_args(tmp_path))
    assert ok.exit_code == 0 and ok.stdout.startswith("1 in, all good\n")


def test_unreadable_secret_exits_2(tmp_path):
    args = [*_import_args(tmp_path), "--user", "u", "--password-env", "MEDBEAM_TEST_UNSET"]
    result, output = _invoke(*args, env={"MEDBEAM_TEST_UNSET": ""})
    assert result.exit_code == 2 and "MEDBEAM_TEST_UNSET" in _one_error_line(output)


# ---------------------------------------------------------------------------------------------------
# --version, help, entry points


def test_version():
    result, output = _invoke("--version")
    assert result.exit_code == 0 and output.strip() == f"medbeam {version('medbeam')}"


def _commands(group, path=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_command_has_an_example_and_says_which_flags_go_to_beam():
    commands = dict(_commands(get_command(app)))
    assert set(commands) == {
        ("dicom", "export"), ("dicom", "import"), ("dicom", "deidentify"), ("files", "untar"), ("files", "decompress"),
        ("tfrecord", "from-dicom-png"), ("tfrecord", "from-images"), ("cxr", "prepare"), ("infer",), ("embed",),
        ("predictions", "load"),
        ("demo",),
    }  # fmt: skip
    for path, cmd in commands.items():
        assert cmd.epilog.startswith(f"Example: medbeam {' '.join(path)}") or f"medbeam {' '.join(path)} " in cmd.epilog
        assert ("--runner" in cmd.epilog and "--direct_num_workers" in cmd.epilog) or path == ("demo",)
        result, output = _invoke(*path, "--help")
        assert result.exit_code == 0 and "Example:" in output, output


def test_console_entry_points_and_a_fast_import():
    env = {**os.environ, "PYTHONPATH": SRC}
    code = (
        "import sys, medbeam.cli; "
        "print(any(m.split('.')[0] == 'apache_beam' or m.startswith('medbeam.pipelines') for m in sys.modules))"
    )
    quick = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert quick.stdout.strip() == "False"  # `medbeam --help` imports neither Beam nor the pipelines
    run = subprocess.run([sys.executable, "-m", "medbeam.cli", "--version"], capture_output=True, text=True, env=env)
    assert run.returncode == 0 and run.stdout.startswith("medbeam ")
    from medbeam.cli import main

    assert callable(main)


_ENDING = """
import atexit, pathlib, sys, threading, time
out = pathlib.Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
if sys.argv[2] == "thread":
    def late_write():
        time.sleep(0.5)
        (out / "thread").write_text("done")
    threading.Thread(target=late_write).start()
sys.argv = ["medbeam", *sys.argv[3:]]
from medbeam.cli import main
main()
"""


def test_the_process_ends_as_a_normal_exit_would(tmp_path):
    """medbeam.cli.end_process skips the interpreter's teardown only: the status, atexit handlers, every
    byte of stdout through a pipe and a non-daemon thread's work are those of a normal exit."""
    from medbeam.cli import FULL_SHUTDOWN_ENV

    quick = {**os.environ, "PYTHONPATH": SRC}
    quick.pop(FULL_SHUTDOWN_ENV, None)
    full = {**quick, FULL_SHUTDOWN_ENV: "1"}

    def medbeam(env: dict[str, str], thread: str, *args: str) -> subprocess.CompletedProcess:
        for marker in ("atexit", "thread"):
            (tmp_path / marker).unlink(missing_ok=True)
        return subprocess.run(
            [sys.executable, "-c", _ENDING, str(tmp_path), thread, *args], capture_output=True, text=True, env=env
        )

    for env in (quick, full):
        helped = medbeam(env, "none", "dicom", "export", "--help")
        assert helped.returncode == 0 and "--png-dir" in helped.stdout
        assert (tmp_path / "atexit").read_text() == "ran"
        refused = medbeam(env, "none", "dicom", "export", "--bogus")
        assert refused.returncode == 2 and "unknown option --bogus" in refused.stderr
        assert (tmp_path / "atexit").read_text() == "ran"
        waited = medbeam(env, "thread", "--version")
        assert waited.returncode == 0 and waited.stdout.startswith("medbeam ")
        assert (tmp_path / "thread").read_text() == "done" and (tmp_path / "atexit").read_text() == "ran"
    assert medbeam(quick, "none", "dicom", "--help").stdout == medbeam(full, "none", "dicom", "--help").stdout
