"""The per-process allocator tuning that keeps large image buffers from being re-faulted per element."""

from __future__ import annotations

import functools
import platform

import pytest

from medbeam import worker


def test_thresholds_are_set_on_glibc_and_left_alone_elsewhere(monkeypatch):
    for name in (*worker._USER_TUNABLES, worker.OPT_OUT_VARIABLE):  # noqa: SLF001 - glibc's own variables
        monkeypatch.delenv(name, raising=False)
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert worker._apply() is glibc  # noqa: SLF001 - the uncached tuning itself
    # The process's own cached answer was given whenever something first asked (perhaps another test, in
    # another environment): check the caching on a fresh cache of the same function, counting the tunings.
    applied = []
    apply = worker._apply  # noqa: SLF001

    def counting_apply() -> bool:
        applied.append(True)
        return apply()

    monkeypatch.setattr(worker, "_apply", counting_apply)
    fresh = functools.cache(worker.tune_allocator_for_large_images.__wrapped__)
    assert fresh() is glibc
    assert fresh() is glibc and len(applied) == 1  # once per process, cached
    assert worker.tune_allocator_for_large_images() is worker.tune_allocator_for_large_images()


@pytest.mark.parametrize(
    "variable, value",
    [
        ("MEDBEAM_TUNE_MALLOC", "0"),
        ("MALLOC_MMAP_THRESHOLD_", "1048576"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1"),
    ],
)
def test_the_users_choice_stands(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    assert worker._apply() is False  # noqa: SLF001 - the uncached tuning itself


def test_c_stderr_is_captured_on_a_terminal_and_left_alone_elsewhere():
    import os
    import pty
    import subprocess
    import sys

    code = (
        "import os\n"
        "from medbeam.worker import c_stderr_captured\n"
        "with c_stderr_captured() as read:\n"
        "    os.write(2, b'Invalid number of tiles\\n')\n"
        "    print('captured:', repr(read()))\n"
    )
    # stderr a pipe (a log, a cluster): nothing captured, the text reaches stderr as before
    piped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Invalid number of tiles" in piped.stderr and "captured: ''" in piped.stdout
    # stderr a terminal: the text is handed back to the caller instead of drawn among the progress bars
    main, secondary = pty.openpty()
    try:
        on_tty = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=secondary, text=True)
        os.close(secondary)
        secondary = None
        leaked = b""
        os.set_blocking(main, False)
        try:
            leaked = os.read(main, 4096)
        except (BlockingIOError, OSError):
            pass
    finally:
        if secondary is not None:
            os.close(secondary)
        os.close(main)
    assert on_tty.returncode == 0
    assert "captured: 'Invalid number of tiles'" in on_tty.stdout
    assert b"Invalid number of tiles" not in leaked
