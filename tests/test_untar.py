"""`files untar`: every tar flavour, traversal attacks, bombs, corrupt archives, reruns, gs:// and s3://, CLI.

Archives are built in memory with Python's tarfile (plus the raw bytes a hostile archive needs); the
member-level checks run the streaming extractor directly, the job-level ones run the Beam pipeline.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from medbeam.cli.files import app
from medbeam.io import archives
from medbeam.io.archives import Limits
from medbeam.pipelines.untar import UntarConfig, run
from tests.emulators import BucketEmulator
from tests.helpers import digests, gz, read_rejects, tree, zst

pytestmark = pytest.mark.usefixtures("restore_filesystem_options")

GOOD = {"scans/p1/a.png": b"\x89PNG" + b"a" * 3000, "scans/p2/b.png": b"\x89PNG" + b"b" * 5000, "labels.csv": b"x,y\n"}


# ---------------------------------------------------------------------------------------------------
# Building archives


def _info(name: str, size: int = 0, type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mtime = size, type_, linkname, 1_700_000_000
    return info


def tar_bytes(members: dict[str, bytes] | list[tuple[tarfile.TarInfo, bytes | None]], fmt: str = "") -> bytes:
    """A tar of `members` (name → data, or (TarInfo, data) for special members), then compressed."""
    buffer = io.BytesIO()
    items = members.items() if isinstance(members, dict) else members
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for key, data in items:
            info = _info(key, len(data)) if isinstance(key, str) else key
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return compress(buffer.getvalue(), fmt)


def compress(data: bytes, fmt: str) -> bytes:
    if fmt == "gz":
        return gz(data)
    if fmt == "bz2":
        return bz2.compress(data)
    if fmt == "xz":
        return lzma.compress(data)
    if fmt == "zst":
        return zst(data)
    return data


ATTACKS: list[tuple[tarfile.TarInfo, bytes | None]] = [
    (_info("/etc/evil", 4), b"evil"),
    (_info("../escape", 4), b"evil"),
    (_info("a/../../nested", 4), b"evil"),
    (_info("..\\windows", 4), b"evil"),
    (_info("../out-sibling/x", 4), b"evil"),  # the output dir's sibling, /…/out-sibling
    (_info("link", type_=tarfile.SYMTYPE, linkname="/etc/passwd"), None),
    (_info("hard", type_=tarfile.LNKTYPE, linkname="scans/p1/a.png"), None),
    (_info("dev", type_=tarfile.CHRTYPE), None),
    (_info("fifo", type_=tarfile.FIFOTYPE), None),
    (_info("_medbeam/rejects/_manifest.json", 2), b"{}"),  # would overwrite the job's own table
    (_info("scans", type_=tarfile.DIRTYPE), None),  # skipped, not refused
]
ATTACK_REJECTS = 10


def hostile_tar() -> bytes:
    good = [(_info(name, len(data)), data) for name, data in GOOD.items()]
    return tar_bytes(good[:1] + ATTACKS + good[1:], "gz")


def _untar_local(archive: Path, out: Path, limits: Limits | None = None, reserved=lambda p: False):
    events, limits = [], limits or Limits()

    def output_for(relative: str) -> str:
        return archives.member_output_path(str(out), relative)

    try:
        for event in archives.untar(str(archive), archive.stat().st_size, output_for, limits, reserved):
            events.append(event)
    except archives.ArchiveFailure as failure:
        return events, failure
    return events, None


def _tree(root: Path) -> dict[str, bytes]:
    """The members written under `root` (not the job's own `_medbeam/` tables)."""
    return tree(root, skip_medbeam=True)


# ---------------------------------------------------------------------------------------------------
# Pure logic


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a/b.png", "a/b.png"), ("./a//b/", "a/b"), ("a/./b", "a/b"), ("..a/b..", "..a/b..")],
)
def test_safe_relative_path_normalises(name, expected):
    assert archives.safe_relative_path(name) == expected


@pytest.mark.parametrize(
    "name",
    ["", ".", "./", "/etc/passwd", "\\x", "C:/x", "C:\\x", "..", "../x", "a/../../x", "a/..", "a\\..\\x",
     "a\nb", "bad\udcff"],
)  # fmt: skip
def test_safe_relative_path_refuses(name):
    with pytest.raises(archives.UnsafeMemberError):
        archives.safe_relative_path(name)


