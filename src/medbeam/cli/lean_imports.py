"""Start Apache Beam (and pydicom) without the client libraries of services a local command never talks to.

Why: `import apache_beam` imports, best effort, the clients of every service Beam has connectors for
whenever they are installed: boto3 for S3FileSystem, google-cloud-storage for GCSFileSystem, BigQuery,
Pub/Sub, apitools and requests for its GCP connectors, pymongo for MongoDB. With medbeam's `gcp` and `aws` extras
installed that is over half of the import (measured on the 2-core machine, one core: 1.74-1.86 → 0.77-0.80 s),
and a one-file `medbeam dicom export` on local files uses none of them. Beam itself treats each as optional: a
missing one is a `ModuleNotFoundError` it catches, after which its connector for that service is unavailable.
pydicom likewise imports requests (~0.12 s) only to download its own test files, with urllib as its fallback.

So, for a command whose arguments name no gs:// or s3:// location, no BigQuery option and no Dataflow
runner, `defer_unused_clients` makes those clients look missing *while Beam's package initialises* and
for nothing else (and requests while pydicom's does, for every command): once the package is imported its
window closes, and any later import of them (medbeam's BigQuery loader or DICOMweb client, a user's model
plugin) is an ordinary one. What stays behind is the package's view from its start-up: in that process Beam
has no S3/GCS filesystem, BigQuery, Pub/Sub or MongoDB connector, which is why the decision is made from the
command line, before anything is imported, and leans towards the full import when in doubt.
`MEDBEAM_FULL_IMPORTS=1` turns it off. A local `multi_processing` run's workers (medbeam.cli.sdk_worker)
start the same way when the launching command did, or when the job names every location it touches and
none needs a client (`locations` of medbeam.pipelines.runner.run_job, the same rule: medbeam.cloud_hints);
a cluster's workers import Beam their own way.

Only the CLI does this; importing medbeam as a library changes nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from medbeam.cloud_hints import needs_cloud_clients

#: Set (to anything) to import Beam and pydicom with every client library they find.
FULL_IMPORTS_ENV = "MEDBEAM_FULL_IMPORTS"
#: Top-level packages (and everything below them) hidden from Beam's start-up (requests: only its GCP
#: metadata helper imports it there).
DEFERRED_CLIENTS = (
    "boto3",
    "botocore",
    "s3transfer",
    "google.cloud",
    "google.api_core",
    "apitools",
    "pymongo",
    "bson",
    "requests",
)
#: pydicom imports requests (~0.12 s: urllib3, idna, charset-normalizer, certifi) only to download its test
#: files, and falls back to urllib without it; medbeam's own HTTP (DICOMweb) imports requests when it runs.
PYDICOM_DEFERRED = ("requests",)
#: What each package is started without. The cloud clients only when the command line needs none of them.
_CLOUD_FREE = {"apache_beam": DEFERRED_CLIENTS, "pydicom": PYDICOM_DEFERRED}
_ANY_COMMAND = {"pydicom": PYDICOM_DEFERRED}


#: Packages this process started through a StartUpWindow (so without what their plan hid).
_started_lean: set[str] = set()


def started_lean(package: str = "apache_beam") -> bool:
    """Whether `package` initialised in this process with its plan's packages hidden."""
    return package in _started_lean



def defer_unused_clients(argv: Sequence[str]) -> bool:
    """Install the start-up window for this command line, unless FULL_IMPORTS_ENV is set; packages already
    imported are left as they are. Returns whether Beam will start without the cloud clients."""
    if os.environ.get(FULL_IMPORTS_ENV) or any(isinstance(f, StartUpWindow) for f in sys.meta_path):
        return False
    plan = _ANY_COMMAND if needs_cloud_clients(argv) else _CLOUD_FREE
    plan = {package: hidden for package, hidden in plan.items() if package not in sys.modules}
    if plan:
        sys.meta_path.insert(0, StartUpWindow(plan))
    return "apache_beam" in plan


def _is_under(name: str, packages: Sequence[str]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


class StartUpWindow(importlib.abc.MetaPathFinder):
    """A meta path finder that hides packages while (and only while) a given package initialises:
    `hidden_while[package]` during `import package`'s own execution. Removes itself once every package
    of the plan has initialised. The packages themselves are found and loaded as always."""

    def __init__(self, hidden_while: dict[str, Sequence[str]]):
        self._pending = {package: tuple(hidden) for package, hidden in hidden_while.items()}
        self._open: dict[str, tuple[str, ...]] = {}
        self.hidden: list[str] = []  # what was asked for and told it is missing (for tests and debugging)

    def find_spec(self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None):
        if any(_is_under(name, hidden) for hidden in self._open.values()):
            self.hidden.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        if name not in self._pending:
            return None
        spec = self._real_spec(name, path, target)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _WindowLoader(spec.loader, self, name)
        return spec

    def _real_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                return spec
        return None

    def run(self, package: str, loader: importlib.abc.Loader, module: ModuleType) -> None:
        """Initialise `module` with its window open; the packages' warnings about what they could not
        import are silenced for that time only."""
        previous_disable = logging.root.manager.disable
        handlers_before = list(logging.root.handlers)
        logging.disable(logging.WARNING)
        self._open[package] = self._pending.pop(package)
        try:
            loader.exec_module(module)
            _started_lean.add(package)
        finally:
            del self._open[package]
            logging.disable(previous_disable)
            # A silenced module-level `logging.warning(...)` still gives an unconfigured root logger its
            # default stderr handler (logging.basicConfig): the package's full import would have added none.
            for handler in [h for h in logging.root.handlers if h not in handlers_before]:
                logging.root.removeHandler(handler)
            if not self._pending and not self._open and self in sys.meta_path:
                sys.meta_path.remove(self)
            # The package's data and resources are looked up through its real loader.
            module.__loader__ = loader
            if module.__spec__ is not None:
                module.__spec__.loader = loader


class _WindowLoader(importlib.abc.Loader):
    def __init__(self, real: importlib.abc.Loader, window: StartUpWindow, package: str):
        self._real = real
        self._window = window
        self._package = package

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._window.run(self._package, self._real, module)


__all__ = [
    "DEFERRED_CLIENTS",
    "FULL_IMPORTS_ENV",
    "PYDICOM_DEFERRED",
    "StartUpWindow",
    "defer_unused_clients",
    "needs_cloud_clients",
]
