"""Which arguments may need a cloud service's client library: one rule for the CLI's lean start-up
(medbeam.cli.lean_imports, from its command line) and for a job's local worker processes
(medbeam.pipelines.runner, from the locations the job names). Imports nothing: the CLI asks before Beam is in.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Fragments that mean the argument may need one of the clients (lower-cased comparison).
CLOUD_HINTS = ("gs://", "s3://", "dataflow")


def needs_cloud_clients(args: Iterable[str]) -> bool:
    """Whether any argument may use a service whose client the lean start-up would hide from Beam: a gs://
    or s3:// location, a Dataflow runner, a `--bigquery*` option. Leans to True when in doubt."""
    for arg in args:
        lowered = arg.lower()
        if any(hint in lowered for hint in CLOUD_HINTS) or lowered.startswith("--bigquery"):
            return True
    return False
