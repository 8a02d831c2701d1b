"""Round trips of dask.dataframe (Parquet, CSV) and xarray (zarr) through ``daxfs://`` URLs.

dask's threaded scheduler runs the partitions' reads and writes on worker threads,
each of which gets its own fsspec instance (fsspec caches instances per thread):
they must all share the process's one mount of the image (daxfs.fsspec._mounts).
Every round trip is also checked from the daxfs API (the files are where the URL
says) and ends with a clean fsck.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator

import numpy as np
import pytest

import daxfs
from daxfs.fsspec import DaxFileSystem, mounted

pd = pytest.importorskip("pandas")
dd = pytest.importorskip(
    "dask.dataframe", reason="dask[dataframe] is not installed (pip install -e .[dev])"
)
SO = {"persist": "cpu"}  # the storage options every URL here is opened with


@pytest.fixture
def dfs(image: str) -> Iterator[DaxFileSystem]:
    """conftest's, unmounted with force (pyarrow may keep a file it read from open a
    moment: daxfs.fsspec, "Mount lifetime"), and fsck'ed."""
    fs = DaxFileSystem(image, **SO)
    yield fs
    fs.unmount(force=True)
    assert mounted() == []
    report = daxfs.fsck(image)
    assert report.clean, report.problems


def same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """The same rows and values (dask reads strings as pyarrow strings: dtypes differ)."""
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_dtype=False)
    assert got["k"].dtype == expected["k"].dtype


def frame(rows: int = 6000) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "k": np.arange(rows, dtype="int64"),
            "x": rng.random(rows),
            "s": [f"r{i}, quoted" for i in range(rows)],
        }
    )


def on_threads(threads: set[int]) -> None:
    """A dask task that records the thread it ran on."""
    threads.add(threading.get_ident())


def test_dask_parquet_round_trip_on_the_threaded_scheduler(dfs: DaxFileSystem) -> None:
    pytest.importorskip("pyarrow")
    df = frame()
    url = f"daxfs:///dask/pq::{dfs.image}"
    ddf = dd.from_pandas(df, npartitions=4)
    ddf.to_parquet(
        url, storage_options=SO, write_index=False, compute_kwargs={"scheduler": "threads"}
    )
    parts = sorted(p for p in dfs.ls("/dask/pq", detail=False) if p.endswith(".parquet"))
    assert len(parts) == 4
    back = dd.read_parquet(url, storage_options=SO).compute(scheduler="threads")
    same(back, df)
    # a projection and a filter: pyarrow reads ranges of each part
    some = dd.read_parquet(url, storage_options=SO, columns=["k", "x"], filters=[("k", "<", 100)])
    same(some.compute(scheduler="threads"), df.loc[df.k < 100, ["k", "x"]])


def test_dask_csv_round_trip(dfs: DaxFileSystem) -> None:
    df = frame()
    ddf = dd.from_pandas(df, npartitions=3)
    # the image as a storage option: a glob in a chained URL is fsspec's too, but this
    # is the form dask's docs show
    options = {"image": dfs.image, **SO}
    ddf.to_csv("daxfs:///dask/csv/part-*.csv", index=False, storage_options=options)
    assert dfs.ls("/dask/csv", detail=False) == [f"/dask/csv/part-{i}.csv" for i in range(3)]
    back = dd.read_csv("daxfs:///dask/csv/part-*.csv", storage_options=options)
    same(back.compute(scheduler="threads"), df)
    with dfs.filesystem.open("/dask/csv/part-1.csv", "r") as f:  # the daxfs API agrees
        assert f.readline() == "k,x,s\n"
        assert f.readline().startswith("2000,")


def test_xarray_zarr_round_trip(dfs: DaxFileSystem) -> None:
    xr = pytest.importorskip("xarray", reason="xarray is not installed (pip install -e .[dev])")
    zarr = pytest.importorskip("zarr")
    if int(zarr.__version__.split(".")[0]) < 3:
        pytest.skip(f"zarr {zarr.__version__} is not v3")
    rng = np.random.default_rng(4)
    ds = xr.Dataset(
        {
            "temperature": (("time", "x"), rng.random((40, 30))),
            "count": (("x",), np.arange(30, dtype="int32")),
        },
        coords={"time": np.arange(40), "x": np.linspace(0.0, 1.0, 30)},
        attrs={"title": "daxfs round trip"},
    )
    url = f"daxfs:///xr/ds.zarr::{dfs.image}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr wraps a synchronous fsspec filesystem, and says so
        ds.chunk({"time": 10}).to_zarr(url, mode="w", storage_options=SO, zarr_format=3)
        back = xr.open_zarr(url, storage_options=SO, zarr_format=3)
        assert back["temperature"].chunks == ((10, 10, 10, 10), (30,))  # dask arrays
        loaded = back.compute()
        # append along time, then read again: the store is changed in place
        more = ds.isel(time=slice(0, 10)).assign_coords(time=np.arange(40, 50))
        more[["temperature"]].to_zarr(url, append_dim="time", storage_options=SO)
        grown = xr.open_zarr(url, storage_options=SO).compute()
    xr.testing.assert_identical(loaded, ds)
    assert grown.sizes["time"] == 50
    np.testing.assert_array_equal(grown["temperature"].values[40:], ds["temperature"].values[:10])
    assert dfs.isfile("/xr/ds.zarr/zarr.json")
    assert dfs.isfile("/xr/ds.zarr/temperature/zarr.json")
    assert len(dfs.find("/xr/ds.zarr/temperature/c")) == 5  # 50 along time / 10


def test_dask_array_to_zarr_and_back(dfs: DaxFileSystem) -> None:
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    if int(zarr.__version__.split(".")[0]) < 3:
        pytest.skip(f"zarr {zarr.__version__} is not v3")
    threads: set[int] = set()
    a = da.arange(200 * 150, dtype="float64").reshape(200, 150).rechunk((50, 50)) * 0.5
    url = f"daxfs:///arrays/a.zarr::{dfs.image}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.to_zarr(url, storage_options=SO, compute=True)
        back = da.from_zarr(url, storage_options=SO)
        total = back.map_blocks(lambda b: (on_threads(threads), b)[1]).sum()
        assert float(total.compute(scheduler="threads")) == float(a.sum().compute())
    assert back.chunks == ((50,) * 4, (50,) * 3)
    assert threads  # the blocks were read on dask's threads
