"""`python -m medbeam.cli.sdk_worker [--lean]`: a local run's worker process, which is Beam's own SDK worker
(`apache_beam.runners.worker.sdk_worker_main`) started and ended the way the `medbeam` command is.

Why: Beam's `multi_processing` workers start as `python -m apache_beam.runners.worker.sdk_worker_main`: each
imports Beam with every cloud client installed, and at exit the interpreter tears down every module. Both
are fixed costs of every multi-process local run. Measured on the 2-core machine, a one-file `dicom export`
on 2 worker processes: 7.3-8.0 s with Beam's workers, 5.5-6.3 s with lean start-up only, and 4.4-4.75 s
with the quick end as well.

* `--lean` (given when the launching command started Beam lean, see medbeam.cli.lean_imports): the worker
  starts Beam without the cloud clients as well. The command line that decided it is the launcher's.
* Before Beam's worker main starts, `prepare_worker` installs what the driver's run_job installed.
* Once Beam's worker main returns, its work is done: the runner has closed the control stream, and what is
  left are idle gRPC and pool threads. The process then ends through `end_process` without waiting for
  them, so atexit handlers run and the streams are flushed, but the modules are not torn down.

medbeam.pipelines.runner starts these processes for local `multi_processing` runs (LocalProcessesRunner).
"""

from __future__ import annotations

import runpy
import sys

#: Beam's worker entry point, run as __main__ in this process.
BEAM_WORKER_MAIN = "apache_beam.runners.worker.sdk_worker_main"
LEAN_FLAG = "--lean"  # medbeam.pipelines.runner.LocalProcessesRunner adds it to the command it starts


def main(argv: list[str]) -> None:
    from medbeam.cli import end_process, lean_imports

    lean = LEAN_FLAG in argv
    if lean:
        lean_imports.defer_unused_clients([])
    prepare_worker()
    sys.argv = [BEAM_WORKER_MAIN, *[arg for arg in argv if arg != LEAN_FLAG]]
    try:
        runpy.run_module(BEAM_WORKER_MAIN, run_name="__main__", alter_sys=True)
        code: object = 0
    except SystemExit as finished:
        code = finished.code
    end_process(code, wait_for_threads=False)
    sys.exit(code)


def prepare_worker() -> None:
    """What a medbeam worker has before Beam's worker main starts, as its driver has it: Beam's DoFn
    introspection memoised and the state samplers' short sleep (medbeam.pipelines.beam_introspection).
    The sampler's matters most here: every bundle's end waits for its sampler's current sleep."""
    from medbeam.pipelines import beam_introspection

    beam_introspection.install()


if __name__ == "__main__":
    main(sys.argv[1:])
