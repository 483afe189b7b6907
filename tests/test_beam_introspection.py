"""The per-class memo of Beam's DoFn introspection gives Beam's own answers, and stateful DoFns still run."""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
import pytest
from apache_beam.coders import VarIntCoder
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain

from medbeam.pipelines import beam_introspection


class _Plain(beam.DoFn):
    def process(self, element):
        yield element


class _Stateful(beam.DoFn):
    """Sums the values of each key in state; a watermark timer emits the sum when the window ends."""

    TOTAL = userstate.ReadModifyWriteStateSpec("total", VarIntCoder())
    FLUSH = userstate.TimerSpec("flush", TimeDomain.WATERMARK)

    def process(
        self,
        element,
        total=beam.DoFn.StateParam(TOTAL),
        flush=beam.DoFn.TimerParam(FLUSH),
        window=beam.DoFn.WindowParam,
    ):
        total.write((total.read() or 0) + element[1])
        flush.set(window.end)

    @userstate.on_timer(FLUSH)
    def emit(self, key=beam.DoFn.KeyParam, total=beam.DoFn.StateParam(TOTAL)):
        yield key, total.read()


class _Holder:
    def method(self, element):
        return element


def _dofns() -> list[beam.DoFn]:
    mapped = beam.Map(lambda x: x + 1).fn  # Beam stores the function as the instance's `process`
    bound = beam.Map(_Holder().method).fn  # a bound method, which Map wraps in a lambda
    builtin = beam.FlatMap(str.split).fn  # a method descriptor as `process`
    return [_Plain(), _Stateful(), mapped, bound, builtin]


@pytest.mark.parametrize("index", range(5))
def test_the_memo_gives_beams_answer(index: int) -> None:
    dofn = _dofns()[index]
    expected = beam_introspection.beams_get_dofn_specs(dofn)
    assert beam_introspection.get_dofn_specs(dofn) == expected
    assert beam_introspection.get_dofn_specs(_dofns()[index]) == expected  # another instance: from the memo


def test_the_memo_keys_on_the_class_and_hands_out_fresh_sets() -> None:
    states, timers = beam_introspection.get_dofn_specs(_Stateful())
    assert states == {_Stateful.TOTAL} and timers == {_Stateful.FLUSH}
    states.clear()
    again, _ = beam_introspection.get_dofn_specs(_Stateful())
    assert again == {_Stateful.TOTAL}
    assert beam_introspection.get_dofn_specs(_Plain()) == (set(), set())


def test_a_bound_method_on_the_instance_is_never_memoised() -> None:
    dofn = _Plain()
    dofn.process = _Holder().method  # the instance, not its class, decides what get_dofn_specs inspects
    assert beam_introspection.get_dofn_specs(dofn) == beam_introspection.beams_get_dofn_specs(dofn)
    assert (type(dofn), frozenset({"process"})) not in beam_introspection.memo()


def test_duplicate_parameters_are_still_refused() -> None:
    class Twice(beam.DoFn):
        def process(self, element, a=beam.DoFn.WindowParam, b=beam.DoFn.WindowParam):
            yield element

    with pytest.raises(ValueError, match="duplicate"):
        beam_introspection.get_dofn_specs(Twice())


def test_stateful_pipelines_run_with_the_memo_installed() -> None:
    beam_introspection.install()
    assert userstate.get_dofn_specs is beam_introspection.get_dofn_specs
    with beam.Pipeline("FnApiRunner") as p:
        sums = p | beam.Create([("a", 1), ("b", 2), ("a", 3)]) | beam.ParDo(_Stateful())
        assert_that(sums, equal_to([("a", 4), ("b", 2)]))
        batches = (
            p
            | "More" >> beam.Create([("k", i) for i in range(5)])
            | beam.GroupIntoBatches(2)
            | beam.MapTuple(lambda key, values: (key, sorted(values)))
        )
        assert_that(
            batches | beam.Map(lambda kv: len(kv[1])) | beam.combiners.ToList() | beam.Map(sorted),
            equal_to([[1, 2, 2]]),
            label="batches",
        )


