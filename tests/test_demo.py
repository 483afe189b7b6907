"""`make demo` end to end on the bundled corpus: it runs offline and reports what it did."""

from __future__ import annotations

import re

from medbeam.demo import run_demo


def _no_ignored_type_hints(caplog) -> None:
    """Beam logs a warning for each PTransform input hint it cannot use: users would see it on every run."""
    ignored = [r.getMessage() for r in caplog.records if "type hint will be ignored" in r.getMessage()]
    assert not ignored, ignored


def test_demo_exports_the_corpus_and_reports_tables_pngs_and_tfrecords(tmp_path, capsys, caplog):
    run_demo(tmp_path, progress=False)
    out = capsys.readouterr().out
    _no_ignored_type_hints(caplog)
    files_in, instances, pngs, rejected = map(
        int, re.search(r"(\d+) files in, (\d+) instances written, (\d+) PNGs, (\d+) rejected", out).groups()
    )
    assert files_in == instances + rejected and instances > 200 and pngs > 200
    assert "Instances per modality" in out and "Rejects by stage and reason" in out
    records = int(re.search(r"(\d+) tf.train.Example records", out).group(1))
    assert records == pngs
    assert "png_bytes" in out and "study" in out
    assert len(list((tmp_path / "png").rglob("*.png"))) == pngs
    # The RTDOSE instance (7 copies; badVR.dcm sorts first and does not render) gets rtdose.dcm's 15 frames.
    rtdose = re.search(r"^\s+RTDOSE\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out, re.MULTILINE)
    assert rtdose is not None and tuple(map(int, rtdose.groups())) == (7, 1, 1, 15)
    assert re.search(r"badVR\.dcm\s+rtdose\.dcm\s+1\.9\.999\.999\.99\.9\.9999\.9999\.20030818153516", out)


def test_cxr_demo_prepares_a_generated_mimic_sample(tmp_path, capsys, caplog):
    from medbeam.demo import run_cxr_demo

    run_cxr_demo(tmp_path, progress=False)
    out = capsys.readouterr().out
    _no_ignored_type_hints(caplog)
    images_in, records, frontal, lateral, other, rejected = map(int, re.search(
        r"(\d+) images in, (\d+) records \(frontal (\d+), lateral (\d+), other (\d+)\), (\d+) rejected", out
    ).groups())  # fmt: skip
    assert images_in == records + rejected and records == frontal + lateral + other and rejected == 4
    assert "Label distribution per view" in out and re.search(r"cardiomegaly\s+\d+ / \d+", out)
    assert len(list((tmp_path / "cxr" / "jpg").rglob("*.jpg"))) == records
