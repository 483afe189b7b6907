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
