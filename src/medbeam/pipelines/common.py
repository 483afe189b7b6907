"""What every job's run() shares: Beam options for local runs, and counters read back after a run."""

from __future__ import annotations

import os

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
)

_LOCAL_RUNNER_HINTS = ("direct", "prism", "fnapi")


def is_local_runner(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    return runner is None or any(h in str(runner).lower() for h in _LOCAL_RUNNER_HINTS)


def runs_in_one_local_worker(options: PipelineOptions) -> bool:
    """True for the DirectRunner's in-memory mode with one worker: nothing to spread work over.

    A Reshuffle there only adds transforms (~20 ms of build and run time each on this machine) and
    a copy of every element; on any other runner or mode it is what fans work out, and stays.
    """
    direct = options.view_as(DirectOptions)
    mode = direct.direct_running_mode or "in_memory"
    return is_local_runner(options) and mode == "in_memory" and (direct.direct_num_workers or 1) <= 1


def local_beam_args(
    beam_args: list[str], parallel: bool, workers: int | None = None, mode: str = "multi_processing"
) -> list[str]:
    """Beam args for a local run.

    With no --runner, the DirectRunner's batch engine (FnApiRunner) is named outright: Beam's DirectRunner
    would first try to download the Prism runner from GitHub, which an offline machine waits for and an
    online one silently switches to. With `parallel` (a large input) the run fans out, unless the user
    chose the running mode or worker count: `multi_processing` over every core (at most `workers`), or
    `multi_threading` with `workers` threads for work that waits on a server.
    """
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append("--runner=FnApiRunner")
    chosen = any(a.startswith(("--direct_running_mode", "--direct_num_workers")) for a in args)
    if not parallel or chosen:
        return args
    cores = os.cpu_count() or 1
    count = (workers or 1) if mode == "multi_threading" else min(cores, workers or cores)
    if count > 1:
        args += [f"--direct_running_mode={mode}", f"--direct_num_workers={count}"]
    return args


def counters_from(result: beam.runners.runner.PipelineResult, namespace: str) -> dict[str, int]:
    """Beam Metrics counters of one namespace, summed (committed where the runner reports it)."""
    values: dict[str, int] = {}
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(namespace))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        name = counter.key.metric.name
        values[name] = values.get(name, 0) + int(value or 0)
    return values
