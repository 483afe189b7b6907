#!/usr/bin/env python
"""Benchmark: `medbeam cxr prepare` (mimic-cxr-2019 layout) against a plain Python loop, run by hand.

    PYTHONPATH=src .venv/bin/python -m benchmarks.bench_cxr_prepare [--quick] [--images N] [--repeat R]
        [--worker-repeat W] [--per-core-images K] [--train-tars T] [--core C] [--out DIR]

Default: N = 2000 images, K = 100, R = 2, W = 1. Making the corpus takes 0.19-0.25 s an image on 2 cores
(6.5-8.5 minutes for N = 2000, once: reruns reuse it); the rows take about 5 minutes on 2 idle cores, far
more on a busy machine. `--quick`: N = 160, K = 40, R = W = 1, under 3 minutes in all. Ratios are against
baselines measured in the same run; every variant runs in a process of its own, the variants interleaved
round by round (R rounds for the per-core rows, W for the worker rows), and each row's best round counts,
so that a busy machine hits both sides of each ratio. Because other work on the machine still stretches
wall times, the pinned rows also report CPU time (`time.process_time` around the same work: a pinned
process's demand, which contention inflates much less), and the worker rows their whole-process CPU-s.

Corpus: `medbeam.datasets.cxr_synthetic.write_mimic_cxr_2019` with MIMIC-CXR-JPG-sized images (3000 × 2500,
quality 95, ~1.8 MB each, ~0.38 s each to make on one core; the writer renders in 2 threads), T train tars
(`train_p10.tar.gz` ...) plus `valid.tar.gz` (about a fifth of the patients), and `train.csv.gz` /
`valid.csv.gz`; the patient count is the smallest that gives ≥ N images. It is kept under
`OUT/corpus-<parameters>/` (bench-out/ is git-ignored) and reused by reruns. Tars are gzip-compressed as in
the 2019 release (gzip saves ~1 % on JPEGs); the per-core rows also run on a plain `.tar` of the same
members (what `compress=False` writes), and a streaming row shows what gzip costs.

Rows (images/s and ms/image; whole-job time measured inside the process, interpreter start and imports
left out, with the whole process's time, CPU-s (user + sys, children included) and peak RSS beside it):

* **plain loop, Pillow defaults** (the baseline the issue names): one process pinned to one core
  (`sched_setaffinity`): for each member of the tar (Python's `tarfile`, streaming `r|*`),
  `Image.open(BytesIO(data)).resize((320, 320))` (Pillow's default resample: BICUBIC) →
  `save(buf, "JPEG")` (default quality 75) → the JPG written under a folder → a `tf.train.Example` with the
  job's fields (`medbeam.io.tfrecord.encode_example`: jpg_bytes, patient, study, image, view, dataset and
  the 14 labels coded as Google did; labels parsed from the CSV with the csv module) appended to one
  TFRecord file (`frame_record`).
* **plain loop, medbeam's resize**: the same loop with `medbeam.imaging.codec.shrink_jpeg` (DCT-scaled
  decode, area resize, quality 95, as the job): isolates the pipeline's overhead from the image work (its
  Examples must equal the job's byte for byte: checked).
* **cxr prepare, 1 worker, 1 core**: `run(CxrConfig(layout="mimic-cxr-2019", ...), ["--direct_num_workers=1"])`
  pinned to the same core, on the same K images (`--input-tars` the per-core tar, `--input-csv` its rows),
  writing JPGs, frontal/lateral/other TFRecords and the labels table (Parquet + DuckDB); again on the plain
  `.tar` of the same members, and on the first 4 images alone: the job's fixed cost, so that its marginal
  cost per image ((T(K) - T(4)) / (K - 4), what 377,110 images pay) shows beside the whole-job figure.
* **tar streaming only**: `medbeam.io.archives.read_members` over the per-core tar, gz and plain: the
  difference is gzip's decode cost per image.
* **cxr prepare, 1 worker / 2 workers**: the whole corpus (`input_dir`), not pinned,
  `["--direct_num_workers=1"]` against 2 worker threads (`--direct_running_mode=multi_threading`, what the
  job picks by itself on up to 4 cores) and 2 worker processes (`multi_processing`), each also on the first
  4 images alone (its fixed cost: worker start-up, the runner's per-stage round trips), so that the
  speed-up without fixed costs shows too. The local runner deals its elements out statically, so the job
  deals the tars into one share per worker of about equal bytes (`archives.deal_tars`, a tar cut where a
  share ends); the busier share caps the ratio (printed).
* **cxr prepare, 1 worker, one tar**: the first train tar alone, for memory: peak RSS (the job process's
  `ru_maxrss` from `os.wait4`; the 2-worker row's figure is the largest single process, not the sum) at N
  and at ~N/(T + 2) images shows whether memory is flat in N.

Then: the projection for 377,110 images (MIMIC-CXR-JPG) at the measured 2-worker rate (and an idle-machine
estimate from the 2-worker run's CPU-s and the worst split of the tars over 2 workers), the targets beside
the measured figures (≥ 2.5× the plain loop per core; ≥ 1.8× on 2 workers vs 1 at ≥ 2,000 images; memory
flat in N, taken as peak RSS at N within 10 % of that at the one-tar run), and the checks: every job run writes one
record per corpus image (read back from its shards), with no rejects and no label row without an image.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SEED = 20261122
IMAGE_SIZE = (3000, 2500)  # (height, width), like MIMIC-CXR-JPG's
QUALITY = 95
STUDIES_PER_PATIENT = 2
SHAPE = (320, 320)
LAYOUT = "mimic-cxr-2019"
MIMIC_CXR_JPG_IMAGES = 377_110
GOAL_HOURS = 2.5
TARGET_PER_CORE = 2.5
TARGET_WORKERS = 1.8
FLAT_TOLERANCE = 0.10
#: The per-core job also runs on this many images: its fixed cost, so that the marginal cost per image shows.
FIXED_COST_IMAGES = 4
CORPUS_VERSION = "v1"
#: The generator's gzip settings (cxr_synthetic._write_tar), for the per-core tar cut from its first tar.
GZIP_LEVEL = 6

#: Google's label coding, as the job's (medbeam.datasets.cxr.encode_label) for the cells the corpus has.
LABEL_CODES = {"": 0, "0.0": 1, "-1.0": 2, "1.0": 3}
VIEW_CODES = {"frontal": 0, "lateral": 1, "other": 2}
SPLIT_CODES = {"train": 0, "valid": 1}
MEMBER = re.compile(r"^(train|valid)/p(\d+)/s(\d+)/view(\d+)_(frontal|lateral|other)\.jpg$")


# ---------------------------------------------------------------------------------------------------
# The corpus


@dataclass
class Corpus:
    """What the benchmark needs of a generated corpus (kept as manifest.json beside it)."""

    root: Path
    patients: int
    tars: dict[str, int]  # tar file name → images in it
    csvs: list[str]
    images: int
    bytes: int
    seconds: float  # to generate (0 when it was cached)
    cached: bool = False

    def tar_paths(self) -> list[Path]:
        return [self.root / name for name in self.tars]

    @property
    def derived(self) -> Path:
        """Files cut from the corpus, beside it (inside, the job's *.tar* and *.csv.gz would match them)."""
        return self.root.with_name(self.root.name + "-derived")


@dataclass
class Subset:
    """The per-core images: the first K members of the first train tar, as .tar.gz and .tar, and their rows."""

    gz: Path
    plain: Path
    csv: Path
    images: int
    bytes: int


def count_images(patients: int, train_tars: int) -> int:
    """How many good images write_mimic_cxr_2019 makes for `patients` (views do not depend on pixel size)."""
    from medbeam.datasets.cxr_synthetic import write_mimic_cxr_2019

    with tempfile.TemporaryDirectory(prefix="cxr-count-") as tmp:
        sample = write_mimic_cxr_2019(
            Path(tmp),
            patients=patients,
            studies_per_patient=STUDIES_PER_PATIENT,
            image_size=(16, 16),
            seed=SEED,
            train_tars=train_tars,
            compress=False,
        )
        return len(sample.images)


def patients_for(images: int, train_tars: int, cache: Path) -> int:
    """The smallest patient count whose corpus has at least `images` images (remembered in `cache`)."""
    key = f"{CORPUS_VERSION} images={images} train_tars={train_tars} studies={STUDIES_PER_PATIENT} seed={SEED}"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if key in known:
        return int(known[key])
    patients = max(train_tars + 2, math.ceil(images / (STUDIES_PER_PATIENT * 1.7)))
    have = count_images(patients, train_tars)
    while have < images:  # grow
        patients += max(1, math.ceil((images - have) / (have / patients)))
        have = count_images(patients, train_tars)
    while patients > 1 and count_images(patients - 1, train_tars) >= images:  # then trim one at a time
        patients -= 1
    cache.write_text(json.dumps({**known, key: patients}, indent=1) + "\n")
    return patients


def ensure_corpus(out: Path, images: int, train_tars: int) -> Corpus:
    """The corpus of ≥ `images` images under out/corpus-<parameters>, generated once and then reused."""
    from medbeam.datasets.cxr_synthetic import write_mimic_cxr_2019

    patients = patients_for(images, train_tars, out / "patients.json")
    height, width = IMAGE_SIZE
    key = (
        f"corpus-{CORPUS_VERSION}-mimic2019-p{patients}x{STUDIES_PER_PATIENT}-{height}x{width}-q{QUALITY}"
        f"-t{train_tars}-seed{SEED}-gz"
    )
    root = out / key
    manifest = root / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        return Corpus(root=root, cached=True, **data)
    partial = out / (key + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    print(
        f"making the corpus: {patients} patients x {STUDIES_PER_PATIENT} studies, {height}x{width} q{QUALITY}, "
        f"{train_tars} train tars + valid (~{images * 0.38 / 2 / 60:.0f} min on 2 free cores)...",
        flush=True,
    )
    start = time.perf_counter()
    sample = write_mimic_cxr_2019(
        partial,
        patients=patients,
        studies_per_patient=STUDIES_PER_PATIENT,
        image_size=IMAGE_SIZE,
        quality=QUALITY,
        seed=SEED,
        workers=2,
        train_tars=train_tars,
    )
    seconds = time.perf_counter() - start
    per_tar = Counter(image.tar.name for image in sample.images if image.tar is not None)
    data = {
        "patients": patients,
        "tars": {tar.name: per_tar.get(tar.name, 0) for tar in sample.tars},
        "csvs": [path.name for path in sample.csvs.values()],
        "images": len(sample.images),
        "bytes": sum(tar.stat().st_size for tar in sample.tars),
        "seconds": seconds,
    }
    (partial / "manifest.json").write_text(json.dumps(data, indent=1) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    return Corpus(root=root, **data)


def ensure_subset(corpus: Corpus, images: int) -> Subset:
    """The first `images` members of the first train tar, re-packed (same names and bytes, gzip level 6 like
    the generator) as percore-K.tar.gz and percore-K.tar, with percore-K.csv.gz holding their label rows."""
    first = corpus.tar_paths()[0]
    images = min(images, corpus.tars[first.name])
    gz, plain = (
        corpus.derived / f"percore-{images}.tar.gz",
        corpus.derived / f"percore-{images}.tar",
    )
    labels = corpus.derived / f"percore-{images}.csv.gz"
    if not labels.exists():
        corpus.derived.mkdir(exist_ok=True)
        names: list[str] = []
        with tarfile.open(first, "r|*") as src, open(plain, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as dst:
                for member in src:
                    if len(names) == images:
                        break
                    if member.isfile():
                        dst.addfile(member, src.extractfile(member))
                        names.append(member.name)
        with open(plain, "rb") as src_raw, open(gz, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL) as out:
                shutil.copyfileobj(src_raw, out, 1 << 20)
        wanted = set(names)
        with gzip.open(corpus.root / "train.csv.gz", "rt", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = [row for row in reader if row[0] in wanted]
        text = io.StringIO(newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        labels.write_bytes(gzip.compress(text.getvalue().encode(), mtime=0))
        if len(rows) != len(names):
            sys.exit(f"per-core subset: {len(rows)} label rows for {len(names)} images")
    with tarfile.open(plain) as tar:
        count = sum(1 for m in tar.getmembers() if m.isfile())
    return Subset(gz=gz, plain=plain, csv=labels, images=count, bytes=gz.stat().st_size)


def warm(paths: list[Path]) -> None:
    """Read a run's inputs just before it (not timed): this VM keeps only ~1 GB of page cache, so nothing
    read long before stays cached (the whole corpus does not fit: those rows read from disk, both sides)."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 22):
                pass


# ---------------------------------------------------------------------------------------------------
# What each child process does (one variant, one run)


def _label_rows(csvs: list[str]) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    for path in csvs:
        with gzip.open(path, "rt", newline="") as f:
            for row in csv.DictReader(f):
                rows[row["path"]] = row
    return rows


def child_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """The plain loop: tar members → resize → JPG file + Example appended to one TFRecord file."""
    from PIL import Image

    from medbeam.datasets.cxr_synthetic import LABELS_2019
    from medbeam.imaging.codec import shrink_jpeg
    from medbeam.io.tfrecord import encode_example, frame_record

    out = Path(spec["out"])
    columns = [(name, name.lower().replace(" ", "_")) for name in LABELS_2019]
    medbeam_resize = spec["resize"] == "medbeam"
    start = time.perf_counter()
    cpu = time.process_time()
    labels = _label_rows(spec["csvs"])
    count = 0
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "loop.tfrecord", "wb") as records:
        for tar in spec["tars"]:
            with tarfile.open(tar, "r|*") as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    data = archive.extractfile(member).read()
                    if medbeam_resize:
                        jpg = shrink_jpeg(data, *SHAPE)
                    else:
                        buffer = io.BytesIO()
                        Image.open(io.BytesIO(data)).resize(SHAPE).save(buffer, "JPEG")
                        jpg = buffer.getvalue()
                    target = out / "jpg" / member.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(jpg)
                    split, patient, study, image, view = MEMBER.match(member.name).groups()
                    row = labels[member.name]
                    features: dict[str, Any] = {
                        "jpg_bytes": jpg,
                        "path": member.name,
                        "patient": int(patient),
                        "study": int(study),
                        "image": int(image),
                        "view": VIEW_CODES[view],
                        "dataset": SPLIT_CODES[split],
                    }
                    features.update({column: LABEL_CODES[row[name]] for name, column in columns})
                    records.write(frame_record(encode_example(features)))
                    count += 1
    return {
        "seconds": time.perf_counter() - start,
        "cpu": time.process_time() - cpu,
        "images": count,
    }


def child_tars(spec: dict[str, Any]) -> dict[str, Any]:
    """Stream every member of the tars into memory through the job's own reader (medbeam.io.archives)."""
    from medbeam.io import archives
    from medbeam.transforms.cxr import MAX_IMAGE_BYTES

    start = time.perf_counter()
    cpu = time.process_time()
    count = 0
    for tar in spec["tars"]:
        for event in archives.read_members(tar, os.path.getsize(tar), archives.Limits(), MAX_IMAGE_BYTES):
            count += event.kind == "read"
    return {
        "seconds": time.perf_counter() - start,
        "cpu": time.process_time() - cpu,
        "images": count,
    }


def child_job(spec: dict[str, Any]) -> dict[str, Any]:
    """`cxr prepare` through its library call, timed around run()."""
    from medbeam.pipelines.cxr_prepare import CxrConfig, run

    out = Path(spec["out"])
    config = CxrConfig(
        layout=LAYOUT,
        input_dir=spec.get("input_dir"),
        input_tars=spec.get("tars", []),
        input_csv=spec.get("csvs", []),
        output_jpg_dir=str(out / "jpg"),
        output_tfrecord_dir=str(out / "tfrecords"),
        duckdb_path=str(out / "cxr.duckdb"),
        image_shape=SHAPE,
        progress=False,
    )
    start = time.perf_counter()
    cpu = time.process_time()
    counts = run(config, spec["beam_args"])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    names = (
        "images_in",
        "records_written",
        "images_rejected",
        "label_rows_in",
        "label_rows_without_image",
    )
    return {
        "seconds": seconds,
        "cpu": cpu,
        "images": counts.records_written,
        "counts": {n: getattr(counts, n) for n in names},
        "summary": counts.summary(),
    }


CHILDREN = {"loop": child_loop, "tars": child_tars, "job": child_job}


# ---------------------------------------------------------------------------------------------------
# Running the variants


@dataclass
class Variant:
    name: str
    spec: dict[str, Any]
    pinned: bool
    images: int
    inputs: list[Path]  # warmed before each run
    rounds: int
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any] | None:
        return min(self.runs, key=lambda r: r["seconds"]) if self.runs else None

    @property
    def seconds(self) -> float:
        best = self.best
        return best["seconds"] if best else math.nan

    @property
    def cpu(self) -> float:
        """The least in-process CPU time of its runs (for a pinned one-process run: its demand, which a busy
        machine inflates less than the wall time)."""
        return min(r["cpu"] for r in self.runs) if self.runs else math.nan

    @property
    def peak_mb(self) -> float:
        return max(r["maxrss_kb"] for r in self.runs) / 1024 if self.runs else math.nan


def run_child(variant: Variant, core: int, log_dir: Path) -> dict[str, Any]:
    """One run of the variant in a fresh process: its own result + process wall time, CPU time, peak RSS."""
    out = Path(variant.spec["out"])
    shutil.rmtree(out, ignore_errors=True)
    warm(variant.inputs)
    result_file = log_dir / "result.json"
    result_file.unlink(missing_ok=True)
    log = log_dir / (re.sub(r"[^a-z0-9]+", "-", variant.name.lower()).strip("-") + ".log")
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_cxr_prepare",
        "--child",
        json.dumps(variant.spec),
        "--child-result",
        str(result_file),
    ]

    def pin() -> None:
        if variant.pinned:
            os.sched_setaffinity(0, {core})

    with open(log, "wb") as output:
        start = time.perf_counter()
        process = subprocess.Popen(cmd, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, preexec_fn=pin)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or not result_file.exists():
        tail = log.read_text(errors="replace")[-4000:]
        sys.exit(f"{variant.name} failed (exit {process.returncode}); the end of {log}:\n{tail}")
    result = json.loads(result_file.read_text())
    result.update(
        process_seconds=wall,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        maxrss_kb=usage.ru_maxrss,
    )
    return result


def check_job(variant: Variant, result: dict[str, Any], problems: list[str]) -> None:
    """One record per image, read back from the shards; no rejects, no label rows left without image."""
    from medbeam.io import tfrecord as tfr

    counts = result["counts"]
    prefix = Path(variant.spec["out"]) / "tfrecords"
    on_disk = sum(
        len(tfr.read_records(shard))
        for view in ("frontal", "lateral", "other")
        for shard in tfr.existing_shards(str(prefix / view))
    )
    want = variant.images
    if (
        not (counts["records_written"] == counts["images_in"] == on_disk == want)
        or counts["images_rejected"]
        or counts["label_rows_without_image"]
    ):
        problems.append(f"{variant.name}: {result['summary']}; {on_disk} records in the shards; corpus {want}")


def job_examples(out: Path) -> list[bytes]:
    from medbeam.io import tfrecord as tfr

    return sorted(
        record
        for view in ("frontal", "lateral", "other")
        for shard in tfr.existing_shards(str(out / "tfrecords" / view))
        for record in tfr.read_records(shard)
    )


def loop_examples(out: Path) -> list[bytes]:
    from medbeam.io import tfrecord as tfr

    return sorted(tfr.read_records(str(out / "loop.tfrecord")))


# ---------------------------------------------------------------------------------------------------
# Report


def _fmt_ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None and math.isfinite(value) else ""


def code_version() -> str:
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
    )
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes in src/" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run (N=160, K=40, R=1, W=1): < 3 min",
    )
    parser.add_argument(
        "--images",
        type=int,
        help="corpus size N (default 2000; the worker rows want >= 2000)",
    )
    parser.add_argument(
        "--per-core-images",
        type=int,
        help="K images for the per-core rows (default 100)",
    )
    parser.add_argument("--repeat", type=int, help="rounds of the per-core rows (default 2)")
    parser.add_argument(
        "--worker-repeat",
        type=int,
        help="rounds of the whole-corpus 1/2-worker rows (default 1: ~3 min a round at N=2000)",
    )
    parser.add_argument(
        "--train-tars",
        type=int,
        default=10,
        help="train tars (+ valid.tar.gz, ~a fifth of the patients): 10, like the 2019 release's train_p10 … "
        "train_p19",
    )
    parser.add_argument(
        "--core",
        type=int,
        help="the core the per-core rows are pinned to (default: the first)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "cxr")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(args.child)
        result = CHILDREN[spec["kind"]](spec)
        args.child_result.write_text(json.dumps(result))
        return

    sys.stdout.reconfigure(line_buffering=True)  # progress lines show at once, also into a file
    quick = args.quick
    n_wanted = args.images or (160 if quick else 2000)
    k_wanted = args.per_core_images or (40 if quick else 100)
    rounds = args.repeat or (1 if quick else 2)
    worker_rounds = args.worker_repeat or 1
    core = args.core if args.core is not None else sorted(os.sched_getaffinity(0))[0]
    cpus = len(os.sched_getaffinity(0))
    t_total = time.perf_counter()

    import PIL

    print(
        f"medbeam {code_version()}, Pillow {PIL.__version__}, Python {sys.version.split()[0]}, {cpus} cores "
        f"(load {os.getloadavg()[0]:.2f}); per-core rows pinned to core {core}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = ensure_corpus(args.out, n_wanted, args.train_tars)
    subset = ensure_subset(corpus, k_wanted)
    made = (
        "cached" if corpus.cached else f"made in {corpus.seconds:.0f} s ({corpus.seconds / corpus.images:.2f} s/image)"
    )
    print(
        f"corpus: {corpus.images} images, {corpus.bytes / corpus.images / 1e6:.2f} MB each, {made}; "
        f"{len(corpus.tars)} tars: " + ", ".join(f"{name} {n}" for name, n in corpus.tars.items())
    )
    print(
        f"per-core images: the first {subset.images} members of {corpus.tar_paths()[0].name}, "
        f"as {subset.gz.name} and {subset.plain.name} (gzip saves {1 - subset.bytes / subset.plain.stat().st_size:.1%})"
    )

    runs = args.out / "runs"
    runs.mkdir(exist_ok=True)
    first_tar = corpus.tar_paths()[0]
    one = ["--direct_num_workers=1"]
    two = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    two_threads = ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]
    quarter = corpus.tars[first_tar.name]
    gz, plain, sub_csv = [str(subset.gz)], [str(subset.plain)], [str(subset.csv)]
    k = subset.images
    tiny = ensure_subset(corpus, FIXED_COST_IMAGES)
    variants = {
        "loop": Variant(
            "plain loop, Pillow defaults",
            {
                "kind": "loop",
                "resize": "pillow",
                "tars": gz,
                "csvs": sub_csv,
                "out": str(runs / "loop-pillow"),
            },
            True,
            k,
            [subset.gz],
            rounds,
        ),
        "loop_mb": Variant(
            "plain loop, medbeam's resize",
            {
                "kind": "loop",
                "resize": "medbeam",
                "tars": gz,
                "csvs": sub_csv,
                "out": str(runs / "loop-medbeam"),
            },
            True,
            k,
            [subset.gz],
            rounds,
        ),
        "job_core": Variant(
            "cxr prepare, 1 worker, 1 core",
            {
                "kind": "job",
                "tars": gz,
                "csvs": sub_csv,
                "beam_args": one,
                "out": str(runs / "job-core"),
            },
            True,
            k,
            [subset.gz],
            rounds,
        ),
        "job_core_plain": Variant(
            "  same, plain .tar",
            {
                "kind": "job",
                "tars": plain,
                "csvs": sub_csv,
                "beam_args": one,
                "out": str(runs / "job-core-plain"),
            },
            True,
            k,
            [subset.plain],
            rounds,
        ),
        "job_fixed": Variant(
            f"  same, first {tiny.images} images only",
            {
                "kind": "job",
                "tars": [str(tiny.gz)],
                "csvs": [str(tiny.csv)],
                "beam_args": one,
                "out": str(runs / "job-fixed"),
            },
            True,
            tiny.images,
            [tiny.gz],
            rounds,
        ),
        "tars_gz": Variant(
            "tar streaming only, .tar.gz",
            {"kind": "tars", "tars": gz, "out": str(runs / "tars")},
            True,
            k,
            [subset.gz],
            rounds,
        ),
        "tars_plain": Variant(
            "tar streaming only, .tar",
            {"kind": "tars", "tars": plain, "out": str(runs / "tars")},
            True,
            k,
            [subset.plain],
            rounds,
        ),
        "job_1w": Variant(
            "cxr prepare, 1 worker",
            {
                "kind": "job",
                "input_dir": str(corpus.root),
                "beam_args": one,
                "out": str(runs / "job-1w"),
            },
            False,
            corpus.images,
            [],
            worker_rounds,
        ),
        "job_2w": Variant(
            "cxr prepare, 2 worker processes",
            {
                "kind": "job",
                "input_dir": str(corpus.root),
                "beam_args": two,
                "out": str(runs / "job-2w"),
            },
            False,
            corpus.images,
            [],
            worker_rounds,
        ),
        "job_2t": Variant(
            "cxr prepare, 2 worker threads",
            {
                "kind": "job",
                "input_dir": str(corpus.root),
                "beam_args": two_threads,
                "out": str(runs / "job-2t"),
            },
            False,
            corpus.images,
            [],
            worker_rounds,
        ),
        **{
            f"job_2{key}_fixed": Variant(
                f"  2 {mode}, first {tiny.images} images only",
                {"kind": "job", "tars": [str(tiny.gz)], "csvs": [str(tiny.csv)], "beam_args": args_,
                 "out": str(runs / f"job-2{key}-fixed")},  # fmt: skip
                False,
                tiny.images,
                [],
                worker_rounds,
            )
            for key, mode, args_ in (("w", "processes", two), ("t", "threads", two_threads))
        },
        "job_quarter": Variant(
            f"cxr prepare, 1 worker, {first_tar.name}",
            {
                "kind": "job",
                "tars": [str(first_tar)],
                "csvs": [],
                "beam_args": one,
                "out": str(runs / "job-quarter"),
            },
            False,
            quarter,
            [],
            1,
        ),
    }
    # The one-tar memory run needs only its own tar's rows: a CSV of them, cut from train.csv.gz.
    quarter_csv = corpus.derived / f"{first_tar.name.split('.')[0]}.labels.csv.gz"
    if not quarter_csv.exists():
        prefix = f"train/p{first_tar.name.split('_p')[1][:2]}"
        with gzip.open(corpus.root / "train.csv.gz", "rt", newline="") as f:
            lines = f.read().splitlines(keepends=True)
        quarter_csv.write_bytes(
            gzip.compress(
                "".join(lines[:1] + [x for x in lines[1:] if x.startswith(prefix)]).encode(),
                mtime=0,
            )
        )
    variants["job_quarter"].spec["csvs"] = [str(quarter_csv)]

    problems: list[str] = []
    order = list(variants)
    for r in range(max(rounds, worker_rounds, 1)):
        for key in order:
            variant = variants[key]
            if r >= variant.rounds:
                continue
            result = run_child(variant, core, runs)
            variant.runs.append(result)
            if variant.spec["kind"] == "job":
                check_job(variant, result, problems)
            if variant.spec["kind"] == "loop" and result["images"] != variant.images:
                problems.append(f"{variant.name}: {result['images']} images for {variant.images}")
            print(
                f"  round {r + 1}: {variant.name:<40} {result['seconds']:7.2f} s in-process "
                f"({result['process_seconds']:.2f} s process, {result['cpu_seconds']:.1f} CPU-s, "
                f"{result['maxrss_kb'] / 1024:.0f} MB peak)",
                flush=True,
            )
            if key == "job_core" and r == 0:
                loop = loop_examples(Path(variants["loop_mb"].spec["out"]))
                job = job_examples(Path(variant.spec["out"]))
                if loop != job:
                    problems.append(f"the job's {len(job)} Examples differ from the medbeam-resize loop's {len(loop)}")

    v = variants
    base = v["loop"].seconds
    ratio_rows: dict[str, tuple[float | None, str]] = {
        "loop": (1.0, ""),
        "loop_mb": (base / v["loop_mb"].seconds, ""),
        "job_core": (base / v["job_core"].seconds, f"target >= {TARGET_PER_CORE}x"),
        "job_core_plain": (
            base / v["job_core_plain"].seconds,
            f"{v['job_core'].seconds / v['job_core_plain'].seconds:.2f}x the gz job",
        ),
        "job_fixed": (None, "the job's fixed cost"),
        "tars_gz": (None, ""),
        "tars_plain": (None, ""),
        "job_1w": (1.0, ""),
        "job_2w": (
            v["job_1w"].seconds / v["job_2w"].seconds,
            f"target >= {TARGET_WORKERS}x",
        ),
        "job_2t": (
            v["job_1w"].seconds / v["job_2t"].seconds,
            f"target >= {TARGET_WORKERS}x (the job's default on <= 4 cores)",
        ),
        "job_2w_fixed": (None, "fixed cost, processes"),
        "job_2t_fixed": (None, "fixed cost, threads"),
        "job_quarter": (None, "memory at one tar"),
    }
    print(
        f"\n{'row':<42} {'images':>6} {'s':>8} {'s proc':>7} {'img/s':>7} {'ms/img':>7} {'ratio':>7} "
        f"{'CPU ms':>6} {'CPU-s':>6} {'peak MB':>7}  note"
    )
    for key, variant in v.items():
        if key == "job_1w":
            print(f"{'-- whole corpus, not pinned (vs 1 worker) --':<42}")
        if key == "loop":
            print(f"{'-- per core, pinned (vs the Pillow loop) --':<42}")
        best = variant.best
        assert best is not None
        ratio, note = ratio_rows[key]
        n = variant.images
        cpu_ms = f"{1000 * variant.cpu / n:6.1f}" if variant.pinned else f"{'':6}"
        print(
            f"{variant.name:<42} {n:6d} {best['seconds']:8.2f} {best['process_seconds']:7.2f} "
            f"{n / best['seconds']:7.1f} {1000 * best['seconds'] / n:7.1f} {_fmt_ratio(ratio):>7} "
            f"{cpu_ms} {best['cpu_seconds']:6.1f} {variant.peak_mb:7.0f}  {note}"
        )

    # Derived figures
    per_core = base / v["job_core"].seconds
    default_2 = "job_2t"  # what the job picks on 2 cores (cxr_prepare.local_plan: threads up to 4 cores)
    workers = v["job_1w"].seconds / v[default_2].seconds
    workers_p = v["job_1w"].seconds / v["job_2w"].seconds
    loop_ms, loop_mb_ms = 1000 * base / k, 1000 * v["loop_mb"].seconds / k
    job_ms = 1000 * v["job_core"].seconds / k
    job_marginal_ms = 1000 * (v["job_core"].seconds - v["job_fixed"].seconds) / (k - v["job_fixed"].images)
    job_fixed_s = v["job_core"].seconds - job_marginal_ms * k / 1000
    gzip_ms = 1000 * (v["tars_gz"].seconds - v["tars_plain"].seconds) / k
    plain_ms = 1000 * v["job_core_plain"].seconds / k
    rate2 = corpus.images / v[default_2].seconds
    hours = MIMIC_CXR_JPG_IMAGES / rate2 / 3600
    n_q, n_full = v["job_quarter"].images, v["job_1w"].images
    mem_q, mem_full = v["job_quarter"].peak_mb, v["job_1w"].peak_mb
    slope = (mem_full - mem_q) / (n_full - n_q) * 1000 if n_full != n_q else math.nan
    marginal = (v["job_1w"].seconds - v["job_quarter"].seconds) / (n_full - n_q) if n_full != n_q else math.nan
    fixed = v["job_1w"].seconds - marginal * n_full
    ideal_hours = MIMIC_CXR_JPG_IMAGES * marginal / 2 / 3600
    flat = mem_full <= mem_q * (1 + FLAT_TOLERANCE)
    jpgs = list((Path(v["job_1w"].spec["out"]) / "jpg").rglob("*.jpg"))
    jpg_kb = sum(p.stat().st_size for p in jpgs) / max(1, len(jpgs)) / 1024
    from medbeam.io.archives import deal_tars

    # With more than one local worker the job deals the tars into one share per worker of about equal bytes
    # (deal_tars, cutting a tar where a share ends); the busier share bounds the speed-up.
    sizes = {name: (corpus.root / name).stat().st_size for name in corpus.tars}
    shares = [
        sum((w[1] if w and w[1] is not None else size) - (w[0] if w else 0) for _, size, w in share)
        for share in deal_tars(list(sizes.items()), 2)
    ]
    busiest = max(shares) / sum(shares)
    bound = 1 / busiest
    fixed_1 = v["job_fixed"].seconds
    marginal_2 = {key: (v["job_1w"].seconds - fixed_1) / (v[key].seconds - v[f"{key}_fixed"].seconds)
                  for key in ("job_2t", "job_2w")}  # fmt: skip
    rate2_marginal = (corpus.images - tiny.images) / (v[default_2].seconds - v[f"{default_2}_fixed"].seconds)
    hours_marginal = MIMIC_CXR_JPG_IMAGES / rate2_marginal / 3600

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    if job_marginal_ms <= 0:
        print("\n(wall times too noisy for a marginal cost: the fixed-cost run took longer than its difference)")
    print(
        f"\nper core, steady state: the job {job_marginal_ms:.1f} ms/image marginal + {job_fixed_s:.1f} s fixed "
        f"(K={k} vs {v['job_fixed'].images} images) against the Pillow loop's {loop_ms:.1f} ms/image: "
        f"{loop_ms / job_marginal_ms:.2f}x at large N; pipeline overhead {job_marginal_ms - loop_mb_ms:+.1f} ms/image "
        f"over the same image work in a loop ({loop_mb_ms:.1f} ms/image)"
    )
    cpu_loop, cpu_loop_mb = 1000 * v["loop"].cpu / k, 1000 * v["loop_mb"].cpu / k
    cpu_job_whole = 1000 * v["job_core"].cpu / k
    cpu_job = 1000 * (v["job_core"].cpu - v["job_fixed"].cpu) / (k - v["job_fixed"].images)
    cpu_gzip = 1000 * (v["tars_gz"].cpu - v["tars_plain"].cpu) / k
    print(
        f"per core on CPU time (less hit by a busy machine): Pillow loop {cpu_loop:.1f}, medbeam-resize loop "
        f"{cpu_loop_mb:.1f}, job {cpu_job_whole:.1f} ms/image whole-job ({cpu_loop / cpu_job_whole:.2f}x), "
        f"{cpu_job:.1f} marginal ({cpu_loop / cpu_job:.2f}x at large N)"
    )
    print(
        f"gzip: {gzip_ms:.1f} ms/image to decompress, {cpu_gzip:.1f} on CPU time (read_members "
        f"{v['tars_gz'].seconds / k * 1000:.1f} vs {v['tars_plain'].seconds / k * 1000:.1f} ms/image on .tar.gz "
        f"vs .tar), {cpu_gzip / cpu_job:.0%} of the job's marginal CPU; the job on the plain .tar: "
        f"{plain_ms:.1f} vs {job_ms:.1f} ms/image whole-job"
    )
    cpu_1w = v["job_1w"].best["cpu_seconds"]  # type: ignore[index]
    cpu_2t, cpu_2w = v["job_2t"].best["cpu_seconds"], v["job_2w"].best["cpu_seconds"]  # type: ignore[index]
    idle_2 = v[default_2].best["cpu_seconds"] * busiest  # type: ignore[index]
    print(
        f"1 worker, whole corpus: {1000 * marginal:.1f} ms/image marginal + {fixed:.1f} s fixed (from the N and "
        f"one-tar runs); resized JPGs {jpg_kb:.1f} kB each; the 2 shares of the tars (deal_tars) hold "
        f"{', '.join(f'{x / 2**20:.0f}' for x in shares)} MB: 2 workers can reach at most {bound:.2f}x"
    )
    print(
        f"2 workers without each mode's fixed cost (its first-{tiny.images}-images run; 1 worker's from the "
        f"pinned one): threads {marginal_2['job_2t']:.2f}x, processes {marginal_2['job_2w']:.2f}x"
    )
    print(
        f"whole-process CPU: 1 worker {cpu_1w:.0f} CPU-s, 2 threads {cpu_2t:.0f} ({cpu_2t / cpu_1w - 1:+.0%}), "
        f"2 processes {cpu_2w:.0f} ({cpu_2w / cpu_1w - 1:+.0%}); wall/CPU {v['job_1w'].seconds / cpu_1w:.2f}, "
        f"{v['job_2t'].seconds / cpu_2t:.2f} and {v['job_2w'].seconds / cpu_2w:.2f} (1.0 and 0.5 on idle cores); "
        f"the busier share of the threads' CPU: {idle_2:.0f} s, {cpu_1w / idle_2:.2f}x"
    )
    print("\ntargets:")
    print(
        f"  per core vs the plain loop (K={k}):     {per_core:.2f}x   target >= {TARGET_PER_CORE}x   "
        f"{verdict(per_core >= TARGET_PER_CORE)}   (on CPU time {cpu_loop / cpu_job_whole:.2f}x; "
        f"at large N {loop_ms / job_marginal_ms:.2f}x, on CPU time {cpu_loop / cpu_job:.2f}x)"
    )
    print(
        f"  2 workers vs 1 (N={corpus.images}, {len(corpus.tars)} tars):  {workers:.2f}x (threads, the job's "
        f"default here; processes {workers_p:.2f}x)   target >= {TARGET_WORKERS}x   "
        f"{verdict(workers >= TARGET_WORKERS and corpus.images >= 2000)}"
        + ("   (N < 2000: indicative only)" if corpus.images < 2000 else "")
        + f"   (without fixed costs {marginal_2[default_2]:.2f}x)"
    )
    print(
        f"  memory: peak RSS {mem_q:.0f} MB at {n_q} images, {mem_full:.0f} MB at {n_full} "
        f"({slope:+.1f} MB per 1000 images; {mem_full + slope * (MIMIC_CXR_JPG_IMAGES - n_full) / 1000:.0f} MB "
        f"at {MIMIC_CXR_JPG_IMAGES:,} if linear)   target: flat (within {FLAT_TOLERANCE:.0%})   {verdict(flat)}"
    )
    print(
        f"  projection: {MIMIC_CXR_JPG_IMAGES:,} images at {rate2:.1f} images/s (2 workers) = {hours:.2f} h   "
        f"goal < {GOAL_HOURS} h   {verdict(hours < GOAL_HOURS)}"
    )
    print(
        f"              ({hours_marginal:.2f} h at the 2 workers' marginal rate, {rate2_marginal:.1f} images/s; "
        f"{ideal_hours:.2f} h if 2 workers halved the 1-worker marginal cost exactly)"
    )
    print(
        f"\nchecks: {'all passed' if not problems else 'FAILED'} (records = corpus images, no rejects, "
        f"Examples of the job == the medbeam-resize loop's); total {time.perf_counter() - t_total:.0f} s"
    )
    for problem in problems:
        print(f"  PROBLEM: {problem}")
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
