"""A per-class memo for Beam's DoFn introspection, which is a large share of every run's fixed cost (and two
more of Beam's per-run costs cut: a probe's import and a sampler's wait, at the end of this text).

Why: Beam asks `userstate.get_dofn_specs(dofn)` (which state and timer parameters a DoFn's methods declare)
about 7 times per DoFn per run: ParDo's constructor and validation, graph serialisation, the runner's
stateful-DoFn checks, and again for each unpickled copy when the bundle processors are built. Each call
walks `dir(dofn)` and builds an `inspect.signature` of every bound method, ~25 per DoFn. Measured on the
2-core machine (CPU time, in-process, medians of 8-12 alternated runs): `medbeam infer` on one record, ~110
calls, 0.43 → 0.30 s a run; `medbeam dicom export` of one file 0.63 → 0.41 s.

The answer depends only on the bound methods' signatures, that is on the class and on which class attributes
the instance shadows, unless the instance changes how attributes resolve: a bound method stored on the
instance (Beam's exception-handling wrapper sets its own `process`), or a class with `__getattr__` / its own
`__getattribute__` (that wrapper delegates to the DoFn it wraps). Those are never memoised; everything else is
looked up once per (class, shadowed names) and handed out as fresh sets, so a caller that changes the sets
changes nothing shared. Beam's own function is what computes every answer, so the result is the same by
construction (tests/test_beam_introspection.py checks it on stateful, timer and plain DoFns, and on a stateful
pipeline run).

Two more of Beam's per-run introspections are memoised the same way, each by what alone decides it:

* `typehints.decorators.get_signature` (`inspect.signature` with Beam's fallbacks): ~650 calls a run (every
  DoFn method's arguments, at construction, serialisation and again for each unpickled copy), of ~150
  functions. Memoised per plain function (a bound method: per its function, bound), while the function's
  code, defaults and annotations are the objects they were; never for a function that carries its own
  `__signature__` or `__wrapped__`, nor for builtins, partials or callable objects.
* `typehints.decorators.IOTypeHints.from_callable` (the type hints a DoFn's `process`, a Map's function…
  declare): ~110 calls a one-file export, 8-9 ms of its ~95, most of it resolving string annotations
  (`from __future__ import annotations`) against the module's globals again. Memoised per function as
  get_signature is, and also while its globals dict, and for a bound method its owner's class (Beam
  resolves names in the class's namespace too), are the same objects; each caller gets its own copy of
  the answer's lists and dicts. Beam's switch that turns the lookup off is obeyed.
* `core._check_fn_use_yield_and_return` (ParDo's constructor reads each `process` method's source with
  `inspect.getsourcelines` to warn when it both yields and returns): per code object. Its warnings are
  given the first time only.

And one weight: the runner's state cache weighs each cached value (side inputs: 6 a one-file export) with
objsize, which lists every loaded module's globals again per value to leave them out (~2 ms a value with
~2,300 modules). `get_deep_size` keeps that list while the number of modules stays the same: 12 → 2 ms a
run, the same weights (tests/test_beam_introspection.py).

Memos are weak: a function, or code, that is gone (a lambda of an earlier run) leaves nothing behind.

One probe is answered without its import: `interactive_utils.is_in_ipython` (asked when a pipeline is built
and run, to label transforms by notebook cell) imports IPython to call `get_ipython()`, ~80 ms a process
wherever IPython is installed (a Jupyter environment). No IPython shell can run in a process that has not
imported IPython, so there the answer is False without the import; once IPython is imported, Beam's own
function answers.

And one wait is cut short: each bundle's StateSampler (a thread that samples which step is running, for Beam's
msec metrics) sleeps between samples, growing to 200 ms, and the bundle's end joins it, so waits for the
current sleep. Measured in `dicom export` runs of 200-500 files: 133-184 ms of idle wall time a run in 13
bundles, against 31-47 ms with the sleep capped at 20 ms. The local runner's samplers here sleep at most
SAMPLING_PERIOD_MS (2 ms: ~500 wake-ups a second, each a lock and an addition without the GIL). 10 → 2 ms:
a one-file export 325 → 307 ms (medians of 12 alternated in-process runs), 500 CT slices 5.47 → 5.43 s.
"""

from __future__ import annotations

import inspect
import sys
import types
import weakref
from typing import Any

from apache_beam import pipeline as beam_pipeline
from apache_beam.runners.direct import direct_runner
from apache_beam.runners.worker import statecache, statesampler
from apache_beam.transforms import core, ptransform, userstate, util
from apache_beam.typehints import decorators
from apache_beam.utils import interactive_utils
from objsize import traverse as objsize_traverse

