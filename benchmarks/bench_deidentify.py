"""Benchmark: `medbeam dicom deidentify` on the DirectRunner against `dicognito`, as each one's users run it.

Run by hand (it is not a test), from the repository root:

    .venv/bin/python -m benchmarks.bench_deidentify [--quick] [--out DIR] [--rounds N]

Corpus: the uncompressed X-rays (2500×2048, 16-bit, ~10 MB each) and CT slices (512×512 int16) of
``benchmarks/corpus.py`` (generated once under ``DIR/corpus-v1``, kept between runs). Per set and round,
on one pinned core, alternately (so that a slow spell of this shared VM hits both sides of a ratio):

* dicognito: the set copied to a scratch folder (not timed), then ``python -m dicognito --in-place DIR``
  (its documented CLI; the ``dicognito`` console script of 0.19.0 fails to start, so ``-m`` is how it
  runs). dicognito draws fresh random replacements each run unless given ``--seed``; it is timed without.
* medbeam (also as ``medbeam_run``: the same job through ``run()``, timed inside its process, so without
  Python's and Beam's imports):
  ``python -m medbeam.cli dicom deidentify -i SET --output-dir OUT --key-env … --parquet-dir …
  --redact-burned-in flagged --no-progress --direct_num_workers=1`` (DX and CT are not flagged for OCR).

Both are whole processes, start-up included (what a user waits for); the fastest round is kept. Each
tool also runs on one file in the same round: its start-up (for medbeam: importing Beam, building and
running the pipeline, several seconds on a loaded 2-core VM), from which the steady rate after start-up
is (N − 1) / (wall − one-file wall).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.corpus import CORPUS_VERSION, ensure_corpus, make_set, prefetch

REPO = Path(__file__).resolve().parent.parent
KEY_ENV = "MEDBEAM_BENCH_DEID_KEY"


def _pin(core: int):
    def pin() -> None:
        os.sched_setaffinity(0, {core})

    return pin


def _timed(cmd: list[str], core: int, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, preexec_fn=_pin(core), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])} … failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return wall


def run_dicognito(src: Path, scratch: Path, core: int, env: dict[str, str]) -> float:
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(src, scratch)  # dicognito anonymizes in place: a fresh copy each round, not timed
    return _timed([sys.executable, "-m", "dicognito", "--in-place", "--quiet", str(scratch)], core, env)


def run_medbeam(src: Path, out: Path, core: int, env: dict[str, str]) -> float:
    for d in (out, out.with_name(out.name + "-tables")):
        if d.exists():
            shutil.rmtree(d)
    cmd = [
        sys.executable, "-m", "medbeam.cli", "dicom", "deidentify", "-i", str(src), "--output-dir", str(out),
        "--key-env", KEY_ENV, "--parquet-dir", str(out.with_name(out.name + "-tables")),
        "--redact-burned-in", "flagged", "--no-progress", "--direct_num_workers=1",
    ]  # fmt: skip
    wall = _timed(cmd, core, env)
    written = sum(1 for _ in out.rglob("*.dcm"))
    if written != sum(1 for _ in src.glob("*.dcm")):
        raise RuntimeError(f"medbeam wrote {written} files for {src}")
    return wall


_IN_PROCESS = """
import json, sys, time
from medbeam.pipelines.dicom_deidentify import DeidentifyConfig, run
from medbeam.transforms.deidentify import KeySource
src, out, tables, key_env = sys.argv[1:5]
config = DeidentifyConfig(inputs=[src], key=KeySource(env=key_env), output_dir=out, parquet_dir=tables,
                          redact_burned_in="flagged", progress=False)
start = time.perf_counter()
counts = run(config, ["--direct_num_workers=1"])
print(json.dumps({"wall": time.perf_counter() - start, "written": counts.deidentified}))
"""


def run_medbeam_in_process(src: Path, out: Path, core: int, env: dict[str, str]) -> float:
    """`run()` alone, timed inside its process: Python's and Beam's imports left out."""
    tables = out.with_name(out.name + "-tables")
    for d in (out, tables):
        if d.exists():
            shutil.rmtree(d)
    cmd = [sys.executable, "-c", _IN_PROCESS, str(src), str(out), str(tables), KEY_ENV]
    done = subprocess.run(cmd, cwd=REPO, env=env, preexec_fn=_pin(core), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"in-process run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["wall"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sets (a few minutes on 2 loaded cores)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    n_xray, n_ct = (20, 200) if args.quick else (40, 500)
    corpus = ensure_corpus(args.out / f"corpus-{CORPUS_VERSION}", n_xray, n_ct)
    work = args.out / "deid"
    sets = {
        "xray_raw": make_set(work / "sets", "xray_raw", corpus["raw"][:n_xray]),
        "ct": make_set(work / "sets", "ct", corpus["ct"][:n_ct]),
        "one": make_set(work / "sets", "one", corpus["ct"][:1]),
    }
    prefetch({"raw": corpus["raw"][:n_xray], "ct": corpus["ct"][:n_ct]})
    env = dict(os.environ, **{KEY_ENV: "bench-key-" + "0123456789abcdef" * 2})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    core = sorted(os.sched_getaffinity(0))[-1]
    results: dict[str, dict[str, float]] = {}
    run_medbeam(sets["one"], work / "warm", core, env)  # warm-up: page cache, .pyc files
    run_dicognito(sets["one"], work / "warm-dicognito", core, env)
    tools = {"dicognito": run_dicognito, "medbeam": run_medbeam, "medbeam_run": run_medbeam_in_process}
    for name in ("xray_raw", "ct"):
        count = sum(1 for _ in sets[name].glob("*.dcm"))
        walls: dict[str, list[float]] = {f"{tool}{suffix}": [] for tool in tools for suffix in ("", "_one")}
        for _ in range(args.rounds):
            for tool, fn in tools.items():  # alternate the tools within each round
                walls[tool].append(fn(sets[name], work / f"{tool}-{name}", core, env))
                walls[f"{tool}_one"].append(fn(sets["one"], work / f"{tool}-one", core, env))
        best = {key: min(values) for key, values in walls.items()}
        results[name] = {"instances": count, **best}
        line = [f"{name:9s} {count:4d} instances, one core:"]
        for tool in tools:
            wall, one = best[tool], best[f"{tool}_one"]
            steady = (count - 1) / (wall - one) if wall > one else float("inf")
            results[name][f"{tool}_steady_per_s"] = steady
            line.append(f"{tool} {count / wall:6.1f}/s ({wall:.1f} s; start-up {one:.1f} s, then {steady:.1f}/s)")
        ratio = best["dicognito"] / best["medbeam"]
        run_ratio = best["dicognito"] / best["medbeam_run"]
        steady_ratio = results[name]["medbeam_steady_per_s"] / results[name]["dicognito_steady_per_s"]
        line.append(
            f"medbeam/dicognito: {ratio:.2f}× whole process, {run_ratio:.2f}× run() without imports, "
            f"{steady_ratio:.2f}× after start-up"
        )
        print(" ".join(line[:1]) + "\n  " + "\n  ".join(line[1:]), flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
