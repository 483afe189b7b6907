"""What a record means to a model: Google's three plug functions as one small interface (no Beam here).

Google's inference_to_bigquery.py was specialised per dataset by three functions; here they are the three
methods of a `Plugin`:

- `example_to_row(features)`: the record's id columns (what the prediction row is joined on);
- `example_to_input(features)`: one model input, no batch dimension (height × width × channels float32);
- `output_to_row(output)`: one model output → the prediction columns;

plus `id_columns` and `output_columns` (name → Arrow type), which make the table's schema. Built-ins:

- `mimic-cxr` (`cxr prepare` records, Google's MIMIC-CXR contract): ids patient, study, image, view,
  dataset (+ path, dicom_id when present); predictions: the 14 label logits, FLOAT64, named as the labels.
- `dicom-png` (`tfrecord from-dicom-png`, `dicom export --tfrecord-prefix`): ids study, series, instance,
  frame; predictions: `prediction`, the output vector.
- `images` (`tfrecord from-images`): ids path + every label feature, carried through; `prediction`.

The built-in image decoding gives height × width × channels (the image's own channel count) float32 in
[0, 1], Google's default; `scale="-1,1"` gives [-1, 1] and `scale="0,255"` the raw values. A user's plugin
is any object with these members, named `module:object` (a class is instantiated with no arguments).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from medbeam.datasets.cxr import LABEL_COLUMNS
from medbeam.imaging.codec import decode_image
from medbeam.io.tfrecord import FeatureValue

SCALES = {"0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0), "0,255": (0.0, 255.0)}


class RecordError(ValueError):
    """A record the plugin cannot use (a missing feature, an undecodable image); the pipeline rejects it."""


class Plugin(Protocol):
    id_columns: dict[str, pa.DataType]
    output_columns: dict[str, pa.DataType]

    def example_to_row(self, features: Mapping[str, FeatureValue]) -> dict[str, Any]: ...

    def example_to_input(self, features: Mapping[str, FeatureValue]) -> np.ndarray: ...

    def output_to_row(self, output: np.ndarray) -> dict[str, Any]: ...


def _one(features: Mapping[str, FeatureValue], name: str) -> Any:
    feature = features.get(name)
    if feature is None or len(feature.values) != 1:
        raise RecordError(f"the record has no single-valued feature {name!r}")
    value = feature.values[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _optional(features: Mapping[str, FeatureValue], name: str) -> Any:
    return _one(features, name) if name in features and len(features[name].values) == 1 else None


class ImagePlugin:
    """Shared by the built-ins: the image feature decoded to H × W × C float32, scaled."""

    image_feature = "jpg_bytes"

    def __init__(self, scale: str = "0,1", image_feature: str | None = None):
        if scale not in SCALES:
            raise ValueError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
        self.scale = scale
        if image_feature is not None:
            self.image_feature = image_feature

    def example_to_input(self, features: Mapping[str, FeatureValue]) -> np.ndarray:
        feature = features.get(self.image_feature)
        if feature is None or not feature.values:
            names = [n for n in ("jpg_bytes", "png_bytes") if n in features]
            raise RecordError(f"the record has no {self.image_feature!r}" + (f" (it has {names[0]})" if names else ""))
        try:
            pixels = decode_image(feature.values[0])
        except ValueError as exc:
            raise RecordError(f"{self.image_feature}: {exc}") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        top = 65535.0 if pixels.dtype == np.uint16 else 255.0
        low, high = SCALES[self.scale]
        return (pixels.astype(np.float32) * ((high - low) / top) + low).astype(np.float32)

    def output_to_row(self, output: np.ndarray) -> dict[str, Any]:
        return {"prediction": [float(v) for v in np.asarray(output, np.float64).ravel()]}

    output_columns = {"prediction": pa.list_(pa.float64())}


class MimicCxrPlugin(ImagePlugin):
    """`cxr prepare` records → ids + the 14 label logits (Google's MIMIC-CXR predictions schema)."""

    id_columns = {
        "patient": pa.int64(), "study": pa.int64(), "image": pa.int64(), "view": pa.int64(),
        "dataset": pa.int64(), "path": pa.string(), "dicom_id": pa.string(),
    }  # fmt: skip
    output_columns = {name: pa.float64() for name in LABEL_COLUMNS}

    def example_to_row(self, features: Mapping[str, FeatureValue]) -> dict[str, Any]:
        row = {name: _one(features, name) for name in ("patient", "study", "image", "view", "dataset")}
        row["path"] = _optional(features, "path")
        row["dicom_id"] = _optional(features, "dicom_id")
        return row

    def output_to_row(self, output: np.ndarray) -> dict[str, Any]:
        values = np.asarray(output, np.float64).ravel()
        if values.size != len(LABEL_COLUMNS):
            raise RecordError(f"the model gives {values.size} outputs per image; mimic-cxr wants {len(LABEL_COLUMNS)}")
        return dict(zip(LABEL_COLUMNS, map(float, values), strict=True))


class DicomPngPlugin(ImagePlugin):
    """DICOM PNG records → study, series, instance, frame + the output vector."""

    image_feature = "png_bytes"
    id_columns = {"study": pa.string(), "series": pa.string(), "instance": pa.string(), "frame": pa.int64()}

    def example_to_row(self, features: Mapping[str, FeatureValue]) -> dict[str, Any]:
        row = {name: _one(features, name) for name in ("study", "series", "instance")}
        row["frame"] = _optional(features, "frame") or 1
        return row


class ImagesPlugin(ImagePlugin):
    """`tfrecord from-images` records → path + their label features, carried through as they are.

    The label columns are known only from the records: `label_columns` (name → Arrow type) is filled from
    the dataset's features.json by the pipeline (`with_labels`), so the schema does not depend on which
    record comes first."""

    id_columns: dict[str, pa.DataType] = {"path": pa.string()}

    def __init__(self, scale: str = "0,1", image_feature: str | None = None):
        super().__init__(scale, image_feature)
        self.id_columns = dict(ImagesPlugin.id_columns)

    def with_labels(self, specs: Sequence[Mapping[str, Any]]) -> ImagesPlugin:
        """Add the label features of a features.json spec as id columns (typed from the spec)."""
        types = {"int64": pa.int64(), "float32": pa.float64(), "string": pa.string()}
        for spec in specs:
            name = spec["name"]
            if name in ("path", "jpg_bytes", "png_bytes"):
                if name != "path":
                    self.image_feature = name
                continue
            base = types[spec["dtype"]]
            self.id_columns[name] = pa.list_(base) if spec.get("varlen") else base
        return self

    def example_to_row(self, features: Mapping[str, FeatureValue]) -> dict[str, Any]:
        row: dict[str, Any] = {"path": _one(features, "path")}
        for name, arrow_type in self.id_columns.items():
            if name == "path":
                continue
            feature = features.get(name)
            values = [v.decode("utf-8") if isinstance(v, bytes) else v for v in (feature.values if feature else ())]
            row[name] = values if pa.types.is_list(arrow_type) else (values[0] if values else None)
        return row


BUILT_IN = {"mimic-cxr": MimicCxrPlugin, "dicom-png": DicomPngPlugin, "images": ImagesPlugin}


def load_plugin(name: str, scale: str = "0,1") -> Any:
    """A built-in plugin by name, or a user's `module:object` (a class is called with no arguments)."""
    if name in BUILT_IN:
        return BUILT_IN[name](scale)
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--plugin takes {', '.join(BUILT_IN)} or module:object, got {name!r}")
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"--plugin {name}: {exc}") from None
    plugin = obj() if isinstance(obj, type) else obj
    missing = [m for m in ("example_to_row", "example_to_input", "output_to_row", "id_columns", "output_columns")
               if not hasattr(plugin, m)]  # fmt: skip
    if missing:
        raise ValueError(f"--plugin {name} lacks {', '.join(missing)}")
    return plugin


def guess_plugin(spec_features: Sequence[Mapping[str, Any]]) -> str:
    """The built-in plugin a dataset's features.json calls for."""
    names = {f["name"] for f in spec_features}
    if {"patient", "study", "view", "jpg_bytes"} <= names:
        return "mimic-cxr"
    if {"study", "series", "instance", "png_bytes"} <= names:
        return "dicom-png"
    return "images"
