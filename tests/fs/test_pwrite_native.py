"""File.pwrite in C (``_commit.file_pwrite``) and the C commit's record cache, against
their references.

* File.pwrite in C and the Python method (``file.PYTHON_PWRITE``) make the same
  device operations with the same bytes and leave the same image; every call the C
  method does not take (closed, read-only, append, keywords, bad arguments, a
  miss) goes to ``File._pwrite_slow`` and raises what the Python method raises;
  an error of the commit names the file;
* the record cache (an overwrite takes the inode record its own last overwrite
  of that inode wrote, while every commit since was its own) leaves the bytes
  the media read leaves, and any other commit in between sends the next
  overwrite back to the media.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator

import pytest

import daxfs
from daxfs.errors import ClosedFile, InvalidArgument, IOFailure, UnsupportedIO
from daxfs.fs import file as file_module
from daxfs.fs.file import File
from daxfs.fs.filesystem import FileSystem
from daxfs.testing import SimulatedPmem
from daxfs.testing.faults import FaultyPmem
from tests.fs.test_commit import RecordingPmem, base_image, c_commits, overwrites, run
from tests.helpers import SIZE

BLOCK = 4096


@pytest.fixture
def python_pwrite() -> Iterator[Callable[[bool], None]]:
    """Switch File.pwrite between C (True) and the Python method; C again afterwards."""
    yield file_module.native_pwrite
    file_module.native_pwrite(True)


def test_file_pwrite_is_the_c_method_by_default() -> None:
    assert File.pwrite is not file_module.PYTHON_PWRITE
    assert type(File.__dict__["pwrite"]).__name__ == "method_descriptor"


@pytest.mark.usefixtures("frozen")
def test_c_and_python_file_pwrite_make_the_same_operations_and_image(
    python_pwrite: Callable[[bool], None],
) -> None:
    image = base_image()
    logs, images = {}, {}
    for native in (True, False):
        python_pwrite(native)
        dev = RecordingPmem(SIZE, image=image)
        dev.log = []
        assert c_commits(run(dev, True, overwrites)) == 7
        logs[native], images[native] = dev.log, dev.read(0, SIZE)
        dev.close()
    assert logs[True] == logs[False]
    assert images[True] == images[False] != image


def _errors(fs: FileSystem) -> list[tuple[str, type[BaseException] | int]]:
    """What each misuse of pwrite raises (the class, or the bytes written)."""
    out: list[tuple[str, type[BaseException] | int]] = []

    def attempt(what: str, call: Callable[[], int]) -> None:
        try:
            out.append((what, call()))
        except BaseException as exc:  # the class is the result
            out.append((what, type(exc)))

    with fs.open("/f", "rb+", buffering=0) as f:
        attempt("keywords", lambda: f.pwrite(data=b"kw", offset=5))
        attempt("one keyword", lambda: f.pwrite(b"kw", offset=6))
        attempt("negative", lambda: f.pwrite(b"x", -1))
        attempt("not an int", lambda: f.pwrite(b"x", "0"))  # type: ignore[arg-type]
        attempt("a bool", lambda: f.pwrite(b"x", True))
        attempt("not a buffer", lambda: f.pwrite("text", 0))  # type: ignore[arg-type]
        attempt("too few", lambda: f.pwrite(b"x"))  # type: ignore[call-arg]
        attempt("too many", lambda: f.pwrite(b"x", 0, 1))  # type: ignore[call-arg]
        attempt("past the end", lambda: f.pwrite(b"tail", 200_000))
        attempt("empty", lambda: f.pwrite(b"", 0))
    with fs.open("/f", "rb", buffering=0) as f:
        attempt("read-only", lambda: f.pwrite(b"x", 0))
    with fs.open("/g", "ab", buffering=0) as f:
        attempt("append", lambda: f.pwrite(b"appended", 0))
    f = fs.open("/g", "rb+", buffering=0)
    f.close()
    attempt("closed", lambda: f.pwrite(b"x", 0))
    return out


@pytest.mark.usefixtures("frozen")
def test_c_file_pwrite_answers_every_misuse_as_the_python_method(
    python_pwrite: Callable[[bool], None],
) -> None:
    image = base_image()
    results, images = {}, {}
    for native in (True, False):
        python_pwrite(native)
        dev = SimulatedPmem(SIZE, image=image)
        with daxfs.mount(dev) as fs:
            results[native] = _errors(fs)
            assert fs.stat("/f").st_size == 200_004
            with fs.open("/g", "rb") as g:
                assert g.read().endswith(b"appended")
        images[native] = dev.read(0, SIZE)
        dev.close()
    assert results[True] == results[False]
    assert images[True] == images[False]
    expected = dict(results[True])
    assert expected["keywords"] == 2
    assert expected["negative"] is InvalidArgument
    assert expected["not an int"] is TypeError
    assert expected["not a buffer"] is TypeError
    assert expected["too few"] is TypeError
    assert expected["read-only"] is UnsupportedIO
    assert expected["closed"] is ClosedFile


@pytest.mark.parametrize("native", [True, False], ids=["C", "python"])
def test_an_error_of_the_commit_names_the_file(
    native: bool, python_pwrite: Callable[[bool], None]
) -> None:
    """A fence failing past the commit point: IOFailure (EIO) naming the file, through
    the C method's _pwrite_failed as through the Python method."""
    python_pwrite(native)
    dev = FaultyPmem(SIZE, image=base_image())
    fs = daxfs.mount(dev)
    committer = fs.journal.committer
    assert committer is not None
    with fs.open("/g", "rb+", buffering=0) as f:
        f.pread(1, 0)  # caches the extent: the fast path takes the write
        dev.arm("drain", 3)
        with pytest.raises(IOFailure) as info:
            f.pwrite(b"NEW", 0)
        dev.disarm()
    assert info.value.errno == errno.EIO
    assert info.value.filename == "/g"
    assert committer.commits == 0
    fs.unmount()
    dev.close()


