"""Beam steps of `infer` / `embed`: records → model inputs (the plugin), RunInference with our model handler,
outputs → table rows (the plugin), every failure a reject.

Why a model handler of our own (`ArrayModelHandler`) rather than Beam's per-framework ones: Beam's
TensorFlow handler needs tensorflow_hub and loads SavedModels (Keras 3 loads only .keras/.h5), its ONNX
handler feeds the first input only and its large-model path fails to pickle onnxruntime's NodeArg, and one
handler over `medbeam.models.runtimes` gives every format the same batching, device choice and per-element
failure handling. Beam's own pieces do the rest: `RunInference` batches (`min/max_batch_size`), shares one
loaded model between the threads of a process (and across processes with `large_model`), and
`KeyedModelHandler` carries each record's ids through, so outputs can never be paired with the wrong ids.

A batch that fails is retried one element at a time, so one bad element (a wrong-shape image, an input
the model refuses) is one reject, not a lost batch; an element whose shape differs from what the model
declares is refused before the batch is run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.pvalue import TaggedOutput
from google.protobuf.message import DecodeError

from medbeam.io import tfrecord as tfr
from medbeam.models import runtimes
from medbeam.models.plugins import RecordError
from medbeam.transforms import metrics
from medbeam.transforms.errors import reject

NAMESPACE = "medbeam.infer"
REJECTS = "rejects"


class ModelInput(np.ndarray):
    """A model input as it travels between steps: a float32 array (a view of it, no copy) that Beam encodes
    with `ModelInputCoder`.

    Why not the plain array: Beam sizes a sample of every step's outputs (its byte counters: the first
    10 elements of each, then ~10·ln(N/10)), and a numpy array is sized by pickling it, 200 kB per
    224 × 224 image, in each batch list again: ~0.1 ms per image on one core, a tenth of a small CNN's
    cost. This coder sizes it from `nbytes` and encodes dtype, shape and raw bytes."""


class ModelInputCoder(beam.coders.Coder):
    """dtype, shape and the raw bytes of a ModelInput (deterministic); its size is read, never encoded."""

    def encode(self, value: np.ndarray) -> bytes:
        array = np.ascontiguousarray(value)
        header = json.dumps([array.dtype.str, list(array.shape)]).encode()
        return len(header).to_bytes(4, "big") + header + array.tobytes()

    def decode(self, encoded: bytes) -> ModelInput:
        size = int.from_bytes(encoded[:4], "big")
        dtype, shape = json.loads(encoded[4 : 4 + size])
        return np.frombuffer(encoded, np.dtype(dtype), offset=4 + size).reshape(shape).view(ModelInput)

    def estimate_size(self, value: Any) -> int:
        return int(getattr(value, "nbytes", 0)) + 32

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> type:
        return ModelInput


beam.coders.registry.register_coder(ModelInput, ModelInputCoder)


def count(name: str, value: int = 1) -> None:
    metrics.inc(NAMESPACE, name, value)


class InferenceFailure:
    """What run_inference returns for an element the model could not take (the reason, one line)."""

    def __init__(self, reason: str):
        self.reason = reason


def _fits(shape: tuple, declared: tuple | None) -> bool:
    if declared is None:
        return True
    return len(shape) == len(declared) and all(d is None or d == s for s, d in zip(shape, declared, strict=True))


def _describe(shape: Sequence[Any]) -> str:
    return " × ".join("any" if d is None else str(d) for d in shape)


def _stacked(arrays: list[np.ndarray]) -> np.ndarray:
    """The batch array. One writable element: a view with a batch axis, not a copy (what B = 1 would pay
    on every image); a read-only one (decoded from a shuffle) is copied, as runtimes may write to it."""
    if len(arrays) == 1 and arrays[0].flags.writeable:
        return arrays[0][None]
    return np.stack(arrays)


class ArrayModelHandler(ModelHandler[np.ndarray, Any, runtimes.LoadedModel]):
    """H × W × C float32 arrays → one model output each, for any format medbeam.models.runtimes loads."""

    def __init__(self, spec: runtimes.ModelSpec, batch_size: int = 32, large_model: bool = False):
        super().__init__()
        self._spec, self._batch_size, self._large = spec, batch_size, large_model

    def load_model(self) -> runtimes.LoadedModel:
        return runtimes.load(self._spec)

    def run_inference(
        self, batch: Sequence[np.ndarray], model: runtimes.LoadedModel, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        count(f"batches_{model.device}")  # counted here: metrics of load_model (outside a step) are dropped
        outputs: list[Any] = [None] * len(batch)
        runnable = []
        for index, element in enumerate(batch):
            if _fits(element.shape, model.input_shape):
                runnable.append(index)
            else:
                outputs[index] = InferenceFailure(
                    f"input is {_describe(element.shape)}, the model takes {_describe(model.input_shape)}"
                )
        groups: dict[tuple, list[int]] = {}
        for index in runnable:
            groups.setdefault(batch[index].shape, []).append(index)
        for indices in groups.values():
            try:
                result = model.predict(_stacked([np.asarray(batch[i]) for i in indices]))
                if len(result) != len(indices):
                    raise ValueError(f"the model gave {len(result)} outputs for {len(indices)} inputs")
                for i, out in zip(indices, result, strict=True):
                    outputs[i] = out
            except Exception:  # noqa: BLE001 - retried one by one: only the elements that fail are rejected
                for i in indices:
                    try:
                        outputs[i] = model.predict(np.asarray(batch[i])[None])[0]
                    except Exception as exc:  # noqa: BLE001
                        outputs[i] = InferenceFailure(f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}")
        # No example in the results: the rows need only the output, and Beam's byte counters would pickle
        # the 200 kB image of each sampled result to size it.
        return [PredictionResult(None, out) for out in outputs]

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        """The batch's size for Beam's metrics, without pickling it (Beam's default: ~3.6 ms per 32 images)."""
        return sum(int(getattr(element, "nbytes", 0)) for element in batch)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        # A fixed size: BatchElements' timing metrics (two distributions a batch) would only say so.
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size, "record_metrics": False}

    def share_model_across_processes(self) -> bool:
        return self._large

    def get_metrics_namespace(self) -> str:
        return NAMESPACE


