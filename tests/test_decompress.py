"""`files decompress`: every format, output naming, bombs, corrupt inputs, collisions, reruns, gs:// and s3://, CLI."""

from __future__ import annotations

import bz2
import hashlib
import lzma
import random
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medbeam.cli.files import app
from medbeam.io import archives, files
from medbeam.io.archives import Limits
from medbeam.pipelines.decompress import DecompressConfig, run
from tests.emulators import BucketEmulator
from tests.helpers import gz, read_rejects, tree, zst

pytestmark = pytest.mark.usefixtures("restore_filesystem_options")

TEXT = b"patient,label\n" + b"".join(b"p%05d,%d\n" % (i, i % 3) for i in range(5000))


# ---------------------------------------------------------------------------------------------------
# Output paths


def _out(source: str, pattern: str = r"(.*)\.gz", repl: str = r"\1", base=None, output_dir=None) -> str:
    return archives.decompressed_path(source, re.compile(pattern), repl, base, output_dir)


def test_output_path_is_the_substitution():
    assert _out("gs://b/raw/x.csv.gz") == "gs://b/raw/x.csv"
    assert _out("gs://b/raw/folder/x.gz", r"(.*)/folder/(.*)\.gz", r"\1/folder_uz/\2") == "gs://b/raw/folder_uz/x"
    assert _out("/data/a/x.gz") == "/data/a/x"


def test_output_path_relocated_under_output_dir():
    assert _out("gs://b/raw/a/x.gz", base="gs://b/raw/", output_dir="s3://c/out") == "s3://c/out/a/x"
    assert _out("/data/raw/x.gz", base="/data/", output_dir="/out") == "/out/raw/x"
    with pytest.raises(archives.OutputPathError, match="not under the input's base"):
        _out("gs://b/raw/x.gz", r"gs://b/raw/(.*)\.gz", r"gs://elsewhere/\1", base="gs://b/raw/", output_dir="/out")
    with pytest.raises(archives.OutputPathError, match=r"'\.\.'"):
        _out("gs://b/raw/../../etc/x.gz", base="gs://b/raw/", output_dir="/out")


def test_output_path_refusals():
    with pytest.raises(archives.SameAsInputError, match="is the input path"):
        _out("gs://b/raw/x.gz", "(.*)", r"\1")
    with pytest.raises(archives.SameAsInputError):
        _out("/data/x.gz", "(.*)", r"\1", base="/data/", output_dir="/data")
    with pytest.raises(archives.OutputPathError, match="directory name"):
        _out("gs://b/raw/x.gz", r"x\.gz", "")


def test_check_substitution():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        archives.check_substitution("(unclosed", r"\1")
    with pytest.raises(ValueError, match="does not fit"):
        archives.check_substitution(r"(.*)\.gz", r"\2")
    archives.check_substitution(r"(?P<stem>.*)\.gz", r"\g<stem>")


