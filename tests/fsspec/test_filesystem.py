"""DaxFileSystem's own behaviour: URLs, info and listings, files, copies, moves,
removal, transactions, errors; each checked against what the daxfs API sees."""

from __future__ import annotations

import datetime
import errno
import io
import os
import pickle
import posixpath
import stat
import threading
from pathlib import Path
from typing import Any

import fsspec
import pytest

import daxfs
from daxfs.errors import Busy, InvalidArgument, ReadOnly
from daxfs.fs.file import File
from daxfs.fsspec import DaxFileSystem, DaxRandom, DaxReader, DaxWriter, _filesystem, mounted

DATA = bytes(range(256)) * 40  # 10 KiB, every byte value at many offsets


# -- URLs and instances ---------------------------------------------------------------------


def test_chained_url_opens_a_file_inside_the_image(image: str) -> None:
    url = f"daxfs:///data/x.bin::{image}"
    with fsspec.open(url, "wb", persist="cpu") as f:
        f.write(DATA)
    fs, path = fsspec.url_to_fs(url, persist="cpu")
    assert isinstance(fs, DaxFileSystem)
    assert (fs.image, path) == (image, "/data/x.bin")
    with fsspec.open(url, "rb", persist="cpu") as f:
        assert f.read() == DATA
    with fs.filesystem.open("/data/x.bin", "rb") as raw:  # the daxfs API sees the same
        assert raw.read() == DATA
    fs.unmount()


def test_a_file_url_of_the_image_and_fo_are_the_image(image: str) -> None:
    fs, path = fsspec.url_to_fs(f"daxfs:///a::file://{image}", persist="cpu")
    assert (fs.image, path) == (image, "/a")
    assert DaxFileSystem(fo=image, persist="cpu").filesystem is fs.filesystem
    fs.unmount()


def test_storage_options_name_the_image(image: str) -> None:
    with fsspec.open("daxfs:///f", "wb", image=image, persist="cpu") as f:
        f.write(b"x")
    fs = fsspec.filesystem("daxfs", image=image, persist="cpu")
    assert fs.cat_file("daxfs:///f") == b"x"
    fs.unmount()