@pytest.mark.parametrize(
    ("path", "stem"),
    [("gs://b/train_p10.tar.gz", "train_p10"), ("/x/a.tgz", "a"), ("a.tar.zst", "a"), ("a.TAR", "a"),
     ("s3://b/c/d.tar.bz2", "d"), ("x.tar.xz", "x"), ("noext", "noext"), ("weird.zip", "weird")],
)  # fmt: skip
def test_archive_stem(path, stem):
    assert archives.archive_stem(path) == stem


def test_is_under_is_component_wise():
    assert archives.is_under("/x/out/a", "/x/out")
    assert archives.is_under("gs://b/out/_medbeam/r", "gs://b/out/_medbeam/")
    assert not archives.is_under("/x/out-sibling/a", "/x/out")
    assert not archives.is_under("/x/outer", "/x/out")


@pytest.mark.parametrize(
    ("text", "size"),
    [("123", 123), ("10MiB", 10 << 20), ("10mb", 10 << 20), ("64GiB", 64 << 30), ("1.5k", 1536), ("none", None),
     ("0", None), ("", None)],
)  # fmt: skip
def test_parse_size(text, size):
    assert archives.parse_size(text) == size


def test_parse_size_refuses_nonsense():
    with pytest.raises(ValueError, match="not a size"):
        archives.parse_size("lots")


# ---------------------------------------------------------------------------------------------------
# The streaming extractor


@pytest.mark.parametrize("fmt", ["", "gz", "bz2", "xz", "zst"])
def test_every_format(tmp_path, fmt):
    archive = tmp_path / f"x.tar{'.' + fmt if fmt else ''}"
    archive.write_bytes(tar_bytes(GOOD, fmt))
    events, failure = _untar_local(archive, tmp_path / "out")
    assert failure is None
    assert sorted(e.member for e in events if e.kind == "written") == sorted(GOOD)
    assert _tree(tmp_path / "out") == GOOD


