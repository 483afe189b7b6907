"""Benchmark: `medbeam dicom import` (STOW-RS) and the enumerate + retrieve path (QIDO-RS + WADO-RS)
against a private, loopback-only Orthanc on this machine.

Run by hand (it is not a test); needs Orthanc (scripts/ensure-orthanc.sh) and gcc:

    .venv/bin/python -m benchmarks.bench_dicomweb [--instances 400] [--out bench-out]

from the repository root (``make bench-dicomweb``), so that ``tests.orthanc`` imports.

1. Generates a deterministic corpus under ``OUT/dicomweb-corpus-v1`` once (kept between runs): CT-like
   slices 512×512 int16 (≈ 0.5 MB each, Explicit VR Little Endian), 100 per series, one series per study.
2. Starts Orthanc (tests/orthanc.py: own storage, free port, LD_PRELOAD shim binding to 127.0.0.1).
3. Times, each on an empty store unless said otherwise:
   - a baseline without Beam: one STOW-RS request per instance, sequential (`requests`), to show what
     the server alone takes;
   - `dicom_import.run` with the defaults (batches of 50, 4 sending threads for ≥ 200 files);
   - the same with `--direct_num_workers=1` (one sender), and with batches of 1;
   - a re-import (everything already present: QIDO-RS lookups only, nothing sent);
   - `enumerate_instances` over the whole store, then `retrieve_instance_bytes` for every instance,
     sequential and from 4 threads;
   - the whole export (metadata table + PNGs) from the files, then from the store, same defaults.
Instances/s and MB/s are printed as a table and written to ``OUT/bench_dicomweb.json``. The client and
Orthanc share this machine's cores, so the figures are the floor of what a real server allows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medbeam.io import dicomweb as dw
from medbeam.pipelines import dicom_export as de
from medbeam.pipelines import dicom_import as di
from tests.orthanc import OrthancServer, build_loopback_shim, missing_prerequisite

ROOT = Path(__file__).resolve().parents[1]

CORPUS_VERSION = "v1"
SEED = 20261122
SLICES_PER_SERIES = 100
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def make_corpus(directory: Path, count: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"ct_{i:05d}.dcm" for i in range(count)]
    if all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(SEED)
    salt = f"medbeam-bench-dicomweb-{CORPUS_VERSION}"
    base = np.clip(rng.normal(0, 300, (512, 512)), -1024, 3000).astype(np.int16)
    for i, path in enumerate(paths):
        series_index = i // SLICES_PER_SERIES
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_SOP_CLASS
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[salt, "sop", str(i)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CT_SOP_CLASS
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[salt, "study", str(series_index)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[salt, "series", str(series_index)])
        ds.PatientID = f"BENCH{series_index:03d}"
        ds.PatientName = f"Bench^{series_index}"
        ds.Modality = "CT"
        ds.InstanceNumber = i % SLICES_PER_SERIES + 1
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.roll(base, i, axis=0).tobytes()
        ds.save_as(path, enforce_file_format=True)
    return paths


def settings_for(server: OrthancServer) -> dw.DicomwebSettings:
    return dw.DicomwebSettings.from_options(server.dicomweb_url)


def rate(count: int, total_bytes: int, seconds: float) -> dict:
    return {
        "instances": count,
        "seconds": round(seconds, 2),
        "instances_per_s": round(count / seconds, 1),
        "MB_per_s": round(total_bytes / seconds / 1e6, 1),
    }


def time_import(
    server: OrthancServer, corpus_dir: Path, out: Path, beam_args: list[str], **kwargs
) -> tuple[dict, di.ImportCounts]:
    settings = dw.DicomwebSettings.from_options(server.dicomweb_url)
    config = di.ImportConfig(
        inputs=[str(corpus_dir)], dicomweb=settings, parquet_dir=str(out), progress=False, **kwargs
    )
    start = time.perf_counter()
    counts = di.run(config, beam_args)
    seconds = time.perf_counter() - start
    return rate(counts.files_in, counts.bytes_sent, seconds), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    args = parser.parse_args()
    reason = missing_prerequisite()
    if reason:
        sys.exit(reason)

    corpus_dir = args.out / f"dicomweb-corpus-{CORPUS_VERSION}-{args.instances}"
    paths = make_corpus(corpus_dir, args.instances)
    total_bytes = sum(p.stat().st_size for p in paths)
    results: dict[str, dict] = {}
    work = Path(tempfile.mkdtemp(prefix="medbeam-bench-dicomweb-"))
    try:
        server = OrthancServer(work / "orthanc", build_loopback_shim(work), users=None)
        (work / "orthanc").mkdir()
        with server:
            print(
                f"Orthanc on {server.url}: listening on {server.listening()}; {len(paths)} files, {total_bytes / 1e6:.0f} MB"
            )

            # Warm-up: Beam imports, pydicom, the server's first request.
            time_import(server, corpus_dir, work / "warm", ["--direct_num_workers=1"], max_batch_instances=50)
            server.clear()

            session = requests.Session()
            start = time.perf_counter()
            for path in paths:
                body, content_type = dw.stow_body([path.read_bytes()])
                answer = session.post(
                    server.dicomweb_url + "/studies", data=body, headers={"Content-Type": content_type}, timeout=60
                )
                answer.raise_for_status()
            results["baseline: 1 instance per STOW-RS, sequential, no Beam"] = rate(
                len(paths), total_bytes, time.perf_counter() - start
            )
            server.clear()

            variants = [
                ("import, defaults (batches of 50, 4 threads)", [], {}),
                ("import, batches of 50, 1 sender", ["--direct_num_workers=1"], {}),
                ("import, batches of 1, 4 threads", [
                    "--direct_running_mode=multi_threading", "--direct_num_workers=4"], {"max_batch_instances": 1}),
            ]  # fmt: skip
            for name, beam_args, kwargs in variants:
                figures, counts = time_import(server, corpus_dir, work / name.replace(" ", "_"), beam_args, **kwargs)
                assert counts.stored == len(paths) and server.instance_count() == len(paths), counts
                figures["stow_requests"] = counts.stow_requests
                results[name] = figures
                server.clear()

            time_import(server, corpus_dir, work / "fill", [])
            figures, counts = time_import(server, corpus_dir, work / "again", [])
            assert counts.already_present == len(paths) and counts.bytes_sent == 0, counts
            figures["MB_per_s"] = 0.0
            results["re-import, all already present (QIDO-RS only)"] = figures

            client = dw.DicomwebSettings.from_options(server.dicomweb_url).make_client()
            start = time.perf_counter()
            refs = list(dw.enumerate_instances(client))
            results["enumerate_instances (QIDO-RS)"] = rate(len(refs), 0, time.perf_counter() - start)
            assert len(refs) == len(paths)

            start = time.perf_counter()
            fetched = sum(len(dw.retrieve_instance_bytes(client, *ref)) for ref in refs)
            results["retrieve_instance_bytes, sequential"] = rate(len(refs), fetched, time.perf_counter() - start)

            clients = [dw.DicomwebSettings.from_options(server.dicomweb_url).make_client() for _ in range(4)]
            start = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                sizes = pool.map(
                    lambda item: len(dw.retrieve_instance_bytes(clients[item[0] % 4], *item[1])), enumerate(refs)
                )
                fetched = sum(sizes)
            results["retrieve_instance_bytes, 4 threads"] = rate(len(refs), fetched, time.perf_counter() - start)

            # The whole export (rows + PNGs + tables), from the files and from the store, same defaults.
            for name, source in (
                ("export, direct from the files", {"inputs": [str(corpus_dir)]}),
                ("export from the store (QIDO-RS + WADO-RS)", {"dicomweb": settings_for(server)}),
            ):
                target = work / name.replace(" ", "_")
                start = time.perf_counter()
                counts = de.run(
                    de.ExportConfig(
                        png_dir=str(target / "png"), parquet_dir=str(target / "t"), progress=False, **source
                    )
                )
                results[name] = rate(counts.instances, total_bytes, time.perf_counter() - start)
                assert counts.pngs == len(paths), counts
    finally:
        shutil.rmtree(work, ignore_errors=True)

    width = max(len(k) for k in results)
    print(f"\n{'':{width}}  instances/s   MB/s   seconds")
    for name, figures in results.items():
        print(f"{name:{width}}  {figures['instances_per_s']:>11}  {figures['MB_per_s']:>5}  {figures['seconds']:>8}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"instances": len(paths), "bytes": total_bytes, "cpus": os.cpu_count(), "results": results}
    (args.out / "bench_dicomweb.json").write_text(json.dumps(report, indent=2))
    direct = results["export, direct from the files"]["seconds"]
    store = results["export from the store (QIDO-RS + WADO-RS)"]["seconds"]
    print(f"\nexport from the store takes {store / direct:.2f}x the time of the direct file export")
    print(f"written: {args.out / 'bench_dicomweb.json'}")


if __name__ == "__main__":
    main()
