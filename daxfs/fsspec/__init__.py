"""fsspec for daxfs: the ``daxfs://`` protocol, for pandas, pyarrow, zarr, dask, UPath.

``DaxFileSystem`` is an ``fsspec.AbstractFileSystem`` over one daxfs image,
registered under the protocol ``daxfs`` by the entry point
``[project.entry-points."fsspec.specs"]`` in pyproject.toml, so fsspec finds
it without importing daxfs first.

URLs
----
A daxfs URL names two things: the image (a path on the host) and a path
inside it.  It is written as fsspec writes a file inside an archive
(``zip://inner.csv::/data/archive.zip``): the path inside the image first,
then ``::``, then the image::

    daxfs:///data/x.parquet::/dev/shm/fs.img

fsspec splits a URL at ``::`` into a chain whose right-hand part is handed
to the left-hand filesystem as ``fo`` (its "file object"), so this form
round-trips through ``fsspec.open``, ``fsspec.url_to_fs``, pandas (which
calls them) and ``upath.UPath``.  The form ``daxfs:///dev/shm/fs.img::/data/x``
does not: fsspec would read it as the daxfs path ``/dev/shm/fs.img`` inside
an image at ``/data/x``.  Without a chain, the image is a storage option::

    fsspec.open("daxfs:///data/x.parquet", image="/dev/shm/fs.img")
    pd.read_parquet("daxfs:///data/x.parquet", storage_options={"image": "/dev/shm/fs.img"})
    UPath("daxfs:///data/x.parquet", image="/dev/shm/fs.img")

``fs.unstrip_protocol(path)`` (fsspec's ``OpenFile.full_name``) gives the
chained form, which reopens the same file from a string alone.  Paths
inside the image are absolute and ``/`` separated (``daxfs://data/x`` is
``/data/x``).

Mount lifetime
--------------
fsspec caches instances (per thread) and rebuilds them after pickling, but
a read-write mount excludes every other mount of its image (EBUSY).  So the
instances of one process share one mount per image (daxfs.fsspec._mounts):
the first instance mounts, the others reuse it; ``fs.unmount()`` (or
``fs.close()``) unmounts it and refuses (EBUSY) while files are open, after
waiting a moment for closes on other threads (pyarrow closes what it read
from its own I/O threads, and now and then keeps a file until they run
again); ``fs.unmount(force=True)``, and leaving ``with DaxFileSystem(image)
as fs:``, close the files still open (writers flushed) instead, as
daxfs.FileSystem's own ``with`` does.  An instance used after an unmount
mounts again.  At interpreter exit, files still open are closed (flushed:
durable) and every image unmounted.  A forked child does not inherit mounts
(its first use mounts for itself: EBUSY while the parent holds the image
read-write); another process, or a dask worker, mounts on its own.

Files
-----
``fs.open`` returns io's C buffered reader/writer/random classes over a raw
daxfs File (daxfs.fsspec._files): seekable, random access, ``readinto``
straight from device memory; every flush of the write buffer is one
durable transaction.  ``with fs.transaction:`` writes each "wb" file under a
temporary name and renames it into place at commit (atomic, durable).
``f.daxfs_file`` is the raw File (``mmap()``, ``pin()``);
``fs.filesystem`` the whole daxfs API.

Invariants
----------
1. Every operation is one or more calls of the daxfs API, each atomic and
   durable on return; the front end keeps no state of the image (no listing
   cache), so what it answers is what the image holds.
2. Errors are daxfs's OSErrors, with errno and the path inside the image,
   unchanged; ``sign`` raises NotImplementedError.
3. One mount per image per process (daxfs.fsspec._mounts, invariants 1-5).
"""

from daxfs.fsspec._files import DaxRandom, DaxReader, DaxWriter
from daxfs.fsspec._filesystem import DaxFileSystem
from daxfs.fsspec._mounts import mounted

__all__ = ["DaxFileSystem", "DaxRandom", "DaxReader", "DaxWriter", "mounted"]
