"""Import Apache Beam without the client libraries of services a local command never talks to.

Why: `import apache_beam` imports, best effort, the clients of every service Beam has connectors for
whenever they are installed: boto3 for S3FileSystem, google-cloud-storage for GCSFileSystem, BigQuery,
Pub/Sub and apitools for its GCP connectors, pymongo for MongoDB. With medbeam's `gcp` and `aws` extras
installed that is over half of the import (measured on the 2-core machine, one core: 1.74-1.86 → 0.77-0.80 s),
and a one-file `medbeam dicom export` on local files uses none of them. Beam itself treats each as optional: a
missing one is a `ModuleNotFoundError` it catches, after which its connector for that service is unavailable.

So, for a command whose arguments name no gs:// or s3:// location, no BigQuery option and no Dataflow
runner, `defer_unused_clients` makes those clients look missing *while Beam's package initialises* and
for nothing else: once `apache_beam` is imported the window closes, and any later import of them
(medbeam's BigQuery loader, a user's model plugin) is an ordinary one. What stays behind is Beam's
view from its start-up: in that process Beam has no S3/GCS filesystem, BigQuery, Pub/Sub or MongoDB
connector, which is why the decision is made from the command line, before anything is imported, and
leans towards the full import when in doubt. `MEDBEAM_FULL_IMPORTS=1` turns it off. Beam's worker
processes (`multi_processing`, a cluster) import Beam their own way and are not affected.

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

#: Set (to anything) to import Beam with every client library it finds.
FULL_IMPORTS_ENV = "MEDBEAM_FULL_IMPORTS"
#: Top-level packages (and everything below them) hidden from Beam's start-up.
DEFERRED_CLIENTS = (
    "boto3",
    "botocore",
    "s3transfer",
    "google.cloud",
    "google.api_core",
    "apitools",
    "pymongo",
    "bson",
)
#: Argument fragments that mean the command may need one of them (lower-cased comparison).
_CLOUD_HINTS = ("gs://", "s3://", "dataflow")


def needs_cloud_clients(argv: Sequence[str]) -> bool:
    """Whether a command line may use a service whose client DEFERRED_CLIENTS would hide from Beam."""
    for arg in argv:
        lowered = arg.lower()
        if any(hint in lowered for hint in _CLOUD_HINTS) or lowered.startswith("--bigquery"):
            return True
    return False


def defer_unused_clients(argv: Sequence[str]) -> bool:
    """Install the import window for this command line, unless it needs the clients, Beam is already
    imported, or FULL_IMPORTS_ENV is set. Returns whether the window was installed."""
    if os.environ.get(FULL_IMPORTS_ENV) or "apache_beam" in sys.modules or needs_cloud_clients(argv):
        return False
    if not any(isinstance(finder, BeamImportWindow) for finder in sys.meta_path):
        sys.meta_path.insert(0, BeamImportWindow(DEFERRED_CLIENTS))
    return True


def _is_under(name: str, packages: Sequence[str]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


class BeamImportWindow(importlib.abc.MetaPathFinder):
    """A meta path finder that hides `deferred` packages while (and only while) `apache_beam`'s package
    initialises, then removes itself. Beam's own modules are found and loaded as always."""

    def __init__(self, deferred: Sequence[str]):
        self._deferred = tuple(deferred)
        self._open = False
        self.hidden: list[str] = []  # what Beam asked for and was told is missing (for tests and debugging)

    def find_spec(self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None):
        if self._open:
            if _is_under(name, self._deferred):
                self.hidden.append(name)
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
        if name != "apache_beam":
            return None
        spec = self._real_spec(name, path, target)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _WindowLoader(spec.loader, self)
        return spec

    def _real_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                return spec
        return None

    def run(self, loader: importlib.abc.Loader, module: ModuleType) -> None:
        """Initialise `module` (apache_beam) with the window open; Beam's warnings about the clients it
        could not import are silenced for that time only."""
        previous_disable = logging.root.manager.disable
        logging.disable(logging.WARNING)
        self._open = True
        try:
            loader.exec_module(module)
        finally:
            self._open = False
            logging.disable(previous_disable)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            # Beam's package data and resources are looked up through its real loader.
            module.__loader__ = loader
            if module.__spec__ is not None:
                module.__spec__.loader = loader


class _WindowLoader(importlib.abc.Loader):
    def __init__(self, real: importlib.abc.Loader, window: BeamImportWindow):
        self._real = real
        self._window = window

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._window.run(self._real, module)


__all__ = ["DEFERRED_CLIENTS", "FULL_IMPORTS_ENV", "BeamImportWindow", "defer_unused_clients", "needs_cloud_clients"]
