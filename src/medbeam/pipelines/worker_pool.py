"""Local `multi_processing` workers forked from a warm process (medbeam.cli.worker_zygote), not started cold.

Why: a cold worker process (`python -m medbeam.cli.sdk_worker`) imports Beam, pydicom, OpenCV, pyarrow and
the job's modules before its first bundle: ~2.4 CPU-s each on the 2-core machine, ~2 s of wall time a run
on 2 workers, and again for every run in a notebook or benchmark. Here one zygote process per (worker
flags, environment) does those imports once and forks each worker in ~5 ms; it stays for the next run of
this process and ends with it.

What does not change: the runner (Beam's FnApiRunner), the number of workers, what each worker runs (Beam's
SDK worker main, as medbeam.cli.sdk_worker runs it), its environment (os.environ at the run, plus Beam's
control, logging and options variables, as Beam's SubprocessSdkWorker gives them), its folder, its stdout
and stderr, and a failed worker failing the run. Only on Linux (fork); MEDBEAM_WORKER_POOL=0 turns it off.
Either way the workers are the cold ones (Beam's SubprocessSDKEnvironment with the same command). Stale
code: a zygote keeps the medbeam modules it imported; a run after medbeam's files changed on disk, in the
same process, gets the old ones, as its own driver does.

Wiring: LocalProcessesRunner gives FnApiRunner a `ForkedWorkersEnvironment` (its own URN), whose workers
`ForkedSdkWorkerHandler` starts; both are registered with Beam here.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from apache_beam.portability.api import beam_fn_api_pb2_grpc, endpoints_pb2
from apache_beam.runners.portability.fn_api_runner.worker_handlers import GrpcWorkerHandler, WorkerHandler
from apache_beam.transforms import environments
from apache_beam.transforms.environments import Environment

_log = logging.getLogger(__name__)

URN = "medbeam:env:forked_workers:v1"
OPT_OUT_VARIABLE = "MEDBEAM_WORKER_POOL"  # "0": cold worker processes
ZYGOTE_MODULE = "medbeam.cli.worker_zygote"
WORKER_MODULE = "medbeam.cli.sdk_worker"
LEAN_FLAG = "--lean"  # medbeam.cli.sdk_worker.LEAN_FLAG and medbeam.cli.worker_zygote.LEAN_FLAG


def available() -> bool:
    """Whether local runs fork their workers: Linux (fork is safe there, and is what the zygote does)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and os.environ.get(OPT_OUT_VARIABLE) != "0"


def worker_command(lean: bool) -> str:
    """The cold worker's command (Beam's SubprocessSDKEnvironment), also the fallback of a forked one."""
    return f"{sys.executable} -m {WORKER_MODULE}" + (f" {LEAN_FLAG}" if lean else "")