def test_inputs_are_prefixes_globs_or_directories(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f.gz").write_bytes(b"")
    assert files.input_pattern("gs://b/raw/p1", remote="prefix") == "gs://b/raw/p1**"
    assert files.input_pattern("gs://b/raw/", remote="prefix") == "gs://b/raw/**"
    assert files.input_pattern("s3://b/raw/*.gz", remote="prefix") == "s3://b/raw/*.gz"
    assert files.input_pattern(str(tmp_path / "d"), remote="prefix") == str(tmp_path / "d" / "**")
    assert files.input_pattern(str(tmp_path / "f.gz"), remote="prefix") == str(tmp_path / "f.gz")
    assert archives.input_base("gs://b/raw/") == "gs://b/raw/"
    assert archives.input_base("gs://b/raw") == "gs://b/"
    assert archives.input_base("gs://b/raw/*/x*.gz") == "gs://b/raw/"
    assert archives.input_base(str(tmp_path / "d")) == str(tmp_path) + "/"  # rsync-like: keeps d/
    assert archives.input_base(str(tmp_path / "d") + "/") == str(tmp_path / "d") + "/"
    assert archives.input_base(str(tmp_path / "f.gz")) == str(tmp_path) + "/"


# ---------------------------------------------------------------------------------------------------
# One file


COMPRESSED = {
    "gzip": gz(TEXT[:1000]) + gz(TEXT[1000:]),  # two gzip members
    "bzip2": bz2.compress(TEXT[:1000]) + bz2.compress(TEXT[1000:]),
    "xz": lzma.compress(TEXT),
    "zstd": zst(TEXT[:1000]) + zst(TEXT[1000:]),  # two frames
}


@pytest.mark.parametrize("fmt", sorted(COMPRESSED))
def test_every_format_by_magic(tmp_path, fmt):
    source = tmp_path / "misnamed.gz"  # the name does not matter
    source.write_bytes(COMPRESSED[fmt])
    out = tmp_path / "out" / "x.csv"
    assert archives.decompress_file(str(source), source.stat().st_size, str(out), Limits()) == (fmt, len(TEXT))
    assert out.read_bytes() == TEXT


def test_large_output_streams_in_chunks(tmp_path):
    data = random.Random(0).randbytes(5 * archives.CHUNK_SIZE + 7)
    source = tmp_path / "big.zst"
    source.write_bytes(zst(data))
    out = tmp_path / "big"
    assert archives.decompress_file(str(source), source.stat().st_size, str(out), Limits())[1] == len(data)
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize(
    ("data", "stage", "message"),
    [
        (b"just text", "detect", "not gzip, bzip2, xz or zstd"),
        (b"", "detect", "empty file"),
        (gz(TEXT)[:-100], "read", "corrupt or truncated gzip"),
        (gz(TEXT)[:-8] + b"\0\0\0\0" + gz(TEXT)[-4:], "read", "CRC"),
        (bz2.compress(TEXT)[:200], "read", "bzip2"),
        (lzma.compress(TEXT)[:-30], "read", "xz"),
        (zst(TEXT)[:-30], "read", "zstd"),
    ],
)
def test_corrupt_or_unknown_input_leaves_no_output(tmp_path, data, stage, message):
    source = tmp_path / "in.gz"
    source.write_bytes(data)
    out = tmp_path / "out"
    with pytest.raises(archives.FileJobError, match=message) as info:
        archives.decompress_file(str(source), len(data), str(out), Limits())
    assert info.value.stage == stage
    assert not out.exists()


def test_bomb_is_refused_while_streaming_and_partial_output_deleted(tmp_path):
    source = tmp_path / "zeros.gz"
    source.write_bytes(gz(bytes(10 << 20)))  # 10 MiB of zeros in ~10 KiB
    out = tmp_path / "zeros"
    with pytest.raises(archives.DecompressionBombError, match="more than 100:1") as info:
        archives.decompress_file(str(source), source.stat().st_size, str(out), Limits(max_ratio=100))
    assert info.value.stage == "bomb" and not out.exists()
    with pytest.raises(archives.DecompressionBombError, match="past the limit of 1.0 MiB"):
        archives.decompress_file(str(source), source.stat().st_size, str(out), Limits(max_bytes=1 << 20))
    assert not out.exists()
    # within the limits it is fine
    assert archives.decompress_file(str(source), source.stat().st_size, str(out), Limits(max_ratio=2000))[1] == 10 << 20


# ---------------------------------------------------------------------------------------------------
# The job, on the DirectRunner


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compressed")
    (root / "sub").mkdir()
    files = {
        "a.csv.gz": gz(TEXT),
        "b.csv.bz2": bz2.compress(TEXT),
        "c.csv.xz": lzma.compress(TEXT),
        "sub/d.csv.zst": zst(TEXT),
        "sub/e.gz": bz2.compress(b"bzip2 behind a .gz name"),  # by magic bytes
        "plain.gz": b"not compressed at all",  # detect reject
        "truncated.gz": gz(TEXT)[:-50],  # read reject
        "bomb.gz": gz(bytes(10 << 20)),  # bomb reject with max_ratio=100
        "g.gz": gz(b"g from gz"),  # g.bz2 and g.gz both want "g": g.bz2 (first) wins
        "g.bz2": bz2.compress(b"g from bz2"),
        "h.gz.gz": gz(gz(b"h")),  # → h.gz: in place that is another input (refused); relocated it is fine
        "h.gz": gz(b"h"),
        "readme.txt": b"not selected by the pattern",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


SELECTED = 12
WRITTEN = ["a.csv", "b.csv", "c.csv", "g", "h", "h.gz", "sub/d.csv", "sub/e"]
REJECTED = {"detect": 1, "read": 1, "bomb": 1, "collision": 1}


@pytest.fixture(scope="module")
def relocated(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("decompressed")
    config = DecompressConfig(inputs=[str(corpus) + "/"], output_dir=str(out / "o"), max_ratio=100)
    return config, run(config), out / "o"


def test_job_counts_reconcile(relocated):
    config, counts, _out = relocated
    assert (counts.files_in, counts.written, counts.rejected) == (SELECTED, len(WRITTEN), sum(REJECTED.values()))
    assert counts.files_in == counts.written + counts.rejected
    assert counts.rejected_by_stage == REJECTED
    assert counts.bytes_out == 4 * len(TEXT) + len(b"bzip2 behind a .gz name") + len(b"g from bz2") + len(b"h") + len(
        gz(b"h")
    )
    assert counts.summary() == "12 files in, 8 written, 4 rejected (1 bomb, 1 collision, 1 detect, 1 read)"
    assert len(read_rejects(config.rejects_dir)) == counts.rejected


def test_job_outputs_and_rejects(relocated, corpus):
    config, _counts, out = relocated
    files = tree(out)
    assert sorted(k for k in files if not k.startswith("_medbeam/")) == WRITTEN
    assert files["a.csv"] == files["sub/d.csv"] == TEXT and files["g"] == b"g from bz2" and files["h"] == b"h"
    assert config.rejects_dir == f"{out}/_medbeam"
    by_uri = {r["uri"]: r for r in read_rejects(config.rejects_dir)}
    assert by_uri[f"{corpus}/bomb.gz"]["stage"] == "bomb"
    assert by_uri[f"{corpus}/plain.gz"]["stage"] == "detect"
    assert by_uri[f"{corpus}/truncated.gz"]["stage"] == "read"
    assert "which was kept" in by_uri[f"{corpus}/g.gz"]["message"]
    assert files["h.gz"] == gz(b"h")
    assert not (out / "bomb").exists() and not (out / "truncated").exists()


def test_job_rerun_is_idempotent(relocated):
    config, counts, out = relocated
    before = tree(out)
    assert run(config) == counts
    assert tree(out) == before


def test_job_in_place_with_the_original_flags(corpus, tmp_path):
    """As decompress_gcs.py: outputs next to the inputs; rejects default to the input's directory."""
    work = tmp_path / "w"
    work.mkdir()
    for name in ("a.csv.gz", "b.csv.bz2", "truncated.gz", "h.gz.gz", "h.gz"):
        (work / name).write_bytes((corpus / name).read_bytes())
    config = DecompressConfig(inputs=[str(work)], path_sub_pattern=r"(.*)\.gz", path_sub_repl=r"\1")
    counts = run(config)
    assert (counts.files_in, counts.written, counts.rejected) == (4, 2, 2)  # b.csv.bz2 is not selected
    assert counts.rejected_by_stage == {"read": 1, "collision": 1}
    assert (work / "a.csv").read_bytes() == TEXT and (work / "h").read_bytes() == b"h"
    assert (work / "h.gz").read_bytes() == gz(b"h")  # not overwritten by h.gz.gz
    assert config.rejects_dir == str(work / "_medbeam")
    by_uri = {r["uri"]: r for r in read_rejects(config.rejects_dir)}
    assert "another input of this run" in by_uri[f"{work}/h.gz.gz"]["message"]
    assert run(config) == counts  # the rejects table under the input is not an input


def test_output_equal_to_input_stops_before_the_run(corpus):
    config = DecompressConfig(inputs=[str(corpus)], path_sub_pattern="(.*)", path_sub_repl=r"\1")
    with pytest.raises(ValueError, match="is the input path"):
        run(config)


def test_cli_prints_counts(corpus, tmp_path):
    result = CliRunner().invoke(
        app,
        ["decompress", "-i", str(corpus / "a.csv.gz"), "-i", str(corpus / "sub"), "--output-dir", str(tmp_path / "o"),
         "--path-sub-pattern", r"(.*)\.(gz|zst)", "--path-sub-repl", r"\1.txt", "--max-output-bytes", "10MiB",
         "--duckdb", str(tmp_path / "r.duckdb"), "--direct_num_workers=1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 files in, 3 written, 0 rejected" in result.output
    assert (tmp_path / "o" / "a.csv.txt").read_bytes() == TEXT
    assert (tmp_path / "o" / "sub" / "d.csv.txt").read_bytes() == TEXT  # `sub`, not `sub/`: keeps sub/
    assert (tmp_path / "o" / "sub" / "e.txt").exists()
    assert f"rejects: {tmp_path / 'r.duckdb'} (table rejects)" in result.output
    same = CliRunner().invoke(
        app, ["decompress", "-i", str(corpus), "--path-sub-pattern", "(.*)", "--path-sub-repl", r"\1"]
    )
    assert same.exit_code == 2 and "is the input path" in same.output
    bad = CliRunner().invoke(app, ["decompress", "-i", str(corpus), "--path-sub-repl", r"\3"])
    assert bad.exit_code == 2 and "does not fit" in bad.output


# ---------------------------------------------------------------------------------------------------
# gs:// and s3://


def test_object_store(store: BucketEmulator, tmp_path):
    prefix = "decompress-test"
    store.put(f"{prefix}/raw/a.csv.gz", gz(TEXT))
    store.put(f"{prefix}/raw/deep/b.csv.zst", zst(TEXT))
    store.put(f"{prefix}/raw/bomb.gz", gz(bytes(10 << 20)))
    config = DecompressConfig(inputs=[store.uri(prefix, "raw")], max_ratio=100)  # a prefix, in place
    counts = run(config, list(store.beam_args))
    assert (counts.files_in, counts.written, counts.rejected) == (3, 2, 1)
    assert store.get(f"{prefix}/raw/a.csv") == TEXT and store.get(f"{prefix}/raw/deep/b.csv") == TEXT
    keys = store.keys(f"{prefix}/")
    assert f"{prefix}/raw/bomb" not in keys  # the partial output was deleted
    assert f"{prefix}/_medbeam/rejects/_manifest.json" in keys  # next to the prefix `raw`
    # from the bucket to a local directory
    # from the bucket to a local directory; a trailing slash: the paths below raw/ (without: below raw)
    if store.scheme == "s3":
        return  # bucket → local once is enough (Beam's S3 filesystem makes each run slow)
    inputs = [store.uri(prefix, "raw") + "/"]
    local = run(DecompressConfig(inputs=inputs, output_dir=str(tmp_path), max_ratio=100), list(store.beam_args))
    assert local.written == 2 and (tmp_path / "deep" / "b.csv").read_bytes() == TEXT


def test_rerun_with_other_inputs_removes_only_the_previous_runs_outputs(tmp_path):
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "out"
    first.mkdir()
    second.mkdir()
    (first / "a.csv.gz").write_bytes(gz(b"a"))
    (first / "b.csv.gz").write_bytes(gz(b"b"))
    (second / "a.csv.gz").write_bytes(gz(b"A"))
    run(DecompressConfig(inputs=[str(first) + "/"], output_dir=str(out)))
    (out / "mine.txt").write_bytes(b"not medbeam's")
    counts = run(DecompressConfig(inputs=[str(second) + "/"], output_dir=str(out)))
    assert {k: v for k, v in tree(out).items() if not k.startswith("_medbeam/")} == {
        "a.csv": b"A",
        "mine.txt": b"not medbeam's",
    }
    assert counts.stale_outputs_removed == 1