def test_unstrip_protocol_gives_a_url_that_reopens_the_file(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/d/f", b"payload")
    url = dfs.unstrip_protocol("/d/f")
    assert url == f"daxfs:///d/f::{dfs.image}"
    with fsspec.open(url, "rb", persist="cpu") as f:
        assert f.read() == b"payload"
    assert fsspec.open(url, persist="cpu").full_name == url


@pytest.mark.parametrize(
    ("given", "stripped"),
    [
        ("daxfs:///a/b", "/a/b"),
        ("daxfs://a/b", "/a/b"),
        ("/a/b/", "/a/b"),
        ("a//b", "/a/b"),
        ("daxfs:///a/b::/dev/shm/img", "/a/b"),
        ("daxfs://", "/"),
        ("/", "/"),
        ("", "/"),
    ],
)
def test_strip_protocol(given: str, stripped: str) -> None:
    assert DaxFileSystem._strip_protocol(given) == stripped


def test_the_reversed_url_names_the_missing_image(image: str) -> None:
    # the issue's first idea, daxfs://IMAGE::PATH: fsspec makes PATH the image
    with pytest.raises(FileNotFoundError, match="names the image last") as caught:
        fsspec.open(f"daxfs://{image}::/data/x.parquet", "rb").open()
    assert caught.value.filename == "/data/x.parquet"
    assert caught.value.errno == errno.ENOENT


def test_constructor_errors(image: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="which image"):
        DaxFileSystem()
    with pytest.raises(InvalidArgument, match="local image"):
        DaxFileSystem(fo="bucket/img", target_protocol="s3")
    missing = str(tmp_path / "missing.img")
    with pytest.raises(FileNotFoundError) as caught:
        DaxFileSystem(missing)
    assert caught.value.filename == missing
    with pytest.raises(InvalidArgument, match="two images"):
        DaxFileSystem(image, fo=missing)


def test_instances_share_one_mount_across_threads(dfs: DaxFileSystem) -> None:
    seen: list[Any] = []

    def other() -> None:  # fsspec caches instances per thread: this is a new one
        fs = DaxFileSystem(dfs.image, persist="cpu")
        seen.append((fs is dfs, fs.filesystem is dfs.filesystem))
        fs.pipe_file("/from-thread", b"t")

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [(False, True)]
    assert dfs.cat_file("/from-thread") == b"t"
    assert mounted() == [dfs.image]


def test_other_options_on_a_mounted_image_are_busy(dfs: DaxFileSystem) -> None:
    with pytest.raises(Busy) as caught:
        DaxFileSystem(dfs.image, readonly=True)
    assert caught.value.errno == errno.EBUSY
    assert caught.value.filename == dfs.image


def test_unmount_refuses_while_a_file_is_open_then_remounts_on_use(
    dfs: DaxFileSystem,
) -> None:
    f = dfs.open("/f", "wb")
    f.write(b"buffered")
    with pytest.raises(Busy, match="/f"):
        dfs.unmount(timeout=0)
    with pytest.raises(Busy, match="/f"):
        dfs.unmount(timeout=0.01)  # waited for a close that does not come
    assert dfs.filesystem.mounted  # nothing changed
    f.close()
    before = dfs.filesystem
    dfs.unmount()
    assert not before.mounted
    assert mounted() == []
    assert dfs.cat_file("/f") == b"buffered"  # used again: mounted again
    assert dfs.filesystem is not before


def test_unmount_waits_for_a_close_on_another_thread(dfs: DaxFileSystem) -> None:
    f = dfs.open("/f", "wb")
    closer = threading.Timer(0.05, f.close)  # as pyarrow's I/O threads do, after a read
    closer.start()
    dfs.unmount(timeout=60)
    closer.join()
    assert mounted() == []


def test_force_closes_open_files_and_unmounts(dfs: DaxFileSystem) -> None:
    w = dfs.open("/w", "wb")
    w.write(b"in the buffer")
    r = dfs.open("/w", "rb")
    dfs.unmount(timeout=0, force=True)
    assert mounted() == []
    assert w.closed
    assert r.closed
    with daxfs.mount(dfs.image) as fs, fs.open("/w", "rb") as f:
        assert f.read() == b"in the buffer"  # flushed before the unmount


def test_context_manager_unmounts(image: str) -> None:
    with DaxFileSystem(image, persist="cpu") as fs:
        fs.touch("/t")
        left = fs.open("/t", "rb")  # closed by the exit, as daxfs.FileSystem's with does
    assert left.closed
    assert mounted() == []
    with daxfs.mount(image) as plain:  # nothing holds the image any more
        assert plain.listdir("/") == ["t"]


def test_pickled_instance_reaches_the_same_mount(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/p", b"pickled")
    again = pickle.loads(pickle.dumps(dfs))
    assert again.filesystem is dfs.filesystem
    assert again.cat_file("/p") == b"pickled"


def test_readonly_refuses_writes_with_erofs(image: str) -> None:
    with daxfs.mount(image) as fs, fs.open("/f", "wb") as f:
        f.write(b"ro")
    ro = DaxFileSystem(image, readonly=True, persist="cpu")
    assert ro.cat_file("/f") == b"ro"
    for write in (
        lambda: ro.pipe_file("/g", b"x"),
        lambda: ro.open("/f", "wb"),
        lambda: ro.rm("/f"),
        lambda: ro.mkdir("/d"),
    ):
        with pytest.raises(ReadOnly) as caught:
            write()
        assert caught.value.errno == errno.EROFS
    ro.unmount()


# -- info, ls, times ---------------------------------------------------------------------


def test_info_and_ls(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/d/b", b"bb")
    dfs.pipe_file("/d/a", b"a")
    dfs.mkdir("/d/sub")
    dfs.filesystem.symlink("a", "/d/link")
    dfs.filesystem.symlink("nowhere", "/d/dangling")
    assert dfs.ls("/d", detail=False) == ["/d/a", "/d/b", "/d/dangling", "/d/link", "/d/sub"]
    infos = {i["name"]: i for i in dfs.ls("daxfs:///d/")}
    raw = dfs.filesystem.stat("/d/b")
    assert infos["/d/b"] | {"created": 0} == {
        "name": "/d/b",
        "size": 2,
        "type": "file",
        "created": 0,
        "islink": False,
        "mode": raw.st_mode,
        "uid": raw.st_uid,
        "gid": raw.st_gid,
        "mtime": raw.st_mtime,
        "ino": raw.st_ino,
        "nlink": 1,
    }
    assert infos["/d/sub"]["type"] == "directory"
    assert infos["/d/link"]["type"] == "file"  # the target's
    assert infos["/d/link"]["islink"]
    assert infos["/d/link"]["destination"] == "a"
    assert infos["/d/link"]["size"] == 1
    assert infos["/d/dangling"]["type"] == "other"
    assert dfs.ls("/d/a") == [dfs.info("/d/a")]  # a file lists itself
    assert dfs.ls("/d/a", detail=False) == ["/d/a"]
    assert dfs.isdir("/d")
    assert dfs.isfile("/d/a")
    assert not dfs.exists("/d/zz")
    assert dfs.lexists("/d/dangling")
    assert not dfs.exists("/d/dangling")
    assert dfs.islink("/d/link")
    assert not dfs.islink("/d/a")
    assert dfs.find("/d") == ["/d/a", "/d/b", "/d/dangling", "/d/link"]  # what is no directory
    assert dfs.du("/d") == 1 + 2 + len("nowhere") + 1  # a dangling link: its own size


def test_missing_paths_raise_enoent_naming_them(dfs: DaxFileSystem) -> None:
    for call in (dfs.info, dfs.ls, dfs.cat_file, dfs.rm, dfs.created, dfs.modified):
        with pytest.raises(FileNotFoundError) as caught:
            call("/no/such")
        assert caught.value.errno == errno.ENOENT
        assert caught.value.filename == "/no/such"


def test_created_and_modified(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/f", b"one")
    fs = dfs.filesystem
    born = fs.birthtime_ns("/f")
    assert dfs.created("/f").tzinfo is not None
    assert dfs.created("/f").timestamp() == pytest.approx(born / 1e9, abs=1e-6)
    assert dfs.info("/f")["created"] == born / 1e9
    fs.utime("/f", ns=(0, 1_700_000_000_123_456_789))
    assert dfs.modified("/f") == datetime.datetime(
        2023, 11, 14, 22, 13, 20, 123456, tzinfo=datetime.UTC
    )
    dfs.pipe_file("/f", b"two")  # rewritten in place: born stays
    assert fs.birthtime_ns("/f") == born


def test_sign_is_not_supported(dfs: DaxFileSystem) -> None:
    with pytest.raises(NotImplementedError, match="/f"):
        dfs.sign("/f")


# -- reading and writing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (None, None),
        (0, 10),
        (100, 5000),
        (-100, None),
        (None, -100),
        (-300, -100),
        (5000, 100),
        (10_000, 20_000),
        (-20_000, 3),
        (len(DATA), None),
    ],
)
def test_cat_file_ranges_are_python_slices(
    dfs: DaxFileSystem, start: int | None, end: int | None
) -> None:
    dfs.pipe_file("/f", DATA)
    assert dfs.cat_file("/f", start, end) == DATA[start:end]


def test_cat_ranges(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/f", DATA)
    assert dfs.cat_ranges(["/f", "/f"], [1, -5], [9, None]) == [DATA[1:9], DATA[-5:]]


def test_cat_file_copies_once_from_device_memory(
    dfs: DaxFileSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    dfs.pipe_file("/f", DATA)
    calls: list[tuple[int, int]] = []
    pread = File.pread

    def spy(self: File, n: int, offset: int) -> bytes:
        calls.append((n, offset))
        return pread(self, n, offset)

    monkeypatch.setattr(File, "pread", spy)
    assert dfs.cat_file("/f", 10, 5010) == DATA[10:5010]
    assert calls == [(5000, 10)]  # one pread: device memory into the bytes returned


def test_directory_reads_raise_eisdir(dfs: DaxFileSystem) -> None:
    dfs.mkdir("/d")
    for call in (dfs.cat_file, dfs.open):
        with pytest.raises(IsADirectoryError) as caught:
            call("/d")
        assert caught.value.filename == "/d"


def test_open_modes_and_random_access(dfs: DaxFileSystem) -> None:
    with dfs.open("/deep/er/f", "wb") as w:  # parents made (auto_mkdir)
        assert isinstance(w, DaxWriter)
        assert w.write(DATA) == len(DATA)
        assert (w.path, w.fs, w.autocommit) == ("/deep/er/f", dfs, True)
    with dfs.open("/deep/er/f", "rb") as r:
        assert isinstance(r, DaxReader)
        assert r.seekable()
        assert r.size == len(DATA)
        r.seek(-10, os.SEEK_END)
        assert r.read() == DATA[-10:]
        r.seek(1000)
        assert r.read(7) == DATA[1000:1007]
        assert r.tell() == 1007
    with dfs.open("/deep/er/f", "rb+") as rw:
        assert isinstance(rw, DaxRandom)
        rw.seek(5)
        rw.write(b"XY")
        rw.seek(0)
        assert rw.read(8) == DATA[:5] + b"XY" + DATA[7:8]
    with dfs.open("/deep/er/f", "ab") as a:
        a.write(b"tail")
    assert dfs.cat_file("/deep/er/f") == DATA[:5] + b"XY" + DATA[7:] + b"tail"
    with pytest.raises(FileExistsError):
        dfs.open("/deep/er/f", "xb")
    with dfs.open("/deep/t.txt", "w", encoding="utf-8") as t:  # text: fsspec wraps it
        t.write("héllo\n")
    with dfs.open("/deep/t.txt", "r", encoding="utf-8") as t:
        assert t.read() == "héllo\n"
    assert dfs.filesystem.open_files() == []


def test_bad_block_size_is_einval(dfs: DaxFileSystem) -> None:
    with pytest.raises(InvalidArgument):
        dfs.open("/f", "wb", block_size=0)
    assert not dfs.exists("/f")


def test_readinto_goes_straight_to_the_callers_buffer(
    dfs: DaxFileSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = os.urandom(1 << 20)
    dfs.pipe_file("/big", big)
    sizes: list[int] = []
    readinto = File.readinto

    def spy(self: File, buffer: Any) -> int:
        sizes.append(len(memoryview(buffer)))
        return readinto(self, buffer)

    monkeypatch.setattr(File, "readinto", spy)
    out = bytearray(len(big))
    with dfs.open("/big", "rb") as f:
        assert f.readinto(out) == len(big)
    assert out == big
    assert sizes[0] == len(big)  # not the 64 KiB buffer: no copy in between


def test_daxfs_file_gives_dax_mmap(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/m", DATA)
    with dfs.open("/m", "rb") as f:
        mapping = f.daxfs_file.mmap(length=4096, access="read")
        assert bytes(mapping[:16]) == DATA[:16]
        mapping.close()


def test_writes_are_durable_at_close(dfs: DaxFileSystem) -> None:
    with dfs.open("/f", "wb", block_size=4096) as f:
        f.write(b"a" * 10_000)  # past the buffer: written through
        assert dfs.filesystem.stat("/f").st_size >= 8192
        f.write(b"b")
    assert dfs.cat_file("/f") == b"a" * 10_000 + b"b"


def test_pipe_file_modes(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/p", b"one")
    with pytest.raises(FileExistsError):
        dfs.pipe_file("/p", b"two", mode="create")
    assert dfs.cat_file("/p") == b"one"
    dfs.pipe_file("/p", bytearray(b"three"), mode="overwrite")
    assert dfs.cat_file("/p") == b"three"
    with pytest.raises(InvalidArgument):
        dfs.pipe_file("/p", b"x", mode="append")
    dfs.pipe({"/q/1": b"1", "/q/2": b"2"})
    assert dfs.cat("/q/*") == {"/q/1": b"1", "/q/2": b"2"}


def test_touch(dfs: DaxFileSystem) -> None:
    dfs.touch("/t/new")
    assert dfs.cat_file("/t/new") == b""
    dfs.pipe_file("/t/new", b"keep")
    dfs.filesystem.utime("/t/new", ns=(0, 0))
    dfs.touch("/t/new", truncate=False)
    assert dfs.cat_file("/t/new") == b"keep"
    assert dfs.filesystem.stat("/t/new").st_mtime_ns > 0
    dfs.touch("/t/new")
    assert dfs.cat_file("/t/new") == b""
    dfs.touch("/t", truncate=False)  # a directory: its times
    with pytest.raises(IsADirectoryError):
        dfs.touch("/t")


# -- copies ------------------------------------------------------------------------------


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Copies pin 3 blocks at a time (several pins per file); returns the pins made."""
    monkeypatch.setattr(_filesystem, "CHUNK", 3 * 4096)
    pins: list[tuple[int, int]] = []
    pin = File.pin

    def spy(self: File, offset: int, length: int) -> Any:
        pins.append((offset, length))
        return pin(self, offset, length)

    monkeypatch.setattr(File, "pin", spy)
    return pins


def test_cp_file_copies_from_pinned_device_memory(
    dfs: DaxFileSystem, small_chunks: list[tuple[int, int]]
) -> None:
    data = os.urandom(10 * 4096 + 123)
    dfs.pipe_file("/src", data)
    with dfs.filesystem.open("/holey", "wb") as f:  # a hole in the middle reads as zeros
        f.write(b"h")
        f.seek(5 * 4096)
        f.write(b"t")
    dfs.cp_file("/src", "/copy/dst")
    dfs.cp_file("/holey", "/copy/holey")
    assert dfs.cat_file("/copy/dst") == data
    assert dfs.cat_file("/copy/holey") == b"h" + bytes(5 * 4096 - 1) + b"t"
    assert small_chunks[:4] == [(0, 12288), (12288, 12288), (24576, 12288), (36864, 4219)]
    dfs.cp_file("/src", "/copy/dst")  # over an existing file
    assert dfs.cat_file("/copy/dst") == data
    assert dfs.filesystem.open_files() == []


def test_copies_through_the_block_layer(image: str) -> None:
    fs = DaxFileSystem(image, dax="never", skip_instance_cache=True)
    data = os.urandom(300_000)
    fs.pipe_file("/a", data)
    fs.cp_file("/a", "/b")
    sink = io.BytesIO()
    fs.get_file("/b", sink)
    assert sink.getvalue() == data
    assert fs.cat_file("/b", 5, 10) == data[5:10]
    fs.unmount()
    assert daxfs.fsck(image).clean


def test_cp_file_onto_itself_is_einval(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/a", b"a")
    dfs.filesystem.link("/a", "/hard")
    for other in ("/a", "/hard"):
        with pytest.raises(InvalidArgument) as caught:
            dfs.cp_file("/a", other)
        assert caught.value.errno == errno.EINVAL
    assert dfs.cat_file("/a") == b"a"


def test_copy_of_a_tree(dfs: DaxFileSystem) -> None:
    dfs.pipe({"/t/a": b"a", "/t/s/b": b"b"})
    dfs.mkdir("/t/empty")
    dfs.copy("/t", "/u", recursive=True)
    assert dfs.find("/u", withdirs=True) == ["/u", "/u/a", "/u/empty", "/u/s", "/u/s/b"]
    assert dfs.cat(dfs.find("/u")) == {"/u/a": b"a", "/u/s/b": b"b"}


def test_get_and_put(dfs: DaxFileSystem, tmp_path: Path, small_chunks: Any) -> None:
    data = os.urandom(7 * 4096 + 5)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(data)
    (tmp_path / "src" / "sub").mkdir()
    (tmp_path / "src" / "sub" / "g").write_bytes(b"g")
    dfs.put(str(tmp_path / "src"), "/in", recursive=True)
    assert dfs.cat_file("/in/f") == data
    assert dfs.cat_file("/in/sub/g") == b"g"
    with pytest.raises(FileExistsError):
        dfs.put_file(str(tmp_path / "src" / "f"), "/in/f", mode="create")
    dfs.get("/in", str(tmp_path / "out"), recursive=True)
    assert (tmp_path / "out" / "f").read_bytes() == data
    assert (tmp_path / "out" / "sub" / "g").read_bytes() == b"g"
    sink = io.BytesIO()
    dfs.get_file("/in/f", sink)
    assert sink.getvalue() == data


def test_get_file_reports_progress(dfs: DaxFileSystem, tmp_path: Path) -> None:
    dfs.pipe_file("/f", DATA)
    seen: list[int] = []

    class Progress(fsspec.callbacks.Callback):  # type: ignore[misc]
        def call(self, *args: Any, **kwargs: Any) -> None:
            seen.append(self.value)

    progress = Progress()
    dfs.get_file("/f", str(tmp_path / "f"), callback=progress)
    assert (progress.size, progress.value) == (len(DATA), len(DATA))
    assert (tmp_path / "f").read_bytes() == DATA


# -- moves and removal --------------------------------------------------------------------


def test_mv(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/a", b"a")
    ino = dfs.info("/a")["ino"]
    dfs.mv("/a", "/new/b")  # one rename: the same inode
    assert dfs.info("/new/b")["ino"] == ino
    assert not dfs.exists("/a")
    dfs.mkdir("/dir")
    dfs.mv("/new/b", "/dir")  # into an existing directory
    assert dfs.cat_file("/dir/b") == b"a"
    dfs.mv("/dir/b", "/fresh/")  # a trailing slash: into it
    assert dfs.cat_file("/fresh/b") == b"a"
    dfs.mv("/fresh", "/moved")  # a directory, whole
    assert dfs.find("/moved") == ["/moved/b"]
    dfs.mv("/moved/b", "/moved/b")  # the same path: nothing
    dfs.pipe({"/g/x1": b"1", "/g/x2": b"2"})
    dfs.mv("/g/x*", "/h/")  # a glob: fsspec's copy and rm
    assert dfs.find("/h") == ["/h/x1", "/h/x2"]
    assert dfs.ls("/g") == []
    with pytest.raises(FileNotFoundError):
        dfs.mv("/nothing", "/x")
    with pytest.raises(FileNotFoundError):
        dfs.mv("/nothing", "/nothing")  # as rename(2): nothing to do, but it must exist
    with pytest.raises(InvalidArgument):
        dfs.mv("/moved", "/moved/inside/")


def test_rm(dfs: DaxFileSystem) -> None:
    dfs.pipe({"/t/a": b"a", "/t/s/b": b"b", "/keep/k": b"k"})
    dfs.filesystem.symlink("/keep", "/t/s/link")  # removed, not followed
    with pytest.raises(IsADirectoryError) as caught:
        dfs.rm("/t")
    assert caught.value.errno == errno.EISDIR
    dfs.rm("/t/a")
    dfs.rm("/t", recursive=True)
    assert not dfs.exists("/t")
    assert dfs.cat_file("/keep/k") == b"k"
    dfs.pipe({"/u/1": b"", "/u/2": b"", "/u/3": b""})
    dfs.rm(["/u/1", "/u/2"])
    dfs.rm("/u/*")
    assert dfs.ls("/u") == []
    dfs.rmdir("/u")
    dfs.mkdir("/v")
    dfs.touch("/v/f")
    with pytest.raises(OSError, match="/v") as not_empty:
        dfs.rmdir("/v")
    assert not_empty.value.errno == errno.ENOTEMPTY
    dfs.rm_file("/v/f")
    with pytest.raises(IsADirectoryError):
        dfs.rm_file("/v")


def test_mkdir_and_makedirs(dfs: DaxFileSystem) -> None:
    dfs.mkdir("/a/b/c")
    assert dfs.isdir("/a/b/c")
    with pytest.raises(FileExistsError):
        dfs.mkdir("/a/b/c")
    with pytest.raises(FileNotFoundError):
        dfs.mkdir("/x/y", create_parents=False)
    dfs.makedirs("/a/b/c", exist_ok=True)
    with pytest.raises(FileExistsError):
        dfs.makedirs("/a/b/c")
    dfs.makedirs("/", exist_ok=True)


def test_without_auto_mkdir_a_missing_parent_is_enoent(image: str) -> None:
    fs = DaxFileSystem(image, persist="cpu", auto_mkdir=False, skip_instance_cache=True)
    with pytest.raises(FileNotFoundError):
        fs.pipe_file("/no/f", b"x")
    with pytest.raises(FileNotFoundError):
        fs.open("/no/f", "wb")
    fs.unmount()


# -- transactions ------------------------------------------------------------------------


def test_transaction_commits_in_one_rename(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/t/f", b"old")
    with dfs.transaction:
        with dfs.open("/t/f", "wb") as f:
            f.write(b"new")
        dfs.pipe_file("/t/g", b"g")
        assert dfs.cat_file("/t/f") == b"old"  # not before the commit
        assert not dfs.exists("/t/g")
    assert dfs.cat_file("/t/f") == b"new"
    assert dfs.cat_file("/t/g") == b"g"
    assert dfs.ls("/t", detail=False) == ["/t/f", "/t/g"]  # no temporary left


def test_transaction_discards_on_error(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/f", b"old")
    with pytest.raises(RuntimeError, match="stop"), dfs.transaction:
        with dfs.open("/f", "wb") as f:
            f.write(b"new")
        raise RuntimeError("stop")
    assert dfs.cat_file("/f") == b"old"
    assert dfs.ls("/", detail=False) == ["/f"]


def test_commit_and_discard_outside_a_transaction_are_errors(dfs: DaxFileSystem) -> None:
    with dfs.open("/f", "wb") as f:
        with pytest.raises(ValueError, match="autocommit"):
            f.commit()
        with pytest.raises(ValueError, match="autocommit"):
            f.discard()


# -- what the image holds afterwards ----------------------------------------------------------


def test_image_is_clean_and_checked_after_unmount(dfs: DaxFileSystem) -> None:
    dfs.pipe({f"/d{i}/f{j}": bytes([i]) * (j * 1000) for i in range(3) for j in range(4)})
    dfs.cp_file("/d0/f3", "/d1/copy")
    dfs.mv("/d2", "/d1/d2")
    dfs.rm("/d0", recursive=True)
    dfs.unmount()
    report = daxfs.fsck(dfs.image)
    assert report.clean, report.problems
    with daxfs.mount(dfs.image) as fs:
        assert sorted(fs.listdir("/d1")) == ["copy", "d2", "f0", "f1", "f2", "f3"]
        assert stat.S_ISDIR(fs.stat("/d1/d2").st_mode)
        assert fs.stat("/d1/copy").st_size == 3000
        assert posixpath.basename("/d1/copy") == "copy"


def test_threads_share_the_mount(dfs: DaxFileSystem) -> None:
    """As dask's threaded scheduler: each thread gets its own fsspec instance (fsspec's
    cache is per thread), all on the one mount; every file reads back as written."""
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            fs = fsspec.filesystem("daxfs", image=dfs.image, persist="cpu")
            assert fs.filesystem is dfs.filesystem
            for i in range(30):
                payload = bytes([t, i]) * (100 * i + 1)
                fs.pipe_file(f"/t{t}/f{i}", payload)
                with fs.open(f"/t{t}/f{i}", "rb") as f:
                    assert f.read() == payload
                fs.mv(f"/t{t}/f{i}", f"/t{t}/g{i}")
            assert len(fs.ls(f"/t{t}")) == 30
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert dfs.find("/") == sorted(f"/t{t}/g{i}" for t in range(4) for i in range(30))
    assert dfs.cat_file("/t3/g29") == bytes([3, 29]) * 2901


def test_extended_attributes(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/x/f", b"data")
    dfs.setxattr("daxfs:///x/f", "user.origin", b"sensor-7")
    dfs.setxattr("/x/f", "user.unit", bytearray(b"K"), os.XATTR_CREATE)
    assert dfs.getxattr("/x/f", "user.origin") == b"sensor-7"
    assert dfs.listxattr("/x/f") == ["user.origin", "user.unit"]
    assert dfs.metadata("/x/f") == {"user.origin": b"sensor-7", "user.unit": b"K"}
    assert dfs.filesystem.getxattr("/x/f", "user.unit") == b"K"  # the daxfs API agrees
    with pytest.raises(FileExistsError):
        dfs.setxattr("/x/f", "user.unit", b"C", os.XATTR_CREATE)
    dfs.removexattr("/x/f", "user.unit")
    with pytest.raises(OSError, match="/x/f") as caught:
        dfs.getxattr("/x/f", "user.unit")
    assert caught.value.errno == errno.ENODATA
    dfs.mv("/x/f", "/y")  # a rename keeps them
    assert dfs.metadata("/y") == {"user.origin": b"sensor-7"}
    dfs.cp_file("/y", "/z")  # a copy of the bytes only, as shutil.copyfile
    assert dfs.metadata("/z") == {}
    with pytest.raises(FileNotFoundError):
        dfs.listxattr("/nothing")
