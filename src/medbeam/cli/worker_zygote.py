"""`python -m medbeam.cli.worker_zygote [--lean] --replies FD`: the process local runs fork their workers from.

Why: each of a local `multi_processing` run's worker processes (medbeam.cli.sdk_worker) used to start a fresh
interpreter and import Beam, pydicom, OpenCV, pyarrow and the job's own modules: ~2.4 CPU-s a worker on the
2-core machine, paid again by every run of a notebook or a benchmark. This process imports all that once,
then forks one child per worker the driver asks for (~5 ms each); the child runs Beam's SDK worker main and
ends as medbeam.cli.sdk_worker does. It is single-threaded and has used none of what it imported (no gRPC
channel, no OpenCV call), which is what makes forking it safe; the driver (medbeam.pipelines.worker_pool)
never forks itself.

Its requests come as JSON lines on stdin, its replies go as JSON lines to the file descriptor `--replies`:

* `{"import": [module, ...]}`: import these medbeam modules now (the job's pipeline module), no reply;
* `{"start": {"env": {...}, "cwd": "..."}}`: fork a worker with exactly this environment and folder,
  reply `{"started": pid}`;
* `{"kill": pid}`: kill that worker (SIGKILL), no reply;
* a worker's end is replied as `{"exited": pid, "code": status, "cpu": seconds}` (status negative: the
  signal that ended it; cpu: its user + system time, which the driver cannot see in its own rusage).

At the end of stdin (the driver closed the pool, or died) it kills any worker still running and exits.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import sys
import traceback
from typing import IO, Any

LEAN_FLAG = "--lean"
REPLIES_FLAG = "--replies"
#: Modules a request may ask to import: medbeam's own (a job's pipeline module and what it imports).
IMPORTABLE_PREFIX = "medbeam."
#: What every worker imports on its first bundles whatever the job (measured: ~0.2 s a worker): gRPC's
#: client side (its data and control channels), and the pyarrow modules that reading and writing Parquet
#: tables pulls in (every job writes its rejects table; reruns read their previous outputs' tables).
WORKER_MODULES = ("grpc._channel", "concurrent.futures.thread", "pyarrow.compute", "pyarrow.dataset", "pyarrow.parquet")
#: A forked worker's exit status when it ended in a way that left no other (an exception past Beam's main).
FAILED_WORKER_STATUS = 70


def main(argv: list[str]) -> None:
    from medbeam.cli import lean_imports
    from medbeam.cli.sdk_worker import BEAM_WORKER_MAIN, prepare_worker

    if LEAN_FLAG in argv:
        lean_imports.defer_unused_clients([])
    replies = os.fdopen(int(argv[argv.index(REPLIES_FLAG) + 1]), "w", buffering=1)
    for name in (BEAM_WORKER_MAIN, *WORKER_MODULES):  # the worker's imports, without running anything
        importlib.import_module(name)
    prepare_worker()
    Zygote(replies).serve()
    os._exit(0)  # nothing of this process needs its modules torn down


class Zygote:
    """The request loop: stdin and child exits (SIGCHLD through a wake-up pipe), one select()."""

    def __init__(self, replies: IO[str]) -> None:
        self.replies = replies
        self.children: set[int] = set()
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_write, False)

    def serve(self) -> None:
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wake-up fd hears of exits
        signal.set_wakeup_fd(self.wake_write)
        pending = b""
        while True:
            ready, _, _ = select.select([0, self.wake_read], [], [])
            if self.wake_read in ready:
                os.read(self.wake_read, 4096)
                self.reap()
            if 0 in ready:
                data = os.read(0, 1 << 16)
                if not data:
                    break
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    if line.strip():
                        self.handle(json.loads(line))
        for pid in self.children:
            _kill(pid)

    def handle(self, request: dict[str, Any]) -> None:
        if "import" in request:
            for name in request["import"]:
                if name.startswith(IMPORTABLE_PREFIX):
                    try:
                        importlib.import_module(name)
                    except Exception:  # noqa: BLE001 - a worker imports it again, and reports it then
                        pass
        elif "start" in request:
            self.reply(started=self.fork(request["start"]))
        elif "kill" in request and request["kill"] in self.children:
            _kill(request["kill"])

    def fork(self, start: dict[str, Any]) -> int:
        # The imported heap goes to the collector's permanent generation first: a worker's collections then
        # never walk it (a full pass over it is ~0.1 s) nor write its objects' GC headers, which would copy
        # the pages it shares with this process (the gc module's advice for fork without exec).
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            self.become_worker(start["env"], start.get("cwd"))
        self.children.add(pid)
        return pid

    def become_worker(self, env: dict[str, str], cwd: str | None) -> None:
        """In the child: drop the zygote's loop (its fds, its signal set-up), take the run's environment and
        folder, run Beam's worker main as medbeam.cli.sdk_worker does, and never return."""
        status = FAILED_WORKER_STATUS
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (self.wake_read, self.wake_write, self.replies.fileno()):
                os.close(fd)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            os.environ.clear()
            os.environ.update(env)
            if cwd:
                os.chdir(cwd)
            run_worker()
            status = 0
        except SystemExit as finished:
            status = finished.code if isinstance(finished.code, int) else (0 if finished.code is None else 1)
        except BaseException:  # noqa: BLE001 - whatever it was, it goes to stderr and the status says so
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(status & 0xFF)

    def reap(self) -> None:
        while self.children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            cpu = usage.ru_utime + usage.ru_stime
            self.reply(exited=pid, code=os.waitstatus_to_exitcode(status), cpu=round(cpu, 6))

    def reply(self, **message: Any) -> None:
        self.replies.write(json.dumps(message) + "\n")


def run_worker() -> None:
    """Beam's SDK worker main, already imported (so not through runpy, as medbeam.cli.sdk_worker runs it
    cold), then the quick end once it returns: its work is done, and idle gRPC threads are left."""
    from apache_beam.runners.worker import sdk_worker_main

    from medbeam.cli import end_process
    from medbeam.cli.sdk_worker import BEAM_WORKER_MAIN

    sys.argv = [BEAM_WORKER_MAIN]
    sdk_worker_main.main(sys.argv)
    end_process(0, wait_for_threads=False)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
