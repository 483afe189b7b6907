"""What every job's run() shares: Beam options for local runs, and counters read back after a run."""

from __future__ import annotations

import os

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

_LOCAL_RUNNER_HINTS = ("direct", "prism", "fnapi")


def is_local_runner(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    return runner is None or any(h in str(runner).lower() for h in _LOCAL_RUNNER_HINTS)


def local_beam_args(beam_args: list[str], parallel: bool, workers: int | None = None) -> list[str]:
    """Beam args for a local run.

    With no --runner, the DirectRunner's batch engine (FnApiRunner) is named outright: Beam's DirectRunner
    would first try to download the Prism runner from GitHub, which an offline machine waits for and an
    online one silently switches to. With `parallel` (a large input) every core is used
    (`multi_processing`, `workers` or all cores) unless the user chose the running mode or worker count.
    """
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append("--runner=FnApiRunner")
    chosen = any(a.startswith(("--direct_running_mode", "--direct_num_workers")) for a in args)
    cores = os.cpu_count() or 1
    if parallel and not chosen and cores > 1:
        count = min(cores, workers) if workers else cores
        if count > 1:
            args += ["--direct_running_mode=multi_processing", f"--direct_num_workers={count}"]
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