# -- the record cache -------------------------------------------------------------------


def interleaved(fs: FileSystem) -> None:
    """Overwrites of two files, with other commits between some of them: the record
    cache hits only where every commit since the record was written was an overwrite."""
    with fs.open("/f", "rb+", buffering=0) as f, fs.open("/g", "rb+", buffering=0) as g:
        f.pread(1, 0)
        g.pread(1, 0)
        f.pwrite(b"1" * 100, 0)  # reads /f's record from the media
        f.pwrite(b"2" * 100, BLOCK)  # hit
        g.pwrite(b"3" * 10, 4990)  # reads /g's record (grows /g to 5000)
        f.pwrite(b"4" * 100, 2 * BLOCK)  # hit: only overwrites since
        fs.chmod("/f", 0o600)  # another commit: /f's record changes on the media
        f.pwrite(b"5" * 100, 3 * BLOCK)  # media (the mode chmod wrote)
        g.pwrite(b"6" * 10, 0)  # media: /g's cached record is older than the chmod
        f.pwrite(b"7" * 100, 4 * BLOCK)  # hit
        fs.mkdir("/x")  # a commit that does not touch /f: the next read is from the media
        f.pwrite(b"8" * 100, 5 * BLOCK)
        f.pwrite(b"9" * 100, 6 * BLOCK)  # hit


@pytest.mark.usefixtures("frozen")
def test_the_record_cache_leaves_what_the_media_read_leaves() -> None:
    """The same writes with the C commit and with the reference: the same device
    operations, bytes and image; four overwrites took the record from the cache."""
    image = base_image()
    logs, images = {}, {}
    for native in (True, False):
        dev = RecordingPmem(SIZE, image=image)
        dev.log = []
        log = run(dev, native, interleaved)
        if native:
            assert log.committer is not None
            assert log.committer.commits == 9
            assert log.committer.record_hits == 4
        logs[native], images[native] = dev.log, dev.read(0, SIZE)
        dev.close()
    assert logs[True] == logs[False]
    assert images[True] == images[False]
    with daxfs.mount(SimulatedPmem(SIZE, image=images[True])) as fs:
        assert fs.stat("/f").st_mode & 0o777 == 0o600
        with fs.open("/f", "rb", buffering=0) as f:
            assert f.read(1) == b"1"
            assert f.pread(1, 6 * BLOCK) == b"9"


@pytest.mark.usefixtures("frozen")
def test_the_record_cache_in_native_mode(shm_path: os.PathLike[str]) -> None:
    """In native mode on /dev/shm, the same image as the reference's."""
    image = base_image()
    results = {}
    for native in (True, False):
        with open(shm_path, "wb") as out:
            out.write(image)
        log = run(str(shm_path), native, interleaved)
        if native:
            assert log.committer is not None
            assert log.committer.record_hits == 4
        with open(shm_path, "rb") as back:
            results[native] = back.read()
    assert results[True] == results[False]


def test_a_failed_commit_ends_the_chain() -> None:
    """After a commit that failed before its commit point, the next overwrite reads
    the record from the media again (the cache holds nothing it can trust)."""
    dev = FaultyPmem(SIZE, image=base_image())
    fs = daxfs.mount(dev)
    committer = fs.journal.committer
    assert committer is not None
    with fs.open("/f", "rb+", buffering=0) as f:
        f.pread(1, 0)
        f.pwrite(b"a", 0)
        f.pwrite(b"b", 1)
        assert committer.record_hits == 1
        dev.arm("drain", 1)  # fence 1: the write fails, nothing committed
        with pytest.raises(OSError, match="/f"):
            f.pwrite(b"c", 2)
        dev.disarm()
        assert committer.record_hits == 2  # the failed attempt took the cached record
        f.pwrite(b"d", 3)
        assert committer.record_hits == 2  # from the media
        f.pwrite(b"e", 4)
        assert committer.record_hits == 3
        assert f.pread(5, 0) == b"ab" + bytes(f.pread(1, 2)) + b"de"
    fs.unmount()
    with daxfs.mount(SimulatedPmem(SIZE, image=dev.image())) as again, again.open("/f", "rb") as f:
        head = f.read(5)
        assert head[:2] == b"ab"
        assert head[3:] == b"de"
    dev.close()