def _scaled(element, factor=2, *, offset: int = 0):
    return element * factor + offset


class _YieldsAndReturns(beam.DoFn):
    def process(self, element):
        if element:
            return [element]
        yield element


def test_signatures_are_beams_and_follow_a_changed_function() -> None:
    from apache_beam.typehints import decorators

    beam_introspection.install()
    plain = _Plain()
    for func in (_scaled, plain.process, _Plain().process, lambda x, y=1: x):
        assert beam_introspection.get_signature(func) == beam_introspection.beams_get_signature(func)
    assert beam_introspection.get_signature(plain.process) is beam_introspection.get_signature(_Plain().process)
    assert list(beam_introspection.get_signature(plain.process).parameters) == ["element"]  # bound: no self
    before = decorators.get_signature(_scaled)
    assert decorators.get_signature(_scaled) is before  # the installed memo
    original = _scaled.__defaults__
    try:
        _scaled.__defaults__ = (3,)
        after = decorators.get_signature(_scaled)
        assert after.parameters["factor"].default == 3 and after == beam_introspection.beams_get_signature(_scaled)
    finally:
        _scaled.__defaults__ = original


def test_wrapped_functions_and_callables_keep_beams_own_lookup() -> None:
    import functools

    @functools.wraps(_scaled)
    def wrapper(*args, **kwargs):
        return _scaled(*args, **kwargs)

    partial = functools.partial(_scaled, factor=5)
    for func in (wrapper, partial, len, str.upper):
        assert beam_introspection.get_signature(func) == beam_introspection.beams_get_signature(func)
    assert wrapper not in beam_introspection._signatures  # noqa: SLF001 - what is memoised


def test_the_yield_and_return_check_is_beams() -> None:
    for fn in (_YieldsAndReturns().process, _Plain().process, _scaled):
        expected = beam_introspection.beams_check_fn_use_yield_and_return(fn)
        assert beam_introspection.check_fn_use_yield_and_return(fn) is expected
        assert beam_introspection.check_fn_use_yield_and_return(fn) is expected  # memoised
    assert beam_introspection.check_fn_use_yield_and_return(_YieldsAndReturns().process) is True