beams_get_dofn_specs = userstate.get_dofn_specs
beams_get_signature = decorators.get_signature
beams_check_fn_use_yield_and_return = core._check_fn_use_yield_and_return  # noqa: SLF001 - replaced by a memo
beams_is_in_ipython = interactive_utils.is_in_ipython
#: modules that call is_in_ipython through a name of their own (imported from interactive_utils)
_IPYTHON_PROBE_USERS = (interactive_utils, beam_pipeline, direct_runner)
#: modules that call get_signature through a name of their own (imported from decorators)
_SIGNATURE_USERS = (decorators, core, ptransform, util)
_memo: dict[tuple[type, frozenset[str]], tuple[frozenset, frozenset]] = {}


def _memo_key(dofn: Any) -> tuple[type, frozenset[str]] | None:
    """What decides the answer: the class, and which of its attributes the instance shadows (Beam's Map
    stores its function as the instance's `process`, which get_dofn_specs then skips, not being a bound
    method). None where the instance itself decides: a bound method stored on it, or custom lookup."""
    cls = type(dofn)
    if cls.__getattribute__ is not object.__getattribute__ or hasattr(cls, "__getattr__"):
        return None
    instance_attributes = getattr(dofn, "__dict__", None)
    if instance_attributes is None:
        return None
    if any(isinstance(value, types.MethodType) for value in instance_attributes.values()):
        return None
    return cls, frozenset(name for name in instance_attributes if hasattr(cls, name))


def get_dofn_specs(dofn: Any) -> tuple[set, set]:
    """`userstate.get_dofn_specs`, computed once per DoFn class where the class alone decides it."""
    key = _memo_key(dofn)
    if key is None:
        return beams_get_dofn_specs(dofn)
    found = _memo.get(key)
    if found is None:
        states, timers = beams_get_dofn_specs(dofn)  # raises as Beam would (duplicate parameters) and memoises nothing
        found = _memo.setdefault(key, (frozenset(states), frozenset(timers)))  # atomic: threads may race here
    return set(found[0]), set(found[1])


_signatures: weakref.WeakKeyDictionary[Any, tuple[tuple, inspect.Signature]] = weakref.WeakKeyDictionary()
_bound_signatures: weakref.WeakKeyDictionary[Any, tuple[tuple, inspect.Signature]] = weakref.WeakKeyDictionary()
_yield_and_return: weakref.WeakKeyDictionary[types.CodeType, bool] = weakref.WeakKeyDictionary()


def _what_decides(function: types.FunctionType) -> tuple | None:
    """The objects a function's signature is made of (compared by identity); None: not memoisable."""
    if "__signature__" in function.__dict__ or "__wrapped__" in function.__dict__:
        return None
    return function.__code__, function.__defaults__, function.__kwdefaults__, function.__annotations__


def get_signature(func: Any) -> inspect.Signature:
    """Beam's `get_signature`, once per plain function or bound method's function (see the module's doc)."""
    if isinstance(func, types.MethodType) and type(func.__func__) is types.FunctionType:
        function, memo = func.__func__, _bound_signatures
    elif type(func) is types.FunctionType:
        function, memo = func, _signatures
    else:
        return beams_get_signature(func)
    decides = _what_decides(function)
    if decides is None:
        return beams_get_signature(func)
    found = memo.get(function)
    if found is not None and all(a is b for a, b in zip(found[0], decides, strict=True)):
        return found[1]
    signature = beams_get_signature(func)
    memo[function] = (decides, signature)  # Signature objects are immutable: one is shared safely
    return signature


beams_from_callable = decorators.IOTypeHints.from_callable
_hints: weakref.WeakKeyDictionary[Any, tuple[tuple, Any, Any]] = weakref.WeakKeyDictionary()
_bound_hints: weakref.WeakKeyDictionary[Any, tuple[tuple, Any, Any]] = weakref.WeakKeyDictionary()
_NO_HINTS = object()  # memoised "no annotations" (Beam's None)


def _no_owner() -> None:
    """The owner reference of a plain function's memo entry."""


