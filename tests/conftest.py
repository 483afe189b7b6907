"""What the test modules share, loaded by pytest for every module under tests/.

* Servers: tests.emulators (the gs:// and s3:// emulators, `store`, `restore_filesystem_options`),
  tests.orthanc (the `orthanc` and `orthanc_auth` DICOMweb servers) and tests.bigquery_emulator
  (`bigquery_emulator`, a local BigQuery API): one of each per session, started by the first test that
  asks for it.
* `closed_port`: a loopback port nobody listens on.
* Helpers the modules import (tests.helpers): the DICOM test files (`TEST_FILES`, `data_store()`,
  `dicom_file`, `copy_dicom`), the files every DICOM corpus adds to be rejected (`write_unusable_files`),
  `free_port`, `digests`, `tree`, `query`, `read_rejects`, `gz`, `zst`.
"""

from __future__ import annotations

import pytest

from tests.helpers import free_port

pytest_plugins = ["tests.emulators", "tests.orthanc", "tests.bigquery_emulator"]


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: a server that is down."""
    return free_port()
