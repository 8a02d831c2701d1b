"""Bio construction, queue limits, and the split and merge properties."""

from __future__ import annotations

import errno
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daxfs.block import Bio, BioFlags, BioOp, QueueLimits, check_bio, merge_bios, split_bio
from daxfs.errors import InvalidArgument, IOFailure


def test_bio_fields() -> None:
    data = bytearray(1024)
    bio = Bio(BioOp.WRITE, 8, [data[:512], memoryview(data)[512:]], flags=BioFlags.FUA)
    assert bio.size == 1024
    assert bio.end_sector == 10
    assert len(bio.segments) == 2
    assert not bio.done
    assert "write" in repr(bio)
    assert Bio(BioOp.DISCARD, 0, size=4096).size == 4096
    assert Bio(BioOp.FLUSH).size == 0
    # a multi-byte format is seen as bytes
    import array

    assert Bio(BioOp.WRITE, 0, [array.array("d", [1.0] * 64)]).size == 512


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Bio("read", 0, [bytearray(512)]), "BioOp"),  # type: ignore[arg-type]
        (lambda: Bio(BioOp.READ, -1, [bytearray(512)]), "sector"),
        (lambda: Bio(BioOp.READ, True, [bytearray(512)]), "sector"),
        (lambda: Bio(BioOp.READ, 0, [b"ro" * 256]), "read-only"),
        (lambda: Bio(BioOp.WRITE, 0, [42]), "not a buffer"),  # type: ignore[list-item]
        (lambda: Bio(BioOp.WRITE, 0, [bytes(512)], size=1024), "segments' total"),
        (lambda: Bio(BioOp.DISCARD, 0, [bytes(512)]), "no segments"),
        (lambda: Bio(BioOp.WRITE_ZEROES, 0), "size"),
        (lambda: Bio(BioOp.FLUSH, size=512), "no length"),
        (lambda: Bio(BioOp.WRITE, 0, [bytes(512)], flags=1), "BioFlags"),  # type: ignore[arg-type]
    ],
)
def test_bad_bios_raise_einval(make: object, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as info:
        make()  # type: ignore[operator]
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    "kwargs",
    [
        {"logical_block_size": 256},
        {"logical_block_size": 1000},
        {"physical_block_size": 256},
        {"max_segments": 0},
        {"max_bytes": 1000},
        {"max_discard_bytes": 100},
        {"dma_alignment": 3},
    ],
)
def test_bad_limits(kwargs: dict[str, int]) -> None:
    with pytest.raises(InvalidArgument):
        QueueLimits(**kwargs)


def test_check_bio_names_alignment_range_and_support() -> None:
    limits = QueueLimits(logical_block_size=4096, physical_block_size=4096, max_discard_bytes=0)
    unaligned = check_bio(Bio(BioOp.READ, 1, [bytearray(4096)]), limits, 1024, "dev")
    assert isinstance(unaligned, InvalidArgument)
    assert "sector 1" in str(unaligned)
    assert "4096" in str(unaligned)
    short = check_bio(Bio(BioOp.READ, 8, [bytearray(512)]), limits, 1024, "dev")
    assert isinstance(short, InvalidArgument)
    assert "512 bytes at sector 8" in str(short)
    beyond = check_bio(Bio(BioOp.WRITE, 1024, [bytes(4096)]), limits, 1024, "dev")
    assert isinstance(beyond, InvalidArgument)
    assert "[1024, 1032)" in str(beyond)
    nodiscard = check_bio(Bio(BioOp.DISCARD, 0, size=4096), limits, 1024, "dev")
    assert nodiscard is not None
    assert nodiscard.errno == errno.EOPNOTSUPP
    ro = check_bio(Bio(BioOp.WRITE, 0, [bytes(4096)]), limits, 1024, "dev", readonly=True)
    assert ro is not None
    assert ro.errno == errno.EROFS
    preflush_read = Bio(BioOp.READ, 0, [bytearray(4096)], flags=BioFlags.PREFLUSH)
    assert isinstance(check_bio(preflush_read, limits, 1024, "dev"), InvalidArgument)
    assert check_bio(Bio(BioOp.READ, 8, [bytearray(8192)]), limits, 1024, "dev") is None


# -- split -------------------------------------------------------------------------------

limits_strategy = st.builds(
    lambda lbs, segs, seg_blocks, req_blocks, seg_extra: QueueLimits(
        logical_block_size=lbs,
        physical_block_size=lbs,
        max_segments=segs,
        max_segment_bytes=seg_blocks * lbs + seg_extra,
        max_bytes=req_blocks * lbs,
        max_discard_bytes=req_blocks * lbs,
    ),
    st.sampled_from([512, 1024, 4096]),
    st.integers(1, 6),
    st.integers(1, 4),
    st.integers(1, 8),
    st.integers(0, 300),
)