class WorkerPool:
    """One zygote process and the workers it forked: start(env) → pid, wait(pid) → exit status, kill(pid).

    Requests are written under a lock (so the `started` replies come back in their order); one daemon
    thread reads every reply.
    """

    def __init__(self, lean: bool, env: Mapping[str, str]) -> None:
        replies_read, replies_write = os.pipe()
        flags = [LEAN_FLAG] if lean else []
        command = [sys.executable, "-m", ZYGOTE_MODULE, *flags, "--replies", str(replies_write)]
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, pass_fds=(replies_write,), env=dict(env))
        finally:
            os.close(replies_write)
        self._replies = os.fdopen(replies_read, "rb")
        self._lock = threading.Lock()
        self._started: queue.Queue[int | None] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._ended = threading.Condition()
        self.closed = False
        self.owner = os.getpid()  # a process forked from this one inherits the object, not the zygote
        self._reader = threading.Thread(target=self._read, name="medbeam-worker-pool", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return not self.closed and self.process.poll() is None

    def preload(self, modules: Sequence[str]) -> None:
        """Have the zygote import these medbeam modules (once) before the next worker it forks."""
        if modules:
            with self._lock:
                self._send({"import": list(modules)})

    def start(self, env: Mapping[str, str], cwd: str, preload: Sequence[str] = ()) -> int:
        """Fork a worker with exactly `env` in `cwd`, after importing `preload` (medbeam modules) once."""
        self.preload(preload)
        with self._lock:
            self._send({"start": {"env": dict(env), "cwd": cwd}})
            pid = self._started.get()
        if pid is None:
            raise RuntimeError("medbeam's worker pool process ended before it started a worker")
        return pid

    def wait(self, pid: int) -> int | None:
        """The worker's exit status (negative: its signal), or None when the zygote ended first."""
        with self._ended:
            while pid not in self._exits and not self.closed:
                self._ended.wait()
            return self._exits.pop(pid, None)

    def kill(self, pid: int) -> None:
        try:
            self._send({"kill": pid})
        except OSError:
            pass

    def close(self) -> None:
        """End the zygote (it kills workers still running) and wait for it."""
        try:
            self.process.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def _send(self, request: dict[str, Any]) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(json.dumps(request).encode() + b"\n")
        stdin.flush()

    def _read(self) -> None:
        for line in self._replies:
            message = json.loads(line)
            if "started" in message:
                self._started.put(message["started"])
            elif "exited" in message:
                _add_worker_cpu(float(message.get("cpu", 0.0)))
                with self._ended:
                    self._exits[message["exited"]] = message["code"]
                    self._ended.notify_all()
        with self._ended:
            self.closed = True
            self._ended.notify_all()
        self._started.put(None)


_worker_cpu = [0.0]
_worker_cpu_lock = threading.Lock()


def _add_worker_cpu(seconds: float) -> None:
    with _worker_cpu_lock:
        _worker_cpu[0] += seconds


def forked_workers_cpu_seconds() -> float:
    """CPU seconds (user + system) of every forked worker of this process that has ended: what
    `resource.getrusage(RUSAGE_CHILDREN)` shows of cold workers, which are this process's own children,
    and not of forked ones, which are the zygote's (for benchmarks)."""
    with _worker_cpu_lock:
        return _worker_cpu[0]


_pools: dict[tuple[bool, str], WorkerPool] = {}
_pools_lock = threading.Lock()


def pool(lean: bool) -> WorkerPool:
    """This process's zygote for `lean` workers in today's environment, started if there is none (or the
    environment changed since: what a module read from it at import time would be out of date)."""
    env = dict(os.environ)
    key = (lean, json.dumps(sorted(env.items())))
    with _pools_lock:
        current = _pools.get(key)
        if current is not None and current.alive and current.owner == os.getpid():
            return current
        for old_key in [k for k in _pools if k[0] == lean]:
            old = _pools.pop(old_key)
            if old.owner == os.getpid():
                old.close()
        _pools[key] = created = WorkerPool(lean, env)
        return created


def warm(environment: Environment) -> None:
    """Start the zygote of a run's forked workers now (when the runner is made, before the pipeline is built
    and started), so that its imports overlap the driver's work; any other environment: nothing."""
    if isinstance(environment, ForkedWorkersEnvironment):
        try:
            pool(environment.lean).preload(environment.preload)
        except OSError as exc:  # the workers will say it again, and start cold
            _log.debug("medbeam's worker pool did not start: %s", exc)


@atexit.register
def close_pools() -> None:
    """End every zygote (at exit, and in tests that want a cold start)."""
    with _pools_lock:
        while _pools:
            old = _pools.popitem()[1]
            if old.owner == os.getpid():
                old.close()


@Environment.register_urn(URN, bytes)
class ForkedWorkersEnvironment(Environment):
    """Workers forked from a zygote: `lean` as the cold worker's flag, `preload` the job's medbeam modules."""

    def __init__(
        self,
        lean: bool,
        preload: Iterable[str] = (),
        capabilities: Iterable[str] = (),
        artifacts: Iterable[Any] = (),
        resource_hints: Mapping[str, bytes] | None = None,
    ) -> None:
        super().__init__(capabilities, artifacts, resource_hints)
        self.lean = lean
        self.preload = tuple(preload)

    @classmethod
    def for_job(cls, lean: bool, preload: Iterable[str] = ()) -> ForkedWorkersEnvironment:
        return cls(lean, preload, capabilities=environments.python_sdk_capabilities(), artifacts=())

    def __eq__(self, other: object) -> bool:
        return (
            super().__eq__(other)
            and isinstance(other, ForkedWorkersEnvironment)
            and (self.lean, self.preload) == (other.lean, other.preload)
        )

    def __hash__(self) -> int:
        return hash((super().__hash__(), self.lean, self.preload))

    def __repr__(self) -> str:
        return f"ForkedWorkersEnvironment(lean={self.lean}, preload={self.preload})"

    def to_runner_api_parameter(self, context: Any) -> tuple[str, bytes]:
        return URN, json.dumps({"lean": self.lean, "preload": list(self.preload)}).encode()

    @staticmethod
    def from_runner_api_parameter(
        payload: bytes, capabilities: Iterable[str], artifacts: Iterable[Any], resource_hints: Any, context: Any
    ) -> ForkedWorkersEnvironment:
        spec = json.loads(payload)
        return ForkedWorkersEnvironment(spec["lean"], spec["preload"], capabilities, artifacts, resource_hints)


@WorkerHandler.register_environment(URN, bytes)
class ForkedSdkWorkerHandler(GrpcWorkerHandler):
    """Beam's SubprocessSdkWorkerHandler, with the worker forked from the pool instead of started cold."""

    def __init__(self, payload: bytes, state: Any, provision_info: Any, grpc_server: Any) -> None:
        super().__init__(state, provision_info, grpc_server)
        self._spec = json.loads(payload)

    def start_worker(self) -> None:
        self.worker = ForkedSdkWorker(self._spec, self.control_address, self.provision_info, self.worker_id)
        self.worker_thread = threading.Thread(name="run_worker", target=self.worker.run)
        self.worker_thread.start()

    def stop_worker(self) -> None:
        self.worker_thread.join()


class ForkedSdkWorker:
    """One worker's life, as Beam's local_job_service.SubprocessSdkWorker.run lives it: a logging server for
    it, its environment variables, then the process (forked here) until it ends; a non-zero status fails."""

    def __init__(self, spec: Mapping[str, Any], control_address: str, provision_info: Any, worker_id: str | None):
        self._spec = spec
        self._control_address = control_address
        self._provision_info = provision_info
        self._worker_id = worker_id

    def run(self) -> None:
        import grpc
        from apache_beam.runners.portability.local_job_service import BeamFnLoggingServicer, SubprocessSdkWorker
        from apache_beam.utils import thread_pool_executor
        from google.protobuf import json_format, text_format

        options = [("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)]
        logging_server = grpc.server(thread_pool_executor.shared_unbounded_instance(), options=options)
        logging_port = logging_server.add_insecure_port("[::]:0")
        logging_server.start()
        beam_fn_api_pb2_grpc.add_BeamFnLoggingServicer_to_server(BeamFnLoggingServicer(), logging_server)
        env = dict(
            os.environ,
            CONTROL_API_SERVICE_DESCRIPTOR=text_format.MessageToString(
                endpoints_pb2.ApiServiceDescriptor(url=self._control_address)
            ),
            LOGGING_API_SERVICE_DESCRIPTOR=text_format.MessageToString(
                endpoints_pb2.ApiServiceDescriptor(url=f"localhost:{logging_port}")
            ),
            PIPELINE_OPTIONS=json_format.MessageToJson(self._provision_info.provision_info.pipeline_options),
        )
        if self._worker_id:
            env["WORKER_ID"] = self._worker_id
        lean = bool(self._spec["lean"])
        try:
            workers = pool(lean)
            pid = workers.start(env, os.getcwd(), self._spec.get("preload", ()))
        except (OSError, RuntimeError) as exc:
            logging_server.stop(0)
            _log.warning("medbeam's worker pool failed (%s); this worker starts cold", exc)
            cold = SubprocessSdkWorker(
                worker_command(lean).encode(), self._control_address, self._provision_info, self._worker_id
            )
            cold.run()
            return
        status: int | None = None
        try:
            status = workers.wait(pid)
            if status is None:
                raise RuntimeError(f"medbeam's worker pool process ended while worker {pid} ran")
            if status:
                raise RuntimeError(f"Worker subprocess exited with return code {status}")
        finally:
            if status is None:
                workers.kill(pid)
            logging_server.stop(0)
