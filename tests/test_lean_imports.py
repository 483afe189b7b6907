"""medbeam.cli.lean_imports: a local command imports Beam without the cloud clients it never uses, and
changes nothing else: the same outputs, later imports of those clients are ordinary ones, and a command
that names a cloud location gets Beam's full import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydicom.data import get_testdata_file

from medbeam.cli import lean_imports

SRC = str(Path(__file__).resolve().parents[1] / "src")
CLIENTS = (
    "boto3", "botocore", "google.cloud.storage", "google.cloud.bigquery", "google.api_core", "pymongo", "requests"
)  # fmt: skip

# In a fresh interpreter: open the window, import Beam, then report what was hidden and what is loaded, and
# show that the clients and Beam's GCS/S3 filesystems still import (ordinary imports once Beam is in).
_WINDOW = """
import json, sys
from medbeam.cli import lean_imports
assert lean_imports.defer_unused_clients(["dicom", "export", "-i", "/data/*.dcm", "--png-dir", "out"])
window = next(f for f in sys.meta_path if isinstance(f, lean_imports.StartUpWindow))
import apache_beam
beam_left = any(isinstance(f, lean_imports.StartUpWindow) for f in sys.meta_path)
import pydicom, pydicom.data.download
report = {
    "window_left": beam_left and any(isinstance(f, lean_imports.StartUpWindow) for f in sys.meta_path),
    "pydicom_has_requests": pydicom.data.download.HAVE_REQUESTS,
    "hidden": sorted(set(window.hidden)),
    "loaded": [m for m in %(clients)r if m in sys.modules],
    "loader": type(apache_beam.__spec__.loader).__name__,
    "root_handlers": len(__import__("logging").root.handlers),
}
import boto3, google.cloud.storage, pymongo, requests
import apache_beam.io.gcp.gcsfilesystem, apache_beam.io.aws.s3filesystem
from apache_beam.io.filesystems import FileSystems
report["schemes"] = sorted({type(FileSystems.get_filesystem(u)).__name__ for u in ("gs://b/x", "s3://b/x")})
print(json.dumps(report))
""" % {"clients": CLIENTS}

# The CLI itself, reporting at exit which clients the whole command loaded.
_CLI = """
import atexit, json, sys
report = sys.argv[1]
atexit.register(lambda: open(report, "w").write(json.dumps([m for m in %(clients)r if m in sys.modules])))
sys.argv = ["medbeam", *sys.argv[2:]]
from medbeam.cli import main
main()
""" % {"clients": CLIENTS}


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": SRC, **extra}
    if not extra:
        env.pop(lean_imports.FULL_IMPORTS_ENV, None)
    return env


def test_beam_starts_without_the_clients_and_they_import_normally_afterwards():
    result = subprocess.run([sys.executable, "-c", _WINDOW], capture_output=True, text=True, env=_env())
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["window_left"]  # it removes itself once Beam and pydicom are initialised
    assert report["pydicom_has_requests"] is False  # pydicom downloads (never, here) through urllib instead
    assert report["loaded"] == []
    for client in ("boto3", "google.cloud", "bson", "requests"):  # Beam asked for each and was told it is missing
        assert any(name == client or name.startswith(client + ".") for name in report["hidden"]), report
    assert report["loader"] == "SourceFileLoader"  # Beam's resources are read through its own loader
    assert report["root_handlers"] == 0  # the silenced warnings left no stderr handler behind
    assert report["schemes"] == ["GCSFileSystem", "S3FileSystem"]
    assert "Failed to import" not in result.stderr and "WARNING" not in result.stderr  # Beam's notes silenced


@pytest.mark.parametrize(
    "argv",
    [
        ["dicom", "export", "-i", "gs://bucket/dicom/*.dcm", "--parquet-dir", "out"],
        ["dicom", "export", "-i", "in", "--parquet-dir", "S3://bucket/tables"],
        ["dicom", "export", "-i", "in", "--parquet-dir", "out", "--bigquery-dataset", "p:d"],
        ["tfrecord", "from-images", "-i", "in", "--bigquery-sql", "SELECT 1"],
        ["files", "untar", "-i", "in", "--runner=DataflowRunner"],
        ["files", "untar", "-i", "in", "--runner", "DataflowRunner", "--temp_location", "/tmp"],
    ],
)
def test_a_command_that_may_use_a_cloud_service_gets_the_full_import(argv):
    assert lean_imports.needs_cloud_clients(argv)


def test_local_commands_and_the_opt_out():
    assert not lean_imports.needs_cloud_clients(["dicom", "export", "-i", "/data/ct", "--png-dir", "png"])
    assert not lean_imports.needs_cloud_clients(["dicom", "export", "--dicomweb", "http://127.0.0.1:8042/dicom-web"])
    import apache_beam  # noqa: F401 - once Beam is imported there is nothing to defer, nothing is installed

    assert not lean_imports.defer_unused_clients(["dicom", "export", "-i", "x"])
    assert not any(isinstance(f, lean_imports.StartUpWindow) for f in sys.meta_path)


def _test_files(folder: Path, *names: str) -> Path:
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(Path(get_testdata_file(name)).read_bytes())
    return folder


def _export_args(source: Path, out: Path, *beam_args: str) -> list[str]:
    return ["dicom", "export", "-i", str(source), "--png-dir", str(out / "png"),
            "--parquet-dir", str(out / "tables"), "--resize", "64", "64", "--no-progress", *beam_args]  # fmt: skip


def _export_outputs(out: Path) -> tuple[dict[str, bytes], list[dict]]:
    """Every PNG's bytes by its path under the PNG folder, and the metadata rows in path order."""
    pngs = {p.relative_to(out / "png").as_posix(): p.read_bytes() for p in sorted((out / "png").rglob("*.png"))}
    rows = pq.read_table(out / "tables" / "dicom_metadata").to_pylist()
    return pngs, sorted(rows, key=lambda row: row["path"])


