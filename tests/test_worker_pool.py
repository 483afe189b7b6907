"""Local multi_processing workers forked from medbeam's zygote (medbeam.pipelines.worker_pool)."""

from __future__ import annotations

import os
from pathlib import Path

import apache_beam as beam

from medbeam.pipelines import worker_pool
from medbeam.pipelines.runner import run_job

TWO_WORKERS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
MARK = "MEDBEAM_TEST_WORKER_MARK"


def _worker_facts(out: Path) -> set[tuple[int, int, str, str]]:
    """Run a 2-worker pipeline whose workers report (pid, parent pid, folder, MARK) into `out`."""

    def probe(_: int) -> str:  # nested: pickled by value (the workers may not find this test module)
        import os

        return f"{os.getpid()} {os.getppid()} {os.getcwd()} {os.environ.get(MARK)}"

    def build(p: beam.Pipeline) -> None:
        lines = p | beam.Create(list(range(8))) | beam.Reshuffle() | beam.Map(probe)
        _ = lines | beam.io.WriteToText(str(out), shard_name_template="")

    run_job(build, TWO_WORKERS, show_progress=False)
    facts = set()
    for line in out.read_text().splitlines():
        pid, parent, folder, mark = line.split(" ")
        facts.add((int(pid), int(parent), folder, mark))
    return facts


def test_workers_fork_from_one_zygote_per_environment_with_the_runs_folder_and_variables(tmp_path, monkeypatch):
    """Two runs: the same zygote, new workers. A changed environment: a new zygote (the old one ends), and the
    workers see the change. The workers run in the driver's folder of the moment."""
    worker_pool.close_pools()
    monkeypatch.setenv(MARK, "first")
    monkeypatch.chdir(tmp_path)
    runs = [_worker_facts(tmp_path / f"run{i}.txt") for i in (1, 2)]
    zygote = worker_pool.pool(lean=False).process.pid
    for facts in runs:
        assert {parent for _, parent, _, _ in facts} == {zygote}
        assert {(folder, mark) for _, _, folder, mark in facts} == {(str(tmp_path), "first")}
    assert not {pid for pid, *_ in runs[0]} & {pid for pid, *_ in runs[1]}  # each run forks its own workers

    old = worker_pool.pool(lean=False).process
    monkeypatch.setenv(MARK, "second")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    facts = _worker_facts(tmp_path / "run3.txt")
    assert old.poll() is not None  # the zygote of the old environment has ended
    assert {parent for _, parent, _, _ in facts} == {worker_pool.pool(lean=False).process.pid} != {zygote}
    assert {(folder, mark) for _, _, folder, mark in facts} == {(str(tmp_path / "elsewhere"), "second")}


def test_with_the_pool_turned_off_the_workers_start_cold(tmp_path, monkeypatch):
    monkeypatch.setenv(worker_pool.OPT_OUT_VARIABLE, "0")
    monkeypatch.setenv(MARK, "cold")
    facts = _worker_facts(tmp_path / "cold.txt")
    assert {mark for *_, mark in facts} == {"cold"}
    assert all(parent not in {p.process.pid for p in worker_pool._pools.values()} for _, parent, _, _ in facts)  # noqa: SLF001


def test_a_worker_that_fails_reports_its_status_and_the_zygote_serves_on(capfd):
    """Beam's worker main without the runner's variables fails: its status is the zygote's failure status,
    its traceback reaches stderr, and the zygote forks the next worker."""
    from medbeam.cli.worker_zygote import FAILED_WORKER_STATUS

    pool = worker_pool.WorkerPool(lean=True, env=dict(os.environ))
    try:
        first = pool.start({"PATH": os.environ.get("PATH", "")}, os.getcwd())
        assert pool.wait(first) == FAILED_WORKER_STATUS
        second = pool.start({"PATH": os.environ.get("PATH", "")}, os.getcwd())
        assert second != first and pool.wait(second) == FAILED_WORKER_STATUS
        assert pool.alive
    finally:
        pool.close()
    assert pool.process.returncode == 0 and not pool.alive
    assert "CONTROL_API_SERVICE_DESCRIPTOR" in capfd.readouterr().err


def test_forked_workers_start_with_the_zygotes_heap_frozen(tmp_path):
    """The zygote freezes its heap before each fork: a worker's collections leave the shared pages alone."""
    out = tmp_path / "frozen.txt"

    def frozen(_: int) -> str:
        import gc

        return str(gc.get_freeze_count())

    def build(p: beam.Pipeline) -> None:
        counts = p | beam.Create(list(range(4))) | beam.Reshuffle() | beam.Map(frozen)
        _ = counts | beam.io.WriteToText(str(out), shard_name_template="")

    run_job(build, TWO_WORKERS, show_progress=False)
    counts = [int(line) for line in out.read_text().split()]
    assert len(counts) == 4 and min(counts) > 100_000  # Beam's, pydicom's and pyarrow's objects, not a few
