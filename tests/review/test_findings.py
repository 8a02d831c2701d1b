"""Regression tests for the findings of an adversarial review (each once demonstrated a bug)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

import daxfs
from daxfs.errors import NoSpace
from daxfs.fs.fsck import fsck
from daxfs.testing import SimulatedPmem
from daxfs.testing.faults import FlakyPmem
from tests import helpers

BLOCK = 4096
SIZE = 16 << 20


@pytest.fixture
def dev() -> Iterator[SimulatedPmem]:
    yield from helpers.fresh_device(SIZE)


def crash_copy(dev: SimulatedPmem) -> SimulatedPmem:
    """The device as a power failure right now would leave it (everything durable kept)."""
    return SimulatedPmem(dev.size, image=dev.persisted_image())


def fragmented(fs: daxfs.FileSystem, path: str, extents: int) -> None:
    """A file of ``extents`` one-block extents (every other block written)."""
    with fs.open(path, "wb", buffering=0) as f:
        for i in range(extents):
            f.pwrite(bytes([i % 251 + 1]) * BLOCK, 2 * i * BLOCK)


# -- 1. batched truncate of an unlinked open file drops it from the orphan list ------------


def test_truncate_of_unlinked_open_file_keeps_it_orphaned(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    fragmented(fs, "/big", 300)  # > BATCH_EXTENTS extents: a batched truncate
    f = fs.open("/big", "rb+", buffering=0)
    fs.unlink("/big")  # open: stays on the orphan list until the last close
    f.truncate(0)
    # power fails while the file is still open: recovery must free the inode
    after = crash_copy(dev)
    with daxfs.mount(after):
        pass
    report = fsck(after)
    f.close()
    fs.unmount()
    assert report.clean, str(report)


# -- 2. on_abort callbacks run after the journal lock is released -------------------------


def test_abort_reload_does_not_clobber_a_concurrent_transaction(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    with fs.open("/f", "wb", buffering=0) as f:
        f.pwrite(b"w" * BLOCK, BLOCK)  # hole, written block, (hole after)
    fs.mkdir("/warm")  # the root directory has a tree with room
    helpers.fill(fs, 1)

    b_inside = threading.Event()
    a_reloaded = threading.Event()
    errors: list[BaseException] = []

    real_add = fs.dirs.add

    def add(*args: object, **kw: object) -> None:
        real_add(*args, **kw)  # type: ignore[arg-type]
        if threading.current_thread().name == "B":
            b_inside.set()
            a_reloaded.wait(5)

    fs.dirs.add = add  # type: ignore[method-assign]

    def b() -> None:
        try:
            fs.mkdir("/newdir")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread_b = threading.Thread(target=b, name="B")
    real_reload = fs.sup.reload

    def reload() -> None:
        # widen the window between the journal lock release and this callback
        thread_b.start()
        b_inside.wait(2)
        real_reload()
        a_reloaded.set()

    fs.sup.reload = reload  # type: ignore[method-assign]
    with fs.open("/f", "rb+", buffering=0) as f, pytest.raises(NoSpace):
        f.pwrite(b"x" * 3 * BLOCK, 0)  # first hole allocated, then ENOSPC: abort
    thread_b.join()
    fs.sup.reload = real_reload  # type: ignore[method-assign]
    fs.dirs.add = real_add  # type: ignore[method-assign]
    assert not errors
    fs.open("/later", "xb").close()
    inos = (fs.stat("/newdir").st_ino, fs.stat("/later").st_ino)
    fs.unmount()
    report = fsck(dev)
    assert inos[0] != inos[1], f"/newdir and /later share inode {inos[0]}:\n{report}"
    assert report.clean, str(report)


# -- 3. DAX mappings ----------------------------------------------------------------------


def test_read_mapping_sees_write_into_preallocated_range(dev: SimulatedPmem) -> None:
    with daxfs.mount(dev) as fs:
        with fs.open("/f", "wb", buffering=0) as f:
            f.truncate(2 * BLOCK)
            f.fallocate(0, 2 * BLOCK, 0)  # unwritten extents
        with fs.open("/f", "rb+", buffering=0) as f:
            m = f.mmap(access="read")
            try:
                f.pwrite(b"D" * 100, 0)
                assert f.pread(100, 0) == b"D" * 100
                seen = m[0:100]
            finally:
                m.close()
        assert seen == b"D" * 100


def test_extend_after_truncate_reads_zeros_past_old_eof(dev: SimulatedPmem) -> None:
    with daxfs.mount(dev) as fs:
        with fs.open("/f", "wb", buffering=0) as f:
            f.write(b"a" * 2 * BLOCK)
        with fs.open("/f", "rb+", buffering=0) as f:
            m = f.mmap()
            try:
                f.truncate(5000)  # the block holding byte 5000 stays mapped
                m[6000:6010] = b"Z" * 10  # past EOF, inside the last page (allowed by mmap)
                f.truncate(2 * BLOCK)
                got = f.pread(10, 6000)
            finally:
                m.close()
        assert got == bytes(10)


def test_close_racing_truncate_never_maps_over_freed_address_space(dev: SimulatedPmem) -> None:
    import ctypes

    from daxfs.mm import _vm
    from daxfs.mm.vm import AddressSpace, Kernel

    stolen: dict[str, int] = {}
    unmapped = threading.Event()

    class RacyKernel(Kernel):
        """Lets a close() run at the worst moment of a detach (a deterministic interleaving)."""

        def munmap(self, addr: int, length: int) -> None:
            super().munmap(addr, length)
            unmapped.set()

        def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int, off: int) -> int:
            if flags & _vm.MAP_ANONYMOUS and flags & _vm.MAP_FIXED and not stolen:
                closer = threading.Thread(target=m.close)
                closer.start()
                threads.append(closer)
                if not unmapped.wait(0.5):  # fixed: close waits until the detach is done
                    return super().mmap(addr, length, prot, flags, fd, off)
                # someone else in the process now gets that address range
                got = _vm.mmap(
                    addr,
                    length,
                    _vm.PROT_READ | _vm.PROT_WRITE,
                    _vm.MAP_PRIVATE | _vm.MAP_ANONYMOUS | _vm.MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
                ctypes.memset(got, 0x5A, length)
                stolen.update(addr=got, length=length)
            return super().mmap(addr, length, prot, flags, fd, off)

    threads: list[threading.Thread] = []
    fs = daxfs.mount(dev)
    try:
        with fs.open("/f", "wb", buffering=0) as f:
            f.write(b"a" * 4 * BLOCK)
        f = fs.open("/f", "rb+", buffering=0)
        m = f.mmap()
        m._space = AddressSpace(kernel=RacyKernel())
        f.truncate(0)  # detaches every page of the mapping
        for t in threads:
            t.join()
        f.close()
        if not stolen:  # the close waited for the detach: the race cannot happen
            assert m.closed
            return
        survived = ctypes.string_at(stolen["addr"], stolen["length"])
        _vm.munmap(stolen["addr"], stolen["length"])
    finally:
        fs.unmount()
    assert survived == b"\x5a" * stolen["length"], "another owner's memory was replaced"


def test_close_racing_mmap_of_unlinked_file(
    dev: SimulatedPmem, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daxfs.fs.file import File

    fs = daxfs.mount(dev)
    with fs.open("/f", "wb", buffering=0) as f:
        f.write(b"a" * 4 * BLOCK)
    f = fs.open("/f", "rb", buffering=0)
    fs.unlink("/f")  # open: on the orphan list until the last user goes
    real = File.mapper
    assert real is not None

    def mapper(*args: object) -> object:
        mapping = real(*args)
        # another thread closes the file while this one is inside File.mmap
        closer = threading.Thread(target=f.close)
        closer.start()
        closer.join(5)
        return mapping

    monkeypatch.setattr(File, "mapper", mapper)
    m = f.mmap(access="read")
    monkeypatch.setattr(File, "mapper", real)
    with fs.open("/other", "wb", buffering=0) as g:  # reuses the freed blocks
        g.write(b"S" * 4 * BLOCK)
    seen = m[0:4]
    m.close()
    fs.unmount()
    assert seen == b"aaaa", f"the mapping shows another file's data: {seen!r}"


# -- 4. the commit point: one fence for the log AND the blocks written in place ------------


def journal_first_states(
    setup: object, op: object, size: int = SIZE, max_fences: int = 60
) -> Iterator[
    tuple[int, SimulatedPmem, dict[str, tuple[object, ...]], dict[str, tuple[object, ...]]]
]:
    """For every fence of ``op``: the legal crash state where the journal's pending lines
    all reached the media and no other pending line did (lines persist in any order
    until the fence completes).  Yields (fence, state, before, after)."""
    from daxfs.testing.crash import snapshot

    base = SimulatedPmem(size)
    daxfs.mkfs(base)
    with daxfs.mount(base) as fs:
        setup(fs)  # type: ignore[operator]
    image = base.read(0, size)
    with daxfs.mount(SimulatedPmem(size, image=image)) as fs:
        before = snapshot(fs)
    after_dev = SimulatedPmem(size, image=image)
    with daxfs.mount(after_dev) as fs:
        op(fs)  # type: ignore[operator]
    with daxfs.mount(after_dev) as fs:
        after = snapshot(fs)
    sb = daxfs.mount(SimulatedPmem(size, image=image), readonly=True)
    jlo, jhi = (
        sb.superblock.journal_start * BLOCK,
        (sb.superblock.journal_start + sb.superblock.journal_blocks) * BLOCK,
    )
    sb.unmount()
    from daxfs.testing.simulated import PowerFailure

    for fence in range(1, max_fences):
        dev = SimulatedPmem(size, image=image)
        fs = daxfs.mount(dev)
        dev.schedule_power_failure(fence)
        try:
            op(fs)  # type: ignore[operator]
        except PowerFailure:
            pass
        else:
            return
        images = dev._images()
        state = bytearray(images.persisted)
        state[jlo:jhi] = images.current[jlo:jhi]
        yield fence, SimulatedPmem(size, image=state), before, after


def _base(fs: daxfs.FileSystem) -> None:
    with fs.open("/secret", "wb", buffering=0) as f:
        f.write(b"SECRET! " * 1024)
    fs.unlink("/secret")  # its blocks are free again, their contents stay on the media
    with fs.open("/f", "wb", buffering=0) as f:
        f.write(b"x" * 100)


def test_commit_record_never_durable_before_the_data_it_points_to() -> None:
    def op(fs: daxfs.FileSystem) -> None:
        with fs.open("/f", "rb+", buffering=0) as f:
            f.pwrite(b"N" * 3 * BLOCK, 100)  # fills new blocks in place

    problems = []
    for fence, state, before, after in journal_first_states(_base, op):
        with daxfs.mount(state) as fs:
            from daxfs.testing.crash import snapshot

            seen = snapshot(fs)
            if seen not in (before, after):
                with fs.open("/f", "rb") as f:
                    problems.append((fence, f.read()[BLOCK : BLOCK + 16]))
    assert not problems, f"neither before nor after: {problems}"


def _prot_of(addr: int) -> str:
    with open("/proc/self/maps") as maps:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return line.split()[1]
    return "unmapped"


def test_replace_never_leaves_a_live_view_over_replaced_memory(
    dev: SimulatedPmem, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daxfs.mm import _vm
    from daxfs.mm.vm import Kernel

    fs = daxfs.mount(dev)
    with fs.open("/f", "wb", buffering=0) as f:
        f.write(b"v" * 4 * BLOCK)
    f = fs.open("/f", "rb", buffering=0)
    victim = f.mmap(access="read")
    held: list[memoryview] = []
    real_mmap = Kernel.mmap

    refused: list[BaseException] = []

    def mmap(self: Kernel, addr: int, length: int, prot: int, flags: int, fd: int, off: int) -> int:
        if flags & _vm.MAP_FIXED and addr == victim.address and not held and not refused:
            try:
                held.append(memoryview(victim))  # another thread takes a view right now
            except ValueError as exc:  # fixed: the victim gives no buffer once replacing began
                refused.append(exc)
        return real_mmap(self, addr, length, prot, flags, fd, off)

    monkeypatch.setattr(Kernel, "mmap", mmap)
    error = None
    try:
        f.mmap(access="read", address=victim.address, fixed="replace")
    except BaseException as exc:
        error = exc
    monkeypatch.setattr(Kernel, "mmap", real_mmap)
    state = (victim.closed, victim.exports, _prot_of(victim.address))
    if refused:  # the replace went through and no view of the victim can exist
        assert error is None
        assert state[0]
        f.close()
        for mapping in list(f.inode.mappings):
            mapping.close()
        fs.unmount()
        return
    # do not read through held[0]: it would fault
    assert held
    held.pop().release()
    victim.close()
    f.close()
    fs.unmount()
    assert state[0] or state[2].startswith("r"), (
        f"victim open={not state[0]} exports={state[1]} prot={state[2]} error={error!r}"
    )


# -- 5. error paths -------------------------------------------------------------------------


def test_failed_commit_is_not_replayed_after_a_crash() -> None:
    dev = FlakyPmem(SIZE)
    daxfs.mkfs(dev)
    fs = daxfs.mount(dev)
    fs.open("/f", "wb").close()
    dev.fail_next = True
    with pytest.raises(OSError, match="simulated device error"):
        fs.unlink("/f")  # fails: "before the commit point nothing changed"
    assert fs.exists("/f")
    fs.sync()  # any later fence (msync, another operation's commit, ...)
    after = crash_copy(dev)
    with daxfs.mount(after) as fs2:
        exists = fs2.exists("/f")
    assert exists, "the failed unlink came back after the crash"
