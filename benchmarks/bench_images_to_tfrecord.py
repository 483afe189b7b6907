#!/usr/bin/env python
"""Benchmark: `medbeam tfrecord from-images` on the DirectRunner against a plain Python loop doing the same work.

Run by hand (it is not a test):

    .venv/bin/python -m benchmarks.bench_images_to_tfrecord [--images N] [--repeat R] [--out DIR]

Workload: N synthetic colour JPGs of 1024×1024 (seeded, photo-like: smooth gradients plus blurred noise,
quality 95, ~150-250 kB each) with a labels CSV (path, int, float, text) → 299×299 JPG (quality 95)
Examples with labels, in TFRecord shards.

* **loop**: one process, one core: for each image read the bytes, `medbeam.imaging.codec.transcode`
  (OpenCV decode → INTER_AREA resize → OpenCV JPEG encode), build the Example with
  `medbeam.io.tfrecord.encode_example` (labels from the CSV through DuckDB, like the job), frame and
  append to one TFRecord file. This is the floor for the work itself.
* **beam, 1 worker**: `medbeam.pipelines.images_to_tfrecord.run` with ``--direct_num_workers=1`` (the
  in-memory DirectRunner): listing, regex, label query + CoGroupByKey join, the same transcode, shards
  sorted and written, rejects table, features.json.
* **beam, all cores**: the same with ``--direct_running_mode=multi_processing --direct_num_workers=CPUS``.

Both write byte-identical Examples (checked). Corpus generation is not timed; each variant runs
`--repeat` times interleaved and the best time counts (other processes on the machine add noise).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

SEED = 20261122
SIZE = 1024
TARGET = (299, 299)
QUALITY = 95


def make_corpus(directory: Path, count: int) -> tuple[list[str], Path]:
    """`count` JPGs under directory/jpgs (kept between runs) and labels.csv naming them by absolute path."""
    jpgs = directory / "jpgs"
    jpgs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    paths = []
    for i in range(count):
        path = jpgs / f"{i // 100:03d}" / f"img{i:05d}.jpg"
        paths.append(str(path.resolve()))
        if path.exists():
            continue
        path.parent.mkdir(exist_ok=True)
        a, b, c = rng.random(3)
        noise = cv2.GaussianBlur(rng.random((SIZE, SIZE, 3)).astype(np.float32), (0, 0), 2.0)
        base = np.stack([a * x + (1 - a) * y, b * y, c * np.sin(6.28 * (x + y) * (1 + i % 5))], axis=2)
        img = np.clip((0.6 * base + 0.4 * noise) * 255, 0, 255).astype(np.uint8)
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    csv = directory / f"labels-{count}.csv"
    lines = ["path,label_1,label_2,note"] + [f"{p},{i % 7},{i / 10},note {i}" for i, p in enumerate(paths)]
    csv.write_text("\n".join(lines) + "\n")
    return paths, csv


def label_sql(csv: Path) -> str:
    return f"SELECT path, label_1, label_2, note FROM read_csv('{csv}')"


def plain_loop(paths: list[str], csv: Path, output: Path) -> tuple[float, dict[str, bytes]]:
    """The same work as the job, in a for loop: read, transcode, Example, TFRecord."""
    import duckdb

    from medbeam.imaging.codec import ImageShape, transcode
    from medbeam.io import tfrecord as tfr

    start = time.perf_counter()
    shape = ImageShape(*TARGET)
    labels = {r[0]: r[1:] for r in duckdb.sql(label_sql(csv)).fetchall()}
    records = {}
    with open(output, "wb") as f:
        for path in paths:
            with open(path, "rb") as src:
                image = transcode(src.read(), "jpg", shape, jpeg_quality=QUALITY)
            label_1, label_2, note = labels[path]
            example = tfr.encode_example(
                {"path": path, "jpg_bytes": image, "label_1": label_1, "label_2": label_2, "note": note}
            )
            f.write(tfr.frame_record(example))
            records[path] = example
    return time.perf_counter() - start, records


def beam_run(paths: list[str], csv: Path, output: Path, beam_args: list[str]) -> tuple[float, dict[str, bytes]]:
    from medbeam.io import tfrecord as tfr
    from medbeam.pipelines.images_to_tfrecord import ImagesToTfrecordConfig, run

    config = ImagesToTfrecordConfig(
        inputs=[str(Path(paths[0]).parent.parent)],
        output=str(output),
        shape=TARGET,
        labels_sql=label_sql(csv),
        jpeg_quality=QUALITY,
    )
    start = time.perf_counter()
    counts = run(config, beam_args)
    elapsed = time.perf_counter() - start
    if counts.records_written != len(paths) or counts.rejected:
        sys.exit(f"beam run wrote {counts.records_written} of {len(paths)} records: {counts.summary()}")
    records = {}
    for shard in tfr.existing_shards(str(output)):
        for data in tfr.read_records(shard):
            records[tfr.decode_example(data)["path"].values[0].decode()] = data
    return elapsed, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-out/images-to-tfrecord"))
    args = parser.parse_args()

    cpus = os.cpu_count() or 1
    t0 = time.perf_counter()
    paths, csv = make_corpus(args.out, args.images)
    print(
        f"corpus: {len(paths)} JPGs {SIZE}x{SIZE} q{QUALITY} ({time.perf_counter() - t0:.1f} s to make/check), "
        f"{sum(os.path.getsize(p) for p in paths) / len(paths) / 1024:.0f} kB each"
    )

    variants = {
        "plain loop (1 core)": lambda: plain_loop(paths, csv, args.out / "loop.tfrecord"),
        "beam DirectRunner, 1 worker": lambda: beam_run(
            paths, csv, args.out / "beam1" / "train", ["--direct_num_workers=1"]
        ),
        f"beam DirectRunner, multi_processing x{cpus}": lambda: beam_run(
            paths,
            csv,
            args.out / "beamN" / "train",
            ["--direct_running_mode=multi_processing", f"--direct_num_workers={cpus}"],
        ),
    }
    best: dict[str, float] = {}
    outputs: dict[str, dict[str, bytes]] = {}
    for _ in range(args.repeat):
        for name, fn in variants.items():
            elapsed, records = fn()
            best[name] = min(best.get(name, float("inf")), elapsed)
            outputs[name] = records
    reference = outputs["plain loop (1 core)"]
    for name, records in outputs.items():
        if records != reference:
            sys.exit(f"{name}: records differ from the plain loop's")

    n = len(paths)
    loop = best["plain loop (1 core)"]
    print(f"\n{'variant':<40} {'seconds':>8} {'records/s':>10} {'vs loop':>8}")
    for name, seconds in best.items():
        print(f"{name:<40} {seconds:8.2f} {n / seconds:10.1f} {loop / seconds:7.2f}x")
    print(
        f"\nper record: loop {1000 * loop / n:.1f} ms; beam 1 worker "
        f"{1000 * best['beam DirectRunner, 1 worker'] / n:.1f} ms (identical Examples checked)"
    )


if __name__ == "__main__":
    main()