def test_an_export_through_the_lean_cli_writes_what_the_full_import_writes(tmp_path):
    source = _test_files(tmp_path / "in", "CT_small.dcm", "MR_small.dcm")
    runs = {}
    for mode, env in (("lean", _env()), ("full", _env(**{lean_imports.FULL_IMPORTS_ENV: "1"}))):
        out = tmp_path / mode
        loaded = tmp_path / f"{mode}.json"
        result = subprocess.run([sys.executable, "-c", _CLI, str(loaded), *_export_args(source, out)],
                                capture_output=True, text=True, env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "2 files in, 2 instances written, 2 PNGs, 0 rejected" in result.stdout
        runs[mode] = (*_export_outputs(out), json.loads(loaded.read_text()))
    assert runs["lean"][0] == runs["full"][0] and len(runs["lean"][0]) == 2
    assert runs["lean"][1] == runs["full"][1]
    assert runs["lean"][2] == []  # the whole command ran without them
    assert {"boto3", "requests"} <= set(runs["full"][2])  # installed here: the full import does load them


def test_local_multi_process_runs_start_medbeams_workers(monkeypatch):
    """FnApiRunner in multi_processing gets medbeam's workers (forked from a zygote, or with the pool turned off
    the cold worker command); other runners and modes are Beam's."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from medbeam.pipelines import worker_pool
    from medbeam.pipelines.runner import LocalProcessesRunner, local_processes_runner

    def runner_of(*args: str):
        return local_processes_runner(PipelineOptions(list(args)))

    runner = runner_of("--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    assert isinstance(runner, LocalProcessesRunner)
    forked = runner._default_environment  # noqa: SLF001
    assert isinstance(forked, worker_pool.ForkedWorkersEnvironment)
    assert not forked.lean  # this process has all of Beam
    multi = PipelineOptions(["--runner=FnApiRunner", "--direct_running_mode=multi_processing"])
    told = local_processes_runner(multi, lean=True, preload=["medbeam.pipelines.dicom_export"])
    assert told._default_environment.lean  # noqa: SLF001 - the job said so
    assert told._default_environment.preload == ("medbeam.pipelines.dicom_export",)  # noqa: SLF001
    monkeypatch.setenv(worker_pool.OPT_OUT_VARIABLE, "0")
    cold = local_processes_runner(multi)._default_environment  # noqa: SLF001
    assert cold.command_string == f"{sys.executable} -m medbeam.cli.sdk_worker"
    assert local_processes_runner(multi, lean=True)._default_environment.command_string.endswith(" --lean")  # noqa: SLF001
    assert runner_of("--runner=FnApiRunner", "--direct_running_mode=in_memory") is None
    assert runner_of("--runner=FnApiRunner", "--direct_running_mode=multi_threading") is None
    assert runner_of("--runner=DirectRunner", "--direct_running_mode=multi_processing") is None


def test_an_export_names_its_locations_and_only_local_ones_let_its_workers_start_lean(tmp_path):
    """run() from a library passes ExportConfig.locations to run_job: lean workers unless one needs a client."""
    from medbeam.cloud_hints import needs_cloud_clients
    from medbeam.io.bigquery import BigQueryTarget
    from medbeam.pipelines.dicom_export import ExportConfig

    local = ExportConfig(inputs=["/data/*.dcm"], png_dir=str(tmp_path / "png"), duckdb_path=str(tmp_path / "t.db"))
    named = ["/data/*.dcm", str(tmp_path / "png"), str(tmp_path / "t_parquet"), str(tmp_path / "t.db")]
    assert local.locations() == named
    assert not needs_cloud_clients(local.locations())
    for cloud in (
        ExportConfig(inputs=["gs://bucket/ct/*.dcm"], parquet_dir=str(tmp_path)),
        ExportConfig(inputs=["/data"], png_dir="s3://bucket/png", parquet_dir=str(tmp_path)),
        ExportConfig(inputs=["/data"], parquet_dir=str(tmp_path), bigquery=BigQueryTarget(project="p", dataset="d")),
    ):
        assert needs_cloud_clients(cloud.locations())


def test_an_export_on_two_lean_worker_processes_writes_what_one_worker_writes(tmp_path):
    """Through the CLI: 2 worker processes (medbeam.cli.sdk_worker --lean) and 1 in-memory worker give the same
    PNG bytes and rows, and no worker process is left behind."""
    source = _test_files(tmp_path / "in", "CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtdose.dcm")
    runs = {}
    for mode, beam_args in (
        ("one", ["--direct_num_workers=1", "--direct_running_mode=in_memory"]),
        ("two", ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]),
    ):
        out = tmp_path / mode
        result = subprocess.run([sys.executable, "-m", "medbeam.cli", *_export_args(source, out, *beam_args)],
                                capture_output=True, text=True, env=_env(), timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "4 files in, 4 instances written" in result.stdout
        assert "sdk_worker" not in result.stderr and "INFO:" not in result.stderr  # the workers' chatter stays out
        assert "direct_num_workers" not in result.stderr  # Beam's note on the in_memory hand-over is filtered
        runs[mode] = _export_outputs(out)
    assert runs["one"][0] and runs["one"][0] == runs["two"][0]
    assert runs["one"][1] == runs["two"][1]
    assert _left_behind_workers() == []


def _left_behind_workers() -> list[int]:
    """Worker and zygote processes alive now, other than this test process's own (its library runs' zygote)."""
    found = subprocess.run(["pgrep", "-f", "medbeam.cli.(sdk_worker|worker_zygote)"], capture_output=True, text=True)
    return [pid for pid in map(int, found.stdout.split()) if not _descends_from(pid, os.getpid())]


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return False


_ARROW_POOL = """
import atexit, os, sys
def report():
    import pyarrow
    print(os.environ.get("ARROW_DEFAULT_MEMORY_POOL"), pyarrow.default_memory_pool().backend_name)
atexit.register(report)
sys.argv = ["medbeam", "--version"]
from medbeam.cli import main
main()
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "system system"), ("jemalloc", "jemalloc jemalloc")])
def test_the_command_uses_arrows_system_allocator_unless_told_otherwise(given, expected):
    """mimalloc kept ~11 % more of a 4,000-slice export's memory (medbeam.cli.main); the user's choice stands."""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if given is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = given
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _ARROW_POOL], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == expected