def test_the_ipython_probe_answers_without_importing_ipython(monkeypatch) -> None:
    """No import while IPython is not loaded (the answer can only be False); Beam's own answer once it is."""
    import subprocess
    import sys
    import types

    from apache_beam import pipeline
    from apache_beam.runners.direct import direct_runner
    from apache_beam.utils import interactive_utils

    beam_introspection.install()
    for module in (interactive_utils, pipeline, direct_runner):
        assert module.is_in_ipython is beam_introspection.is_in_ipython
    code = (  # with the CLI's lean start-up: here google-cloud-bigquery itself would import IPython (its tqdm)
        "import sys\n"
        "from medbeam.cli import lean_imports\n"
        "lean_imports.defer_unused_clients([])\n"
        "import apache_beam as beam\n"
        "from medbeam.pipelines import beam_introspection\n"
        "beam_introspection.install()\n"
        "with beam.Pipeline() as p:\n"
        "    _ = p | beam.Create([1, 2]) | beam.Map(lambda x: x + 1)\n"
        "assert 'IPython' not in sys.modules, 'IPython imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr

    shell = types.SimpleNamespace(config={})
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: shell  # a running shell: Beam's function is asked, and says so
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert beam_introspection.is_in_ipython() is True
    fake.get_ipython = lambda: None  # IPython imported, no shell
    assert beam_introspection.is_in_ipython() is False
    monkeypatch.delitem(sys.modules, "IPython")
    assert beam_introspection.is_in_ipython() is False


def test_bundle_samplers_sleep_briefly_and_still_sample() -> None:
    """The local runner's state samplers are Beam's, with a 10 ms longest sleep (a bundle's end joins it)."""
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    beam_introspection.install()
    sampler = statesampler.StateSampler("step-", CounterFactory())
    assert isinstance(sampler, beam_introspection.beams_state_sampler)
    assert sampler.sampling_period_ms == beam_introspection.SAMPLING_PERIOD_MS == 2
    assert statesampler.StateSampler("s", CounterFactory(), sampling_period_ms=50).sampling_period_ms == 50
    with beam.Pipeline() as p:  # bundles run, and finish, with the short sampler
        assert_that(p | beam.Create(range(100)) | beam.Map(lambda x: x * 2), equal_to([x * 2 for x in range(100)]))


def test_state_cache_weights_are_beams():
    """The memoised weigher gives Beam's statecache.get_deep_size answer, module globals left out alike,
    also after a module is imported between two calls."""
    import json
    import sys
    import types

    import numpy as np
    import pyarrow as pa

    from medbeam.pipelines import beam_introspection

    class Row:
        def __init__(self) -> None:
            self.values = {"a": [1, 2, 3], "b": "text" * 10, "shared": json.dumps}

    values = [
        [{"path": f"/data/{i}.dcm", "size": i} for i in range(50)],
        np.zeros((64, 64), dtype=np.uint16),
        pa.schema([("a", pa.int64()), ("b", pa.string())]),
        (Row(), Row(), None, b"bytes" * 100),
        {"module": beam_introspection, "globals": vars(json)},  # module dicts are left out by both
    ]
    for value in values:
        assert beam_introspection.get_deep_size(value) == beam_introspection.beams_get_deep_size(value)
    sys.modules["medbeam_test_new_module"] = new = types.ModuleType("medbeam_test_new_module")
    try:
        new.payload = list(range(1000))
        holder = {"its globals": vars(new)}
        assert beam_introspection.get_deep_size(holder) == beam_introspection.beams_get_deep_size(holder)
    finally:
        del sys.modules["medbeam_test_new_module"]


class _Hinted(beam.DoFn):
    def process(self, element: tuple[str, int], *, scale: float = 1.0) -> Iterator[dict[str, int]]:
        yield {element[0]: element[1]}


class _HintedChild(_Hinted):
    pass


def _hinted(path: str) -> tuple[str, bool]:
    return path, True


def _unhinted(path):
    return path


def test_type_hints_are_beams_once_per_function_and_a_fresh_copy_each_time() -> None:
    from apache_beam.typehints import decorators

    beam_introspection.install()
    for fn in (_hinted, _unhinted, _Hinted().process, _HintedChild().process, lambda x: x, str.upper, len):
        mine, beams = decorators.IOTypeHints.from_callable(fn), beam_introspection.beams_from_callable(fn)
        assert (mine is None) == (beams is None), fn
        if beams is not None:
            assert (mine.input_types, mine.output_types) == (beams.input_types, beams.output_types), fn
    assert _hinted in beam_introspection._hints  # noqa: SLF001 - what is memoised
    first = decorators.IOTypeHints.from_callable(_Hinted().process)
    first.input_types[1]["scale"] = int  # a caller that changes its copy changes nothing shared
    first.origin.append("changed")
    again = decorators.IOTypeHints.from_callable(_Hinted().process)
    assert again.input_types[1]["scale"] is not int and "changed" not in again.origin
    assert again.output_types == ((beam.typehints.Iterator[beam.typehints.Dict[str, int]],), {})
    original = _hinted.__annotations__
    try:
        _hinted.__annotations__ = {"path": "int", "return": "int"}
        changed = decorators.IOTypeHints.from_callable(_hinted)
        assert changed.input_types == ((int,), {}) and changed.output_types == ((int,), {})
    finally:
        _hinted.__annotations__ = original


def test_type_hints_lookup_stays_off_where_beam_turns_it_off(monkeypatch) -> None:
    from apache_beam.typehints import decorators

    beam_introspection.install()
    monkeypatch.setattr(decorators, "_disable_from_callable", True)
    assert decorators.IOTypeHints.from_callable(_hinted) is None
