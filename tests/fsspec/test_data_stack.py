"""Round trips through the data stack: pandas (CSV, Parquet via pyarrow), numpy, zarr v3
and universal-pathlib, each reaching the image only through ``daxfs://`` URLs, and
each checked from the daxfs API as well."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest

from daxfs.fsspec import DaxFileSystem, mounted

SO = {"persist": "cpu"}  # the storage options every URL here is opened with


@pytest.fixture
def dfs(image: str) -> Iterator[DaxFileSystem]:
    """conftest's, unmounted with force: pyarrow now and then keeps a file it read
    from open until its I/O threads run again (daxfs.fsspec, "Mount lifetime")."""
    fs = DaxFileSystem(image, **SO)
    yield fs
    fs.unmount(force=True)
    assert mounted() == []


def frame() -> object:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(11)
    return pd.DataFrame(
        {
            "i": np.arange(5000, dtype="int64"),
            "x": rng.random(5000),
            "s": [f"row {i}, with a comma" for i in range(5000)],
        }
    )


def test_pandas_csv_round_trip(dfs: DaxFileSystem) -> None:
    pd = pytest.importorskip("pandas")
    df = frame()
    url = f"daxfs:///tables/t.csv::{dfs.image}"
    df.to_csv(url, index=False, storage_options=SO)  # type: ignore[attr-defined]
    back = pd.read_csv(url, storage_options=SO)
    pd.testing.assert_frame_equal(back, df)
    with dfs.filesystem.open("/tables/t.csv", "r") as f:  # the daxfs API reads the same text
        assert f.readline() == "i,x,s\n"
    # the image as a storage option instead of a chained URL
    again = pd.read_csv("daxfs:///tables/t.csv", storage_options={"image": dfs.image, **SO})
    pd.testing.assert_frame_equal(again, df)


def test_pandas_parquet_round_trip(dfs: DaxFileSystem) -> None:
    pd = pytest.importorskip("pandas")
    pq = pytest.importorskip("pyarrow.parquet")
    df = frame()
    url = f"daxfs:///tables/t.parquet::{dfs.image}"
    df.to_parquet(url, storage_options=SO, row_group_size=1000)  # type: ignore[attr-defined]
    pd.testing.assert_frame_equal(pd.read_parquet(url, storage_options=SO), df)
    # column projection and row groups: pyarrow seeks and reads ranges of the file
    part = pd.read_parquet(url, columns=["x"], storage_options=SO)
    pd.testing.assert_frame_equal(part, df[["x"]])  # type: ignore[index]
    with dfs.open("/tables/t.parquet", "rb") as f:
        meta = pq.ParquetFile(f).metadata
    assert (meta.num_rows, meta.num_row_groups) == (5000, 5)
    table = pq.read_table("/tables/t.parquet", filesystem=dfs)  # pyarrow, fs given
    assert table.num_rows == 5000
    with dfs.filesystem.open("/tables/t.parquet", "rb") as f:
        assert f.read(4) == b"PAR1"


def test_numpy_save_and_load_through_a_file_object(dfs: DaxFileSystem) -> None:
    a = np.arange(100_000, dtype="float64").reshape(250, 400)
    with dfs.open("/arrays/a.npy", "wb") as f:
        np.save(f, a)
    with dfs.open("/arrays/a.npy", "rb") as f:
        back = np.load(f)
    np.testing.assert_array_equal(back, a)
    assert dfs.size("/arrays/a.npy") == a.nbytes + 128  # the .npy header: 128 bytes
    with dfs.open("/arrays/a.npy", "rb") as f:  # a memory map of the same bytes, no copy
        mapping = f.daxfs_file.mmap(access="read")
        view = np.frombuffer(mapping, dtype="float64", offset=128).reshape(250, 400)
        np.testing.assert_array_equal(view, a)
        del view
        mapping.close()


def test_zarr_v3_round_trip(dfs: DaxFileSystem) -> None:
    zarr = pytest.importorskip("zarr")
    if int(zarr.__version__.split(".")[0]) < 3:
        pytest.skip(f"zarr {zarr.__version__} is not v3")
    url = f"daxfs:///zarr/group::{dfs.image}"
    data = np.arange(120 * 80, dtype="int32").reshape(120, 80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr wraps a synchronous fsspec filesystem, and says so
        group = zarr.open_group(url, mode="w", storage_options=SO)
        array = group.create_array("a", shape=data.shape, chunks=(50, 30), dtype="int32")
        array[:] = data
        array[7, 9] = -1
        reopened = zarr.open_group(url, mode="r", storage_options=SO)
        back = reopened["a"][:]
    expected = data.copy()
    expected[7, 9] = -1
    np.testing.assert_array_equal(back, expected)
    stored = dfs.find("/zarr/group")
    assert "/zarr/group/zarr.json" in stored
    assert "/zarr/group/a/zarr.json" in stored
    chunks = [p for p in stored if p.startswith("/zarr/group/a/c/")]
    assert len(chunks) == 3 * 3  # 120/50 and 80/30, rounded up


def test_upath(dfs: DaxFileSystem) -> None:
    upath = pytest.importorskip("upath")
    from daxfs.fsspec._upath import DaxPath

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not explicitly implemented" fallback
        root = upath.UPath(f"daxfs:///::{dfs.image}", **SO)
        assert isinstance(root, DaxPath)
        notes = root / "notes"
        notes.mkdir()
        (notes / "a.txt").write_text("alpha")
        (notes / "b.bin").write_bytes(b"\x00beta")
        assert (notes / "a.txt").read_text() == "alpha"
        assert sorted(p.name for p in notes.iterdir()) == ["a.txt", "b.bin"]
        assert [p.path for p in root.glob("**/*.txt")] == ["/notes/a.txt"]
        assert (notes / "a.txt").stat().st_size == 5
        assert str(notes / "a.txt") == f"daxfs:///notes/a.txt::{dfs.image}"
        assert (notes / "a.txt").parent.path == "/notes"
        (notes / "a.txt").rename(notes / "c.txt")
        (notes / "b.bin").unlink()
        assert dfs.filesystem.listdir("/notes") == ["c.txt"]
        # the image as a storage option
        same = upath.UPath("daxfs:///notes/c.txt", image=dfs.image, **SO)
        assert same.read_text() == "alpha"


def test_pandas_through_upath(dfs: DaxFileSystem) -> None:
    pd = pytest.importorskip("pandas")
    upath = pytest.importorskip("upath")
    df = frame()
    path = upath.UPath(f"daxfs:///p/t.parquet::{dfs.image}", **SO)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        df.to_parquet(f)  # type: ignore[attr-defined]
    with path.open("rb") as f:
        pd.testing.assert_frame_equal(pd.read_parquet(f), df)


def test_read_buffer_fills_pyarrows_pool_from_device_memory(
    dfs: DaxFileSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    pa = pytest.importorskip("pyarrow")
    from daxfs.fs.file import File

    data = bytes(range(256)) * 64
    dfs.pipe_file("/f", data)
    calls: list[int] = []
    preadinto = File.preadinto

    def spy(self: File, buffer: object, offset: int) -> int:
        calls.append(offset)
        return preadinto(self, buffer, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(File, "preadinto", spy)
    with dfs.open("/f", "rb") as f:
        assert f.read(10) == data[:10]
        first = f.read_buffer(1000)
        assert isinstance(first, pa.Buffer)
        assert first.to_pybytes() == data[10:1010]
        assert f.tell() == 1010
        assert f.read_buffer(-1).to_pybytes() == data[1010:]
        assert f.read_buffer(5).to_pybytes() == b""
    assert calls == [10, 1010]  # one copy each, straight into the pool's buffer
    with dfs.open("/f", "rb+") as f:  # written bytes still in the buffer are read
        f.write(b"new")
        assert f.read_buffer(4).to_pybytes() == data[3:7]
        f.seek(0)
        assert f.read_buffer(3).to_pybytes() == b"new"
