"""The tutorial (docs/tutorial/), executed headlessly as the notebook, in its --small configuration: every
step must run, the model must learn the two planted signatures and nothing else, and the figures exist."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import duckdb
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial"


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebook", TUTORIAL / "build_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_notebook_is_built_from_the_script():
    assert (TUTORIAL / "tutorial.ipynb").read_text() == _builder().notebook(), (
        "docs/tutorial/tutorial.ipynb is out of date: run .venv/bin/python docs/tutorial/build_notebook.py"
    )


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nbclient = pytest.importorskip("nbclient") if os.environ.get("CI") != "true" else __import__("nbclient")
    import nbformat

    out = tmp_path_factory.mktemp("tutorial")
    os.environ["MEDBEAM_TUTORIAL_SMALL"] = "1"
    os.environ["MEDBEAM_TUTORIAL_OUT"] = str(out)
    try:
        notebook = nbformat.read(TUTORIAL / "tutorial.ipynb", as_version=4)
        nbclient.NotebookClient(notebook, timeout=1800, kernel_name="python3",
                                resources={"metadata": {"path": str(out)}}).execute()  # fmt: skip
    finally:
        os.environ.pop("MEDBEAM_TUTORIAL_SMALL")
        os.environ.pop("MEDBEAM_TUTORIAL_OUT")
    return out, notebook


def _aucs(out: Path) -> dict[str, tuple[float, int]]:
    from sklearn.metrics import roc_auc_score

    from medbeam.datasets.cxr import LABEL_COLUMNS

    with duckdb.connect(str(out / "prepared" / "cxr.duckdb"), read_only=True) as con:
        con.execute(f"ATTACH '{out / 'predictions.duckdb'}' AS p (READ_ONLY)")
        aucs = {}
        for name in LABEL_COLUMNS:
            rows = con.execute(
                f"SELECT l.{name} = 3, p.{name} FROM labels l JOIN p.predictions p "
                f"USING (patient, study, image, view, dataset) WHERE l.dataset = 1 AND l.{name} <> 2"
            ).fetchall()
            y = np.array([r[0] for r in rows])
            if 3 <= y.sum() < len(y):
                aucs[name] = (roc_auc_score(y, [r[1] for r in rows]), int(y.sum()))
    return aucs


def test_the_model_learns_the_planted_signatures_and_nothing_else(executed):
    out, _ = executed
    aucs = _aucs(out)
    # Shuffled labels, a wrong decoding or a wrong label mapping give ~0.5 here (≥ 9 positives each).
    assert aucs["cardiomegaly"][0] >= 0.85 and aucs["pleural_effusion"][0] >= 0.85, aucs
    # Labels drawn at random (no_finding depends on the signatures, so it is left out) stay near chance.
    noise = [auc for name, (auc, _) in aucs.items() if name not in ("cardiomegaly", "pleural_effusion", "no_finding")]
    assert len(noise) >= 5 and 0.3 <= float(np.mean(noise)) <= 0.7, aucs


def test_every_step_wrote_its_outputs(executed):
    out, notebook = executed
    for figure in ("roc.png", "examples.png", "neighbours.png"):
        assert (out / "figures" / figure).stat().st_size > 10_000
    assert (out / "models" / "cxr.keras").exists() and (out / "models" / "cxr.onnx").exists()
    with duckdb.connect(str(out / "embeddings.duckdb"), read_only=True) as con:
        assert con.execute("SELECT min(len(feature_vector)), count(*) FROM embeddings").fetchone()[0] == 1280
    text = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "Keras and ONNX logits differ by at most" in text and "done in" in text