def test_members_bigger_than_a_chunk_stream_through(tmp_path):
    big = bytes(range(256)) * (3 * archives.CHUNK_SIZE // 256 + 7)
    archive = tmp_path / "big.tar.gz"
    archive.write_bytes(tar_bytes({"big.bin": big, "after.txt": b"after"}, "gz"))
    events, failure = _untar_local(archive, tmp_path / "out")
    assert failure is None
    assert (tmp_path / "out" / "big.bin").read_bytes() == big
    assert (tmp_path / "out" / "after.txt").read_bytes() == b"after"


def test_traversal_attacks_are_refused_and_good_members_written(tmp_path):
    archive = tmp_path / "hostile.tar.gz"
    archive.write_bytes(hostile_tar())
    out = tmp_path / "out"
    events, failure = _untar_local(archive, out, reserved=lambda p: archives.is_under(p, str(out / "_medbeam")))
    assert failure is None
    assert _tree(out) == GOOD
    rejected = {e.member: e.error for e in events if e.kind == "rejected"}
    assert set(rejected) == {info.name for info, _ in ATTACKS if not info.isdir()}
    assert all(e.stage == "unsafe" for e in rejected.values())
    assert "symbolic link" in str(rejected["link"]) and "hard link" in str(rejected["hard"])
    assert [e.member for e in events if e.kind == "skipped"] == ["scans"]
    # nothing landed anywhere else
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.tar.gz", "out"]
    assert not (out / "_medbeam").exists()


def test_truncated_inside_a_member_deletes_the_partial_member(tmp_path):
    data = tar_bytes({"first.txt": b"1" * 2000, "second.bin": b"2" * 50_000, "third.txt": b"3"})
    archive = tmp_path / "cut.tar"
    archive.write_bytes(data[: 512 * 6 + 20_000])  # inside second.bin's data
    events, failure = _untar_local(archive, tmp_path / "out")
    assert [e.member for e in events if e.kind == "written"] == ["first.txt"]
    assert failure is not None and failure.member == "second.bin" and failure.error.stage == "read"
    assert _tree(tmp_path / "out") == {"first.txt": b"1" * 2000}


def test_truncated_at_a_header_boundary_is_still_a_reject(tmp_path):
    """Python's tarfile stops silently at a missing header; the end-of-archive marker tells."""
    whole = tar_bytes({"a.txt": b"a" * 512, "b.txt": b"b" * 512})
    archive = tmp_path / "cut.tar"
    archive.write_bytes(whole[: 512 * 2])  # header + data of a.txt: a clean cut before b.txt
    events, failure = _untar_local(archive, tmp_path / "out")
    assert [e.member for e in events if e.kind == "written"] == ["a.txt"]
    assert failure is not None and failure.member is None and "end-of-archive" in str(failure.error)


def test_garbage_after_the_first_member_is_a_reject(tmp_path):
    whole = tar_bytes({"a.txt": b"a" * 512, "b.txt": b"b" * 512})
    archive = tmp_path / "garbage.tar"
    archive.write_bytes(whole[: 512 * 2] + b"\x07" * 4096)
    _events, failure = _untar_local(archive, tmp_path / "out")
    assert failure is not None and "invalid header" in str(failure.error)


def test_bad_gzip_crc_is_a_reject(tmp_path):
    data = bytearray(tar_bytes(GOOD, "gz"))
    data[-8] ^= 0xFF  # CRC32 of the gzip trailer
    archive = tmp_path / "crc.tar.gz"
    archive.write_bytes(bytes(data))
    _events, failure = _untar_local(archive, tmp_path / "out")
    assert failure is not None and failure.error.stage == "read" and "CRC" in str(failure.error)


def test_not_a_tar(tmp_path):
    for name, data in {
        "notes.tar": b"hello " * 200,
        "csv.tar.gz": gzip.compress(b"a,b\n" * 500),
        "empty.tar": b"",
    }.items():
        archive = tmp_path / name
        archive.write_bytes(data)
        events, failure = _untar_local(archive, tmp_path / "out")
        assert events == [] and failure is not None and failure.error.stage == "open", name


def test_bomb_guard_ratio_stops_before_writing(tmp_path):
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(tar_bytes({"small.txt": b"ok", "zeros.bin": bytes(10 << 20), "late.txt": b"x"}, "gz"))
    assert archive.stat().st_size < 100_000
    events, failure = _untar_local(archive, tmp_path / "out", Limits(max_ratio=100))
    assert [e.member for e in events] == ["small.txt"]
    assert failure is not None and failure.error.stage == "bomb" and failure.member == "zeros.bin"
    assert _tree(tmp_path / "out") == {"small.txt": b"ok"}


def test_bomb_guard_total_bytes(tmp_path):
    archive = tmp_path / "big.tar"
    archive.write_bytes(tar_bytes({"a": b"a" * 600, "b": b"b" * 600}))
    events, failure = _untar_local(archive, tmp_path / "out", Limits(max_bytes=1000, max_ratio=None))
    assert [e.member for e in events] == ["a"] and failure is not None and failure.error.stage == "bomb"
    events, failure = _untar_local(archive, tmp_path / "out2", Limits(max_bytes=1200, max_ratio=None))
    assert failure is None and len(events) == 2


def test_oversized_extended_header_is_refused_without_reading_it(tmp_path):
    header = _info("././@PaxHeader", archives.MAX_EXTENDED_HEADER + 1, tarfile.XHDTYPE)
    block = header.tobuf(format=tarfile.USTAR_FORMAT)
    archive = tmp_path / "pax.tar"
    archive.write_bytes(block + b"\0" * 4096)
    _events, failure = _untar_local(archive, tmp_path / "out")
    assert failure is not None and "extended header" in str(failure.error)


# ---------------------------------------------------------------------------------------------------
# The job, on the DirectRunner


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archives")
    for fmt in ["", "gz", "bz2", "xz", "zst"]:
        members = {f"{fmt or 'plain'}/{name}": data for name, data in GOOD.items()}
        (root / f"set_{fmt or 'plain'}.tar{'.' + fmt if fmt else ''}").write_bytes(tar_bytes(members, fmt))
    (root / "hostile.tgz").write_bytes(hostile_tar())
    corrupt = tar_bytes({"c/" + k: v for k, v in GOOD.items()}, "gz")
    (root / "corrupt.tar.gz").write_bytes(corrupt[: len(corrupt) // 2])
    (root / "readme.txt").write_bytes(b"not an archive")
    # the same member path in two archives: both written, reported as a collision
    (root / "dup1.tar").write_bytes(tar_bytes({"shared/same.txt": b"one"}))
    (root / "dup2.tar").write_bytes(tar_bytes({"shared/same.txt": b"two"}))
    return root


ARCHIVES = 5 + 1 + 1 + 1 + 2
WRITTEN = 5 * len(GOOD) + len(GOOD) + 2
REJECTED = ATTACK_REJECTS + 1 + 1  # hostile members, the truncated archive, readme.txt


@pytest.fixture(scope="module")
def untarred(archive_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("untarred") / "out"
    config = UntarConfig(inputs=[str(archive_dir)], output_dir=str(out), duckdb_path=str(out.parent / "r.duckdb"))
    return config, run(config), out


def test_job_counts_reconcile(untarred):
    config, counts, out = untarred
    assert (counts.archives_in, counts.members_written, counts.rejected) == (ARCHIVES, WRITTEN, REJECTED)
    assert counts.rejected_by_stage == {"unsafe": ATTACK_REJECTS, "read": 1, "open": 1}
    assert counts.dirs_skipped == 1 and counts.collisions == 1
    assert counts.bytes_written == sum(len(v) for v in _tree(out).values()) + 3
    assert counts.summary().startswith(f"{ARCHIVES} archives in, {WRITTEN} members written, {REJECTED} rejected (")
    rows = read_rejects(config.rejects_dir)
    assert len([r for r in rows if r["stage"] != "collision"]) == REJECTED
    with duckdb.connect(config.duckdb_path) as con:
        assert con.execute("select count(*) from rejects").fetchone()[0] == len(rows)


def test_job_writes_members_by_member_path(untarred, archive_dir):
    _config, _counts, out = untarred
    files = _tree(out)
    for fmt in ["plain", "gz", "bz2", "xz", "zst"]:
        for name, data in GOOD.items():
            assert files[f"{fmt}/{name}"] == data
    for name, data in GOOD.items():
        assert files[name] == data  # hostile.tgz's good members
    assert files["shared/same.txt"] in (b"one", b"two")
    assert not any(k.startswith("c/") for k in files)  # the corrupt archive's members never completed
    assert sorted(p.name for p in out.parent.iterdir()) == ["out", "r.duckdb"]  # nothing escaped


def test_job_rejects_name_archive_and_member(untarred, archive_dir):
    config, _counts, _out = untarred
    by_uri = {r["uri"]: r for r in read_rejects(config.rejects_dir)}
    hostile = f"{archive_dir}/hostile.tgz"
    assert by_uri[f"{hostile}!../escape"]["stage"] == "unsafe"
    assert by_uri[f"{hostile}!/etc/evil"]["message"].startswith("absolute path")
    assert "symbolic link" in by_uri[f"{hostile}!link"]["message"]
    assert by_uri[f"{archive_dir}/readme.txt"]["stage"] == "open"
    corrupt = [r for u, r in by_uri.items() if u.startswith(f"{archive_dir}/corrupt.tar.gz")]
    assert len(corrupt) == 1 and corrupt[0]["stage"] == "read"
    collision = {u: r for u, r in by_uri.items() if r["stage"] == "collision"}
    assert set(collision) == {f"{archive_dir}/dup1.tar!shared/same.txt", f"{archive_dir}/dup2.tar!shared/same.txt"}


def test_job_rerun_is_idempotent(untarred):
    config, counts, out = untarred
    before = digests(out)
    again = run(config)
    assert again == counts
    after = digests(out)
    same = {k: v for k, v in after.items() if k != "shared/same.txt"}
    assert same == {k: v for k, v in before.items() if k != "shared/same.txt"}  # same files, same bytes, same rejects


def test_job_archive_subdir(archive_dir, tmp_path):
    config = UntarConfig(inputs=[str(archive_dir / "set_*"), str(archive_dir / "dup*")], output_dir=str(tmp_path / "o"),
                         archive_subdir=True)  # fmt: skip
    counts = run(config)
    assert (counts.archives_in, counts.members_written, counts.rejected, counts.collisions) == (7, 17, 0, 0)
    files = _tree(tmp_path / "o")
    assert files["set_zst/zst/labels.csv"] == GOOD["labels.csv"]
    assert files["dup1/shared/same.txt"] == b"one" and files["dup2/shared/same.txt"] == b"two"


def test_job_bomb_guard_is_configurable(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bomb.tar.gz").write_bytes(tar_bytes({"zeros.bin": bytes(10 << 20)}, "gz"))
    counts = run(UntarConfig(inputs=[str(tmp_path / "in")], output_dir=str(tmp_path / "o"), max_ratio=100))
    assert (counts.members_written, counts.rejected, counts.rejected_by_stage) == (0, 1, {"bomb": 1})
    assert not (tmp_path / "o" / "zeros.bin").exists()


def test_missing_named_input_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        run(UntarConfig(inputs=[str(tmp_path / "nope.tar")], output_dir=str(tmp_path / "o")))


def test_cli_prints_counts(archive_dir, tmp_path):
    result = CliRunner().invoke(
        app,
        ["untar", "-i", str(archive_dir / "set_*"), "-i", str(archive_dir / "hostile.tgz"),
         "--output-dir", str(tmp_path / "o"), "--max-archive-bytes", "1GiB", "--direct_num_workers=1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"6 archives in, {6 * len(GOOD)} members written, {ATTACK_REJECTS} rejected" in result.output
    assert f"rejects: Parquet under {tmp_path / 'o'}/_medbeam/rejects" in result.output
    bad = CliRunner().invoke(app, ["untar", "-i", "x.tar", "--output-dir", "o", "--max-archive-bytes", "lots"])
    assert bad.exit_code == 2 and "not a size" in bad.output


# ---------------------------------------------------------------------------------------------------
# gs:// and s3://


def test_object_store(store: BucketEmulator, tmp_path):
    prefix = "untar-test"
    store.put(f"{prefix}/in/a.tar.gz", tar_bytes({"x/" + k: v for k, v in GOOD.items()}, "gz"))
    store.put(f"{prefix}/in/b.tar.zst", tar_bytes([*ATTACKS[:2], (_info("y.txt", 1), b"y")], "zst"))
    config = UntarConfig(inputs=[store.uri(prefix, "in/*.tar*")], output_dir=store.uri(prefix, "out"))
    counts = run(config, list(store.beam_args))
    assert (counts.archives_in, counts.members_written, counts.rejected) == (2, len(GOOD) + 1, 2)
    for name, data in GOOD.items():
        assert store.get(f"{prefix}/out/x/{name}") == data
    assert store.get(f"{prefix}/out/y.txt") == b"y"
    keys = store.keys(f"{prefix}/")
    assert not any("escape" in k or "evil" in k for k in keys)
    assert f"{prefix}/out/_medbeam/rejects/_manifest.json" in keys
    # and back to local: the same job with a local output
    if store.scheme == "s3":
        return  # bucket → local once is enough (Beam's S3 filesystem makes each run slow)
    local = run(UntarConfig(inputs=[store.uri(prefix, "in/a.tar.gz")], output_dir=str(tmp_path)), list(store.beam_args))
    assert local.members_written == len(GOOD) and _tree(tmp_path) == {"x/" + k: v for k, v in GOOD.items()}


def test_rerun_with_another_archive_removes_only_the_previous_runs_members(tmp_path):
    first, second = tmp_path / "first.tar", tmp_path / "second.tar"
    first.write_bytes(tar_bytes({"scans/p1/a.png": b"a", "scans/p2/b.png": b"b", "labels.csv": b"x"}))
    second.write_bytes(tar_bytes({"scans/p1/a.png": b"A", "other.csv": b"y"}))
    out = tmp_path / "out"
    run(UntarConfig(inputs=[str(first)], output_dir=str(out)))
    (out / "mine.txt").write_text("not medbeam's")
    counts = run(UntarConfig(inputs=[str(second)], output_dir=str(out)))
    assert _tree(out) == {"scans/p1/a.png": b"A", "other.csv": b"y", "mine.txt": b"not medbeam's"}
    assert not (out / "scans" / "p2").exists()  # emptied folders go too
    assert counts.stale_outputs_removed == 2
    assert "2 files of the previous run removed" in counts.summary()


# ---------------------------------------------------------------------------------------------------
# read_members in windows: several readers share one archive (cxr prepare's large tars)


def _windowed(archive: Path, parts: int) -> tuple[list[list[str]], list[archives.ArchiveFailure]]:
    """Each window's member events ('kind:member'), and the failures the windows raised."""
    seen, failures = [], []
    size = archive.stat().st_size
    for window in archives.tar_windows(size, parts):
        events = []
        try:
            for event in archives.read_members(str(archive), size, Limits(), 1 << 20, window=window):
                events.append(f"{event.kind}:{event.member}")
        except archives.ArchiveFailure as failure:
            failures.append(failure)
        seen.append(events)
    return seen, failures


@pytest.mark.parametrize("fmt", ["", "gz"])
@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_windows_split_the_members_exactly_once(tmp_path, fmt, parts):
    members = [(_info(f"m{i:02d}.bin", 700 * (i % 4 + 1)), bytes([i]) * 700 * (i % 4 + 1)) for i in range(24)]
    members.insert(5, (_info("link", type_=tarfile.SYMTYPE, linkname="/etc/passwd"), None))
    members.insert(9, (_info("../escape", 4), b"evil"))
    archive = tmp_path / f"a.tar{'.gz' if fmt else ''}"
    archive.write_bytes(tar_bytes(members, fmt))
    whole, failures = _windowed(archive, 1)
    assert not failures and len(whole[0]) == 26
    split, failures = _windowed(archive, parts)
    assert not failures
    assert [e for events in split for e in events] == whole[0]
    assert all(split) or parts > 1  # some windows may be empty, none overlap


@pytest.mark.parametrize("cut", ["inside a member", "at a header boundary", "bad gzip crc"])
def test_a_failure_is_raised_by_one_window_only(tmp_path, cut):
    members = {f"m{i:02d}.bin": bytes([i]) * 5000 for i in range(12)}
    data = tar_bytes(members, "gz" if cut == "bad gzip crc" else "")
    if cut == "inside a member":
        data = data[: len(data) // 2 + 1000]
    elif cut == "at a header boundary":
        data = data[: 3 * (512 + 5120)]  # three whole members (header + padded data), then nothing
    else:
        data = data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:]
    archive = tmp_path / "cut.tar"
    archive.write_bytes(data)
    whole, whole_failures = _windowed(archive, 1)
    for parts in (2, 3, 4):
        split, failures = _windowed(archive, parts)
        assert [e for events in split for e in events] == whole[0]
        assert [(str(f), f.member) for f in failures] == [(str(f), f.member) for f in whole_failures]


def test_tar_parts_follow_the_typical_size():
    tar_parts = archives.tar_parts
    train = [290] * 10
    assert [tar_parts(s, [*train, 723]) for s in (290, 723)] == [1, 2]
    assert tar_parts(1000, [1000]) == 2  # one tar: two readers
    assert tar_parts(500, [500, 500]) == 1
    assert tar_parts(10_000, [10, 10, 10_000]) == 4  # capped: each part inflates what comes before it
    assert tar_parts(0, [0]) == 1


def _shares(dealt: list[list[archives.TarPiece]]) -> list[int]:
    return [sum((w[1] if w and w[1] is not None else size) - (w[0] if w else 0) for _, size, w in share)
            for share in dealt]  # fmt: skip


def test_deal_tars_gives_each_worker_an_equal_share():
    release = [(f"train_p1{i}.tar.gz", 160) for i in range(10)] + [("valid.tar.gz", 404)]
    for bins in (1, 2, 3, 4):
        dealt = archives.deal_tars(release, bins)
        assert _shares(dealt) == [2004 // bins] * bins  # 2004 divides by 1-4
        cut = [piece for share in dealt for piece in share if piece[2] is not None]
        assert len({path for path, _, _ in cut}) <= bins - 1  # at most bins - 1 tars cut, each in two
        pieces: dict[str, list] = {}
        for share in dealt:
            for path, _, window in share:
                pieces.setdefault(path, []).append(window)
        for path, windows in pieces.items():  # every tar whole, or windows that tile it from 0 to its end
            if windows != [None]:
                assert windows[0][0] == 0 and windows[-1][1] is None
                assert all(a[1] == b[0] for a, b in zip(windows, windows[1:], strict=False))
    one = [("one.tar", 1000)]
    assert archives.deal_tars(one, 2) == [[("one.tar", 1000, (0, 500))], [("one.tar", 1000, (500, None))]]
    # a cut that would leave a sliver is not made: the tar goes whole
    assert _shares(archives.deal_tars([("a", 505), ("b", 495)], 2)) == [505, 495]
    assert archives.deal_tars([], 2) == [[], []]


def test_dealt_windows_split_the_members_exactly_once(tmp_path):
    members = [(_info(f"m{i:02d}.bin", 3000), bytes([i]) * 3000) for i in range(30)]
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_bytes(members, "gz"))
    size = archive.stat().st_size
    seen = []
    for share in archives.deal_tars([(str(archive), size), ("other.tar", size // 3)], 3):
        for path, _, window in share:
            if path == str(archive):
                seen += [e.member for e in archives.read_members(path, size, Limits(), 1 << 20, window=window)]
    assert seen == [f"m{i:02d}.bin" for i in range(30)]
