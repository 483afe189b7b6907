"""A run keeps the imported heap out of the collector's passes and hands it back afterwards."""

from __future__ import annotations

import gc

import apache_beam as beam
import pytest

from medbeam.pipelines.runner import imported_heap_frozen, run_job


def test_the_heap_is_frozen_during_a_run_and_thawed_after_it(tmp_path):
    seen = tmp_path / "freeze-counts"

    def note_freeze_count(element: int) -> None:
        with open(seen, "a") as out:  # the DoFn is a pickled copy: it reports through a file
            out.write(f"{gc.get_freeze_count()}\n")

    def build(p: beam.Pipeline) -> None:
        _ = p | beam.Create([1, 2, 3]) | beam.Map(note_freeze_count)

    assert gc.get_freeze_count() == 0
    run_job(build, [], show_progress=False)
    counts = [int(line) for line in seen.read_text().split()]
    assert len(counts) == 3 and all(count > 0 for count in counts)
    assert gc.get_freeze_count() == 0


def test_a_failing_run_still_thaws_the_heap():
    def build(p: beam.Pipeline) -> None:
        _ = p | beam.Create([1]) | beam.Map(lambda x: 1 / 0)

    with pytest.raises(Exception, match="division"):
        run_job(build, [], show_progress=False)
    assert gc.get_freeze_count() == 0


def test_a_callers_own_freeze_is_kept():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with imported_heap_frozen():
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_garbage_made_before_the_run_is_collected_after_it():
    class Cycle:
        pass

    cycle = Cycle()
    cycle.me = cycle  # type: ignore[attr-defined]
    del cycle
    with imported_heap_frozen():
        pass
    assert gc.collect() >= 1
