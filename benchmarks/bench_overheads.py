"""Benchmark: where medbeam's export spends time beyond the image work (run by hand, not a test).

    .venv/bin/python -m benchmarks.bench_overheads [--n 30]

Prints, on one pinned core and on the export benchmark's X-ray corpus (benchmarks/corpus.py; generated if
missing):

1. Minor page faults and ms per image for the plain read + render loop and for `run()`'s marginal cost
   ((T(n) − T(1)) / (n − 1)), with medbeam's malloc tuning on and off (MEDBEAM_TUNE_MALLOC=0). Each
   setting runs in its own process: the tuning is process-wide.
2. 2500×2048 → 299×299 area resize: one OpenCV INTER_AREA pass against medbeam's resize_image.
3. The export pipeline's leaf transform count, and the DirectRunner's cost per chained Map.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.corpus import CORPUS_VERSION, ensure_corpus, warm_cache


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _export(files: list[Path]) -> tuple[float, int]:
    from medbeam.dicom.render import RenderOptions
    from medbeam.pipelines.dicom_export import ExportConfig, run

    src = Path(tempfile.mkdtemp(prefix="ovh-in-"))
    out = Path(tempfile.mkdtemp(prefix="ovh-out-"))
    for f in files:
        (src / f.name).symlink_to(f)
    config = ExportConfig(
        inputs=[str(src / "*.dcm")],
        png_dir=str(out / "png"),
        parquet_dir=str(out / "tables"),
        render=RenderOptions(resize=(299, 299)),
        progress=False,
    )
    warm_cache(files)
    f0, t0 = _faults(), time.perf_counter()
    run(config, ["--direct_num_workers=1", "--direct_running_mode=in_memory"])
    seconds, faults = time.perf_counter() - t0, _faults() - f0
    shutil.rmtree(src)
    shutil.rmtree(out)
    return seconds, faults


def _plain(files: list[Path]) -> tuple[float, int]:
    from medbeam.dicom.identity import instance_key
    from medbeam.dicom.reader import read_dataset
    from medbeam.dicom.render import RenderOptions
    from medbeam.transforms.dicom import Renderer

    out = Path(tempfile.mkdtemp(prefix="ovh-plain-"))
    renderer = Renderer(str(out), RenderOptions(resize=(299, 299)))
    warm_cache(files)
    f0, t0 = _faults(), time.perf_counter()
    for f in files:
        with open(f, "rb") as fp:
            ds = read_dataset(fp, defer_size=None)
        renderer.write_outputs(instance_key(ds, str(f)), renderer.encode(ds), str(f))
    seconds, faults = time.perf_counter() - t0, _faults() - f0
    shutil.rmtree(out)
    return seconds, faults


def child(files: list[Path]) -> dict:
    """One process: plain loop, then run() on 1 and on n files (fastest of 2 each)."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    _export(files[:1])  # imports, first-run costs
    n = len(files)
    plain = min(_plain(files) for _ in range(2))
    one = min(_export(files[:1]) for _ in range(2))
    many = min(_export(files) for _ in range(2))
    return {
        "plain_ms": 1e3 * plain[0] / n,
        "plain_faults": plain[1] / n,
        "marginal_ms": 1e3 * (many[0] - one[0]) / (n - 1),
        "run_faults": many[1] / n,
        "fixed_s": one[0],
    }


def resize_timings() -> dict:
    import cv2
    import numpy as np

    from medbeam.imaging.resize import resize_image

    rows, cols = np.indices((2500, 2048))
    image = (128 + 100 * np.sin(rows / 90) * np.cos(cols / 70)).astype(np.uint8)

    def median_ms(fn) -> float:
        fn()
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)

    one_pass = median_ms(lambda: cv2.resize(image, (299, 299), interpolation=cv2.INTER_AREA))
    medbeam = median_ms(lambda: resize_image(image, 299, 299))
    diff = np.abs(
        resize_image(image, 299, 299).astype(int) - cv2.resize(image, (299, 299), interpolation=cv2.INTER_AREA)
    )
    return {"one_pass_ms": one_pass, "medbeam_ms": medbeam, "max_diff": int(diff.max())}


def transform_costs() -> dict:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from medbeam.dicom.render import RenderOptions
    from medbeam.pipelines.dicom_export import ExportConfig, build

    p = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    build(p, ExportConfig(inputs=["/nonexistent/*.dcm"], png_dir="/tmp/x", parquet_dir="/tmp/y",
                          render=RenderOptions(resize=(299, 299)), progress=False))
    leaves = []

    class Count(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node) -> None:
            leaves.append(node.full_label)

    p.visit(Count())

    def chain(k: int) -> float:
        t0 = time.perf_counter()
        with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as q:
            pc = q | beam.Create([1])
            for i in range(k):
                pc = pc | f"m{i}" >> beam.Map(lambda x: x)
        return time.perf_counter() - t0

    chain(1)
    per_map = (min(chain(21) for _ in range(3)) - min(chain(1) for _ in range(3))) / 20
    return {"export_leaf_transforms": len(leaves), "ms_per_chained_map": 1e3 * per_map}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=30, help="X-rays per run() (default 30)")
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(child([Path(p) for p in json.loads(args._child)])))
        return 0

    files = ensure_corpus(args.out.resolve() / f"corpus-{CORPUS_VERSION}", args.n + 1, 8)["raw"]
    files = [str(f) for f in files[: args.n]]
    print(f"{args.n} uncompressed 2500×2048 X-rays → 299 PNG, one pinned core\n")
    print(f"{'malloc tuning':<14} {'plain ms/img':>12} {'faults/img':>10} │ {'run() marginal ms/img':>21} {'faults/img':>10} │ {'run() on 1 file':>15}")
    for label, env in (("on (default)", {}), ("off", {"MEDBEAM_TUNE_MALLOC": "0"})):
        out = subprocess.run(
            [sys.executable, "-m", __spec__.name, "--_child", json.dumps(files)],  # as this module was started
            env={**os.environ, **env},
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(
            f"{label:<14} {r['plain_ms']:>12.1f} {r['plain_faults']:>10.0f} │ {r['marginal_ms']:>21.1f}"
            f" {r['run_faults']:>10.0f} │ {r['fixed_s']:>13.2f} s"
        )
    r = resize_timings()
    print(
        f"\nresize 2500×2048 → 299 (uint8): one INTER_AREA pass {r['one_pass_ms']:.1f} ms, "
        f"medbeam resize_image {r['medbeam_ms']:.1f} ms ({r['one_pass_ms'] / r['medbeam_ms']:.1f}×), "
        f"max |Δ| {r['max_diff']} grey level(s) on a smooth image"
    )
    t = transform_costs()
    print(
        f"export pipeline: {t['export_leaf_transforms']} leaf transforms; "
        f"the DirectRunner costs {t['ms_per_chained_map']:.0f} ms per chained Map per run (build + run)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
