"""Per-process tuning for workers that handle large images; no Beam, safe to call many times.

Why: glibc's malloc hands allocations above its mmap threshold back to the kernel on free, and trims
freed heap beyond its trim threshold. The thresholds adapt upward in a simple loop on the main thread,
but inside a Beam worker (elements processed on harness threads, each with its own malloc arena) every
10 MB pixel buffer of a chest X-ray was mapped fresh and zero-filled again: measured ~3,700 page faults
per 2500×2048 image and ~35% of the export's time per image. Fixing both thresholds keeps freed image
buffers in the process for the next element (at most a few hundred MB per arena retained).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator

_log = logging.getLogger(__name__)

# mallopt(3) parameter numbers (glibc <malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit); larger buffers stay mapped.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: Freed memory at the top of a heap is returned to the kernel only beyond this.
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024
#: glibc's own environment tunables; when the user set any of them, their choice stands.
_USER_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
#: Set to 0 to leave the allocator alone.
OPT_OUT_VARIABLE = "MEDBEAM_TUNE_MALLOC"


@functools.cache
def tune_allocator_for_large_images() -> bool:
    """Fix glibc's mmap and trim thresholds once per process; True when they are (now or before) set.

    Does nothing (returns False) on a C library other than glibc, when the user tuned malloc through
    the environment, or with MEDBEAM_TUNE_MALLOC=0. (Two threads racing here both call mallopt with
    the same values, which is harmless.)
    """
    return _apply()


def _apply() -> bool:
    if os.environ.get(OPT_OUT_VARIABLE, "1") == "0" or any(v in os.environ for v in _USER_TUNABLES):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not ok:
        _log.debug("mallopt refused medbeam's thresholds; the allocator keeps its defaults")
    return ok


@functools.cache
def quiet_pydicom() -> None:
    """A medbeam worker's (or CLI run's) pydicom: no value validation, no log line per tolerated oddity.

    Why here and not at import: importing medbeam must not change a notebook user's pydicom. In a worker,
    validation only costs time (bad values are recorded per element in `value_errors` either way) and
    pydicom's log lines repeat what the rejects table and value_errors already hold.
    """
    import pydicom

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def c_stderr_captured() -> Iterator[Callable[[], str]]:
    """Capture what C libraries write straight to file descriptor 2 while decoding.

    Why: openjpeg (inside pylibjpeg-openjpeg and GDCM) prints messages such as "Invalid number of tiles"
    to stderr even when another decoder then succeeds; on a terminal that is noise among the progress
    bars. The text is not lost: the caller gets it back (`read()`), logs it at DEBUG and adds it to the
    error when no decoder succeeds. One capture at a time (the descriptor is process-wide), and only when
    stderr is a terminal: on a cluster or in a log file nobody is disturbed, and many decoding threads of
    one worker must not wait for each other.
    """
    if not os.isatty(2):
        yield lambda: ""
        return
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)

        def read() -> str:
            sink.seek(0)
            return sink.read().decode("utf-8", "replace").strip()

        try:
            yield read
        finally:
            os.dup2(saved, 2)
            os.close(saved)