def record_uri(source: str, index: int) -> str:
    return f"{source}#record {index}"


@beam.typehints.with_output_types(tuple[tuple[str, dict], ModelInput])
class PrepareFn(beam.DoFn):
    """(record uri, [serialized Example]) → (ids, model input), or a reject (the record is not usable).

    It takes the spreading GroupByKey's output as it is (a uri is one record's key, so its group holds that
    record): no Reshuffle around it (its five steps per element, and the pickled timestamp wrapper
    it puts on every record). Unspread (`grouped=False`, one in-memory worker): (record uri, Example)."""

    def __init__(self, plugin: Any, grouped: bool = True):
        self._plugin, self._grouped = plugin, grouped

    def start_bundle(self) -> None:
        self._records = 0

    def finish_bundle(self) -> None:
        count("records_in", self._records)  # once per bundle, not per record

    def process(self, element: tuple[str, Any]) -> Iterator[Any]:
        uri, records = element
        for data in records if self._grouped else (records,):
            self._records += 1
            try:
                features = tfr.decode_example(data)
                ids = self._plugin.example_to_row(features)
                pixels = np.asarray(self._plugin.example_to_input(features), np.float32)
            except (RecordError, ValueError, KeyError, DecodeError) as exc:
                count("rejected")
                yield TaggedOutput(REJECTS, reject(uri, "input", exc))
                continue
            yield (uri, ids), pixels.view(ModelInput)


class ToRowFn(beam.DoFn):
    """((uri, ids), PredictionResult) → the table row (ids + the plugin's columns, or the feature vector)."""

    def __init__(self, plugin: Any, embed: bool):
        self._plugin, self._embed = plugin, embed

    def start_bundle(self) -> None:
        self._rows = 0

    def finish_bundle(self) -> None:
        count("rows_written", self._rows)  # once per bundle, not per row

    def process(self, element: tuple[tuple[str, dict], PredictionResult]) -> Iterator[Any]:
        (uri, ids), result = element
        inference = result.inference
        if isinstance(inference, InferenceFailure):
            count("rejected")
            yield TaggedOutput(REJECTS, reject(uri, "inference", inference.reason, "InferenceError"))
            return
        row = dict(ids)
        try:
            if self._embed:
                row["feature_vector"] = [float(v) for v in np.asarray(inference, np.float32).ravel()]
            else:
                row.update(self._plugin.output_to_row(inference))
        except (RecordError, ValueError) as exc:
            count("rejected")
            yield TaggedOutput(REJECTS, reject(uri, "output", exc))
            return
        self._rows += 1
        yield row


class FailedBatchesFn(beam.DoFn):
    """RunInference's dead letters (a batch that raised outside our handler's guard): one reject each."""

    def process(self, element: Any) -> Iterator[dict[str, str]]:
        batch, error = element if isinstance(element, tuple) and len(element) == 2 else (element, "failed")
        items = batch if isinstance(batch, list) else [batch]
        for item in items:
            key = item[0] if isinstance(item, tuple) else ("?", "")
            count("rejected")
            yield reject(key[0] if isinstance(key, tuple) else str(key), "inference", str(error), "InferenceError")


@beam.typehints.with_output_types(tuple[str, str])
class ListShardsFn(beam.DoFn):
    """Impulse → (path, path) for each shard: keyed by itself, so a GroupByKey deals the shards out."""

    def __init__(self, shards: list[str]):
        self._shards = list(shards)

    def process(self, _: Any) -> Iterator[tuple[str, str]]:
        for path in self._shards:
            yield path, path


class ReadRecordsFn(beam.DoFn):
    """(shard path, [shard path]) → (record uri, serialized record) for each record, the framing checked.

    The uri (shard#record index) is unique, so a GroupByKey on it spreads the records over the workers
    (what a Reshuffle does, in one step). Unspread (`grouped=False`): (shard path, shard path)."""

    def __init__(self, grouped: bool = True):
        self._grouped = grouped

    def process(self, element: tuple[str, Any]) -> Iterator[Any]:
        from medbeam.io import files

        for path in element[1] if self._grouped else (element[1],):
            try:
                with files.Storage().open(path) as stream:
                    for index, record in enumerate(tfr.iter_records(stream, path)):
                        yield record_uri(path, index), record
            except tfr.CorruptRecordError as exc:
                count("rejected")
                count("records_in")
                yield TaggedOutput(REJECTS, reject(path, "read", exc))