def from_callable(fn: Any) -> Any:
    """Beam's `IOTypeHints.from_callable`, once per function (see the module's doc); a fresh copy each call."""
    if decorators._disable_from_callable or getattr(fn, "_beam_no_annotations", False):  # noqa: SLF001
        return beams_from_callable(fn)
    if isinstance(fn, types.MethodType) and type(fn.__func__) is types.FunctionType:
        function, memo = fn.__func__, _bound_hints
        owner: type | None = fn.__self__ if isinstance(fn.__self__, type) else type(fn.__self__)
    elif type(fn) is types.FunctionType:
        function, memo, owner = fn, _hints, None
    else:
        return beams_from_callable(fn)
    decides = _what_decides(function)
    if decides is None:
        return beams_from_callable(fn)
    decides += (function.__globals__,)
    found = memo.get(function)
    if found is not None and found[1]() is owner and all(a is b for a, b in zip(found[0], decides, strict=True)):
        hints = found[2]
    else:
        hints = beams_from_callable(fn)
        # The owner held weakly: its class dict holds the function, which would then never leave the memo.
        owner_ref = _no_owner if owner is None else weakref.ref(owner)
        memo[function] = (decides, owner_ref, _NO_HINTS if hints is None else hints)
    if hints is None or hints is _NO_HINTS:
        return None
    (args, kwargs), (outputs, output_kwargs) = hints.input_types, hints.output_types
    return hints._replace(
        input_types=(args, dict(kwargs)), output_types=(outputs, dict(output_kwargs)), origin=list(hints.origin)
    )


def check_fn_use_yield_and_return(fn: Any) -> bool:
    """Beam's check of a `process` method's source, once per code object."""
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType):
        return beams_check_fn_use_yield_and_return(fn)
    found = _yield_and_return.get(code)
    if found is None:
        found = _yield_and_return[code] = bool(beams_check_fn_use_yield_and_return(fn))
    return found


#: The longest sleep of a bundle's state-sampling thread (Beam's default: 200 ms), see the module's doc.
SAMPLING_PERIOD_MS = 2
beams_state_sampler = statesampler.StateSampler


class StateSampler(beams_state_sampler):
    """Beam's StateSampler with a shorter longest sleep, so that a bundle's end does not wait up to 200 ms."""

    def __init__(self, prefix: Any, counter_factory: Any, sampling_period_ms: int = SAMPLING_PERIOD_MS):
        super().__init__(prefix, counter_factory, sampling_period_ms=sampling_period_ms)


def is_in_ipython() -> bool:
    """Beam's answer; False without importing IPython where no IPython shell can be running."""
    if "IPython" not in sys.modules:
        return False
    return beams_is_in_ipython()


beams_get_deep_size = statecache.get_deep_size
_module_dicts: dict[str, Any] = {"count": -1, "ids": frozenset()}


def _module_dict_ids() -> frozenset[int]:
    """The ids of every loaded module's globals dict, worked out again when the number of modules changes."""
    modules = list(sys.modules.values())
    if len(modules) != _module_dicts["count"]:
        ids = set()
        for module in modules:
            try:
                ids.add(id(vars(module)))
            except TypeError:
                pass
        _module_dicts.update(count=len(modules), ids=frozenset(ids))
    return _module_dicts["ids"]


def get_deep_size(*objs: Any) -> int:
    """Beam's weight of a state-cache value (objsize with Beam's size, referents and filter functions), with
    the modules' globals it leaves out known before, not listed again from sys.modules for every value."""
    settings = objsize_traverse.ObjSizeSettings(
        get_referents_func=statecache._get_referents_func,  # noqa: SLF001 - Beam's own, as it passes them
        filter_func=statecache._filter_func,  # noqa: SLF001
        get_size_func=statecache._size_func,  # noqa: SLF001
        exclude_modules_globals=False,
    )
    context = objsize_traverse.TraversalContext(settings)
    context.exclude_set.update(_module_dict_ids())
    return context.get_deep_size(*objs)


def install() -> None:
    """Route Beam's lookups through the memo (idempotent). Every Beam caller reaches the function through
    the `userstate` module (its own is_stateful_dofn / validate_stateful_dofn, `userstate.get_dofn_specs`
    elsewhere), except the legacy direct runner's evaluator, which imported it by name; medbeam does not
    use that runner, and it keeps Beam's unmemoised function."""
    userstate.get_dofn_specs = get_dofn_specs
    for module in _SIGNATURE_USERS:
        module.get_signature = get_signature
    core._check_fn_use_yield_and_return = check_fn_use_yield_and_return  # noqa: SLF001
    decorators.IOTypeHints.from_callable = staticmethod(from_callable)  # every caller asks the class
    for module in _IPYTHON_PROBE_USERS:
        module.is_in_ipython = is_in_ipython
    statesampler.StateSampler = StateSampler  # what bundle processors build (statesampler.StateSampler(...))
    statecache.get_deep_size = get_deep_size  # what its WeightedValue and cache weigh values with


def memo() -> dict[tuple[type, frozenset[str]], tuple[frozenset, frozenset]]:
    """What has been memoised: (class, shadowed names) → (state specs, timer specs); for tests."""
    return dict(_memo)