@settings(max_examples=300, deadline=None)
@given(
    limits=limits_strategy,
    blocks=st.integers(1, 40),
    cuts=st.lists(st.integers(0, 10**6), max_size=12),
    flags=st.sampled_from([BioFlags.NONE, BioFlags.FUA, BioFlags.FUA | BioFlags.PREFLUSH]),
)
def test_split_children_cover_the_bio_within_limits(
    limits: QueueLimits, blocks: int, cuts: list[int], flags: BioFlags
) -> None:
    lbs = limits.logical_block_size
    size = blocks * lbs
    data = bytes((i * 13) % 256 for i in range(size))
    edges = sorted({0, size, *(c % size for c in cuts)})
    segments = [memoryview(data)[a:b] for a, b in itertools.pairwise(edges)]
    bio = Bio(BioOp.WRITE, 8 * (lbs // 512), segments, flags=flags)
    # impossible only when some logical block needs more than max_segments pieces
    need = max(pieces_for_block(edges, p, lbs, limits) for p in range(0, size, lbs))
    if need > limits.max_segments:
        with pytest.raises(InvalidArgument, match="less than one logical block"):
            split_bio(bio, limits)
        return
    children = split_bio(bio, limits)
    sector = bio.sector
    out = b""
    for child in children:
        assert child.sector == sector
        assert child.size % lbs == 0
        assert 0 < child.size <= limits.max_bytes
        assert len(child.segments) <= limits.max_segments
        assert all(len(s) <= limits.max_segment_bytes for s in child.segments)
        assert child.size == sum(len(s) for s in child.segments)
        if children != [bio]:
            assert child.flags == flags & ~BioFlags.PREFLUSH
        out += b"".join(child.segments)
        sector = child.end_sector
    assert sector == bio.end_sector
    assert out == data
    if children != [bio]:  # completing every child completes the parent with the total
        for child in children:
            assert not bio.done
            child._complete(child.size)
        assert bio.wait() == size


def pieces_for_block(edges: list[int], p: int, lbs: int, limits: QueueLimits) -> int:
    """Pieces (segment parts of at most max_segment_bytes) needed to cover [p, p+lbs)."""
    count = 0
    for a, b in itertools.pairwise(edges):
        lo, hi = max(a, p), min(b, p + lbs)
        if lo < hi:
            count += -(-(hi - lo) // limits.max_segment_bytes)
    return count


def test_split_parent_gets_the_first_error() -> None:
    limits = QueueLimits(max_bytes=1024)
    bio = Bio(BioOp.WRITE, 0, [bytes(4096)])
    children = split_bio(bio, limits)
    assert len(children) == 4
    first = IOFailure("first")
    children[2]._complete(first)
    children[0]._complete(1024)
    children[3]._complete(IOFailure("second"))
    assert not bio.done
    children[1]._complete(1024)
    with pytest.raises(IOFailure, match="first"):
        bio.wait()
    assert bio.status is first


def test_split_discard_by_its_limit() -> None:
    limits = QueueLimits(max_discard_bytes=4096)
    bio = Bio(BioOp.DISCARD, 0, size=10240)
    children = split_bio(bio, limits)
    assert [(c.sector, c.size) for c in children] == [(0, 4096), (8, 4096), (16, 2048)]


# -- merge -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(
        st.tuples(
            st.sampled_from([BioOp.READ, BioOp.WRITE, BioOp.WRITE_ZEROES]),
            st.sampled_from([BioFlags.NONE, BioFlags.FUA, BioFlags.PREFLUSH]),
            st.integers(0, 2),  # gap in sectors before the bio (0: contiguous)
            st.integers(1, 4),  # sectors
            st.integers(1, 3),  # segments
        ),
        max_size=20,
    ),
    max_segments=st.integers(1, 6),
    max_blocks=st.integers(1, 8),
)
def test_merge_keeps_order_and_limits(
    specs: list[tuple[BioOp, BioFlags, int, int, int]], max_segments: int, max_blocks: int
) -> None:
    limits = QueueLimits(
        max_segments=max_segments,
        max_bytes=max_blocks * 512,
        max_write_zeroes_bytes=max_blocks * 512,
    )
    bios = []
    sector = 0
    for op, flags, gap, sectors, segs in specs:
        if op is BioOp.READ and flags:
            flags = BioFlags.NONE
        if op is BioOp.WRITE_ZEROES and flags & BioFlags.PREFLUSH:
            flags = BioFlags.NONE
        sector += gap
        if op is BioOp.WRITE_ZEROES:
            bio = Bio(op, sector, size=sectors * 512, flags=flags)
        else:
            segs = min(segs, sectors)
            buf = bytearray(sectors * 512)
            parts = [memoryview(buf)[i * 512 : (i + 1) * 512] for i in range(segs - 1)]
            parts.append(memoryview(buf)[(segs - 1) * 512 :])
            bio = Bio(op, sector, parts, flags=flags)
        bio = split_bio(bio, limits)[0] if bio.size <= limits.max_bytes_for(op) else bio
        if bio.size > limits.max_bytes_for(op) or len(bio.segments) > limits.max_segments:
            sector += sectors
            continue  # merge takes bios within the limits
        bios.append(bio)
        sector += sectors
    requests = merge_bios(bios, limits)
    assert [b for r in requests for b in r.bios] == bios
    for i, req in enumerate(requests):
        first = req.bios[0]
        assert (req.op, req.flags, req.sector) == (first.op, first.flags, first.sector)
        assert req.size == sum(b.size for b in req.bios)
        assert req.size <= limits.max_bytes_for(req.op)
        assert req.nr_segments <= limits.max_segments
        for a, b in zip(req.bios, req.bios[1:], strict=False):
            assert b.sector == a.end_sector
            assert (b.op, b.flags) == (a.op, a.flags)
            assert not b.flags & BioFlags.PREFLUSH
        if i:  # a bio that starts a request could not have joined the previous one
            prev = requests[i - 1]
            assert (
                first.op is not prev.op
                or first.flags != prev.flags
                or first.flags & BioFlags.PREFLUSH
                or first.sector != prev.sector + prev.size // 512
                or prev.size + first.size > limits.max_bytes_for(first.op)
                or prev.nr_segments + len(first.segments) > limits.max_segments
            )


def test_the_future_is_made_when_asked_for_and_agrees_with_wait() -> None:
    """A bio makes its Future only when ``future`` is asked for: before completion (then
    resolved by it) or after (made resolved); ``wait`` needs none."""
    from daxfs.testing.simblock import SimulatedBlockDevice

    dev = SimulatedBlockDevice(1 << 20)
    try:
        plain = Bio(BioOp.WRITE, 0, [b"x" * 512])
        dev.submit_bio(plain)
        assert plain._future is None
        assert plain.wait() == 512
        assert plain._future is None  # waited for without one
        assert plain.future.result(0) == 512  # made after completion: resolved
        asked = Bio(BioOp.READ, 0, [bytearray(512)])
        early = asked.future  # made before submission: completion resolves it
        dev.submit_bio(asked)
        assert early is asked.future
        assert early.result(0) == 512
        bad = Bio(BioOp.READ, (1 << 20) >> 9, [bytearray(512)])  # past the end
        dev.submit_bio(bad)
        with pytest.raises(InvalidArgument) as info:
            bad.wait()
        assert info.value is bad.status
        assert bad.future.exception(0) is bad.status
    finally:
        dev.close()


@settings(max_examples=200, deadline=None)
@given(
    op=st.sampled_from([BioOp.READ, BioOp.WRITE, BioOp.DISCARD]),
    sector=st.one_of(st.integers(-2, 1 << 40), st.just(True)),
    kind=st.sampled_from(["bytearray", "bytes", "view", "ro_view", "array", "2d", "int", "empty"]),
    n=st.integers(0, 3),
    flags=st.sampled_from([BioFlags.NONE, BioFlags.FUA]),
)
def test_the_common_bio_is_made_as_the_checks_make_it(
    op: BioOp, sector: int, kind: str, n: int, flags: BioFlags
) -> None:
    """``Bio(op, sector, [one buffer])`` takes a short way for the common bio; it gives
    the fields (or the error) the checks give for the same bio with its segment in a
    tuple (which always takes them)."""
    import array

    size = 512 * n
    seg: object = {
        "bytearray": bytearray(size),
        "bytes": bytes(size),
        "view": memoryview(bytearray(size)),
        "ro_view": memoryview(bytes(size)),
        "array": array.array("H", bytes(size)),
        "2d": memoryview(bytearray(size or 2)).cast("B", (2, (size or 2) // 2)),
        "int": 42,
        "empty": bytearray(),
    }[kind]

    def made(segments: object) -> object:
        try:
            bio = Bio(op, sector, segments, flags=flags)  # type: ignore[arg-type]
        except (InvalidArgument, TypeError) as exc:
            return (type(exc), str(exc))
        return (
            bio.op,
            bio.flags,
            bio.sector,
            [bytes(v) for v in bio.segments],
            [(v.format, v.ndim, v.readonly) for v in bio.segments],
            bio.size,
            bio.end_io,
            bio.private,
            bio._future,
            bio._value,
            bio.status,
            bio._state,
            bio._parent,
            bio._chain,
            bio._waiter,
        )

    assert made([seg]) == made((seg,))
