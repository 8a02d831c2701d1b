"""Mounting a daxfs image through FUSE: options, the serving loop, background mounts, umount.

Lifecycle::

    serve(): daxfs.mount(image) --> DaxFUSE(...) runs libfuse's loop (threads)
      --fusermount3 -u / SIGINT / SIGTERM / SIGHUP--> loop ends, kernel mount gone
      --> DaxOperations.close_all() --> FileSystem.unmount() (clean state written)

    mount_background(): fork --> child: setsid, serve(ready=...) ; parent waits on a pipe
      child's stderr is the pipe until ready: a failure's message reaches the parent,
      which prints it and exits non-zero; READY arrives when libfuse's init ran,
      that is once the kernel mount answers requests.  A note the child wrote
      before READY (the wire tap's Python fallback: serve()) is returned with
      the pid, and ``daxfs mount`` prints it.

    unmount(): fusermount3 -u MOUNTPOINT, then wait for the serving process (its pid
      file) to exit, so that the image is released (mountable, checkable) on return.

Invariants:
1. The daxfs image is mounted before the kernel mount exists and unmounted only
   after it is gone, so every request the kernel sends finds the filesystem.
2. Every operation is durable when it returns (the API's promise), so a signal or
   ``umount`` at any moment leaves a consistent image: the clean unmount only adds
   the clean flag.  A kill -9 leaves what a crash leaves: the next mount recovers.
3. ``mount_background`` returns 0 only after the mount is ready; any failure
   before that is reported with the child's message and a non-zero status.
4. The pid file of a mount exists from ready until the serving process exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from daxfs.errors import InvalidArgument, NotADirectory, NotFound
from daxfs.fs.devices import DAX_MODES
from daxfs.fs.mount import mount
from daxfs.lifecycle import cleanup_after, run_all

READY = b"\0daxfs-fuse-ready\n"
NOTE = "daxfs: note: "  # a line of the mount's stderr that daxfs mount passes on
#: FUSE options passed to libfuse as they are (flags, and the ones that take a value)
FUSE_FLAGS = (
    "allow_other",
    "allow_root",
    "auto_unmount",
    "kernel_cache",
    "auto_cache",
    "direct_io",
)
FUSE_VALUES = ("max_read", "attr_timeout", "entry_timeout", "negative_timeout", "max_idle_threads")


@dataclasses.dataclass
class MountOptions:
    """What ``-o`` said: daxfs's own options and those for libfuse."""

    readonly: bool = False
    dax: str = "inode"
    persist: str = "auto"
    layout_timeout: float = 10.0
    fuse: dict[str, str | bool] = dataclasses.field(default_factory=dict)


def parse_options(text: str | None) -> MountOptions:
    """Parse ``ro,allow_other,dax=never,layout_timeout=5``.

    Raises:
        InvalidArgument (EINVAL): an unknown option or a bad value, named.
    """
    opts = MountOptions()
    for item in (text or "").split(","):
        if not item:
            continue
        key, has_value, value = item.partition("=")
        if key in ("ro", "rw") and not has_value:
            opts.readonly = key == "ro"
        elif key == "dax" and value in DAX_MODES:
            opts.dax = value
        elif key == "persist" and value in ("auto", "cpu", "msync"):
            opts.persist = value
        elif key == "layout_timeout" and has_value:
            try:
                opts.layout_timeout = float(value)
            except ValueError:
                raise InvalidArgument(f"invalid mount option {item!r}: not a number") from None
        elif key in FUSE_FLAGS and not has_value:
            opts.fuse[key] = True
        elif key in FUSE_VALUES and has_value and value:
            opts.fuse[key] = value
        elif key == "default_permissions" and not has_value:
            pass  # always on
        else:
            raise InvalidArgument(
                f"invalid mount option {item!r}: known are ro, rw, dax={'|'.join(DAX_MODES)}, "
                f"persist=auto|cpu|msync, layout_timeout=SECONDS, {', '.join(FUSE_FLAGS)}, "
                f"{', '.join(v + '=' for v in FUSE_VALUES)}"
            )
    return opts


def check_mountpoint(mountpoint: str) -> str:
    """The absolute path of an existing directory to mount on.

    Raises:
        NotFound (ENOENT), NotADirectory (ENOTDIR), naming it.
    """
    path = os.path.abspath(mountpoint)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"mount point does not exist: {mountpoint}", mountpoint) from None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot use mount point: {exc.strerror}", mountpoint) from None
    if not os.path.isdir(path) or info is None:
        raise NotADirectory(f"mount point is not a directory: {mountpoint}", mountpoint)
    return path


# -- pid files (invariant 4) -----------------------------------------------------------


def _pid_file(mountpoint: str) -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    folder = os.path.join(base, f"daxfs-fuse-{os.getuid()}")
    key = hashlib.sha1(os.path.realpath(mountpoint).encode(errors="surrogateescape")).hexdigest()
    return os.path.join(folder, key[:20] + ".pid")


def _write_pid(path: str) -> str:
    """Write this process's pid to ``path`` (from _pid_file, computed before the mount:
    inside libfuse's init, a stat of the mount point would wait for init itself)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(path + ".tmp", path)
    return path


def _read_pid(mountpoint: str) -> int | None:
    try:
        with open(_pid_file(mountpoint)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


# -- serving ---------------------------------------------------------------------------


def tap_note() -> str:
    """What a mount says about its wire tap: nothing for the C one; for the Python
    fallback (daxfs.fuse._tap not built), that it is the fallback and why."""
    from daxfs.fuse._wire import tap_engine

    kind, why = tap_engine()
    return "" if kind == "C" else f"the FUSE wire tap runs in {kind}: {why}"


def serve(
    image: str,
    mountpoint: str,
    options: MountOptions | None = None,
    *,
    ready: Callable[[], None] | None = None,
) -> None:
    """Mount ``image`` on ``mountpoint`` and serve requests until it is unmounted.

    Blocks (libfuse's multi-threaded loop) until ``fusermount3 -u``, SIGINT,
    SIGTERM or SIGHUP; then closes what the kernel left open and unmounts the
    image.  ``ready`` is called once the kernel mount answers.

    Raises:
        The errors of daxfs.mount (naming the image) and of check_mountpoint;
        OSError (EIO) if libfuse could not mount (its message went to stderr).
    """
    from daxfs.fuse._binding import DaxFUSE
    from daxfs.fuse._ops import DaxOperations

    opts = options or MountOptions()
    mountpoint = check_mountpoint(mountpoint)
    note = tap_note()
    if note:  # before ready: a background mount's parent prints it (mount_background)
        print(f"{NOTE}{note}", file=sys.stderr, flush=True)
    fs = mount(
        image,
        readonly=opts.readonly,
        dax=opts.dax,
        persist=opts.persist,
        layout_timeout=opts.layout_timeout,
    )
    pid_path: list[str] = []
    pid_file = _pid_file(mountpoint)

    def on_ready() -> None:
        pid_path.append(_write_pid(pid_file))
        if ready is not None:
            ready()

    def forget_pid() -> None:
        for path in pid_path:  # last: unmount() waits for it (invariant 4)
            with contextlib.suppress(OSError):
                os.unlink(path)

    ops = DaxOperations(fs, ready=on_ready)
    try:
        kwargs: dict[str, str | bool] = {
            "foreground": True,
            "default_permissions": True,
            "fsname": os.path.abspath(image),
            "subtype": "daxfs",
            # libfuse knows a file by its path: two hard links are two kernel inodes,
            # and attributes cached for one go stale when the other changes them
            "attr_timeout": "0",
            **opts.fuse,
        }
        if opts.readonly:
            kwargs["ro"] = True
        try:
            DaxFUSE(ops, mountpoint, **kwargs)
        except RuntimeError as exc:
            # fuse_main_real returned non-zero: before ready, it could not mount (and said
            # why on stderr); after, the loop was ended by a signal (libfuse counts that
            # as an error): a normal end
            if not pid_path:
                raise OSError(errno.EIO, f"libfuse could not mount on {mountpoint}") from exc
    except BaseException as exc:  # a failed close or unmount becomes a note on it
        cleanup_after(exc, ops.close_all, fs.unmount, forget_pid)
        raise
    run_all([ops.close_all, fs.unmount, forget_pid])


def mount_background(
    image: str, mountpoint: str, options: MountOptions | None = None, timeout: float = 60.0
) -> tuple[int, str]:
    """Serve the mount from a detached child; return once it is ready or has failed.

    Returns:
        (pid, notes) when the mount is ready, ``notes`` being what the child
        wrote on stderr before (lines "daxfs: note: ...", usually none: see
        ``tap_note``); (0, message) when it failed, the message being the
        child's last line on stderr (without "daxfs: ").
    """
    image = os.path.abspath(image)
    mountpoint = check_mountpoint(mountpoint)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _child(image, mountpoint, options, write_end)
    os.close(write_end)
    got = bytearray()
    deadline = time.monotonic() + timeout
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while READY not in got and time.monotonic() < deadline:
            chunk = pipe.read(4096)
            if not chunk:
                break
            got += chunk
    if READY in got:  # the notes before it, not libfuse's own chatter
        said = got[: got.index(READY)].decode(errors="replace").splitlines()
        return pid, "\n".join(ln for ln in said if ln.startswith(NOTE))
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    lines = [ln.strip() for ln in got.decode(errors="replace").splitlines() if ln.strip()]
    message = lines[-1] if lines else "the mount process ended without saying why"
    return 0, message.removeprefix("daxfs: ")


def _child(
    image: str, mountpoint: str, options: MountOptions | None, report: int
) -> None:  # pragma: no cover - runs in the forked child
    status = 1
    try:
        os.setsid()
        os.chdir("/")
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(report, 2)  # until ready, what goes wrong reaches the parent

        def ready() -> None:
            os.write(report, READY)
            os.dup2(devnull, 2)
            os.close(report)

        serve(image, mountpoint, options, ready=ready)
        status = 0
    except BaseException as exc:
        from daxfs.cli import describe

        with contextlib.suppress(OSError):
            os.write(2, f"daxfs: {describe(exc)}\n".encode(errors="replace"))
    finally:
        os._exit(status)


# -- unmounting ------------------------------------------------------------------------


def is_mounted(mountpoint: str) -> bool:
    """True if ``mountpoint`` is a daxfs FUSE mount point (from /proc/self/mounts)."""
    path = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                where = fields[1].encode().decode("unicode_escape")
                if where == path and fields[2] == "fuse.daxfs":
                    return True
    except OSError:
        return False
    return False


def unmount(mountpoint: str, timeout: float = 60.0) -> None:
    """Unmount a daxfs FUSE mount and wait until its image is released.

    Raises:
        InvalidArgument (EINVAL): not a daxfs mount point.
        OSError: fusermount3 refused (EBUSY with files open), with its message;
            TimeoutError (ETIMEDOUT) if the serving process did not exit in time.
    """
    path = os.path.abspath(mountpoint)
    if not is_mounted(path):
        raise InvalidArgument(f"not a daxfs mount point: {mountpoint}", mountpoint)
    pid = _read_pid(path)
    done = subprocess.run(["fusermount3", "-u", path], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        text = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        code = errno.EBUSY if "busy" in text.lower() else errno.EIO
        raise OSError(code, f"cannot unmount {mountpoint}: {text}", mountpoint)
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return  # another user's process: fusermount3 did what we can do
        if _read_pid(path) != pid:
            return  # the pid file is gone: the image is released
        time.sleep(0.02)
    raise TimeoutError(
        errno.ETIMEDOUT, f"the daxfs process {pid} serving {mountpoint} did not exit", mountpoint
    )


def run_foreground(image: str, mountpoint: str, options: MountOptions | None) -> None:
    """serve() for the CLI's --foreground: a message on stderr when the mount is ready."""

    def ready() -> None:
        print(f"daxfs: {image} mounted on {mountpoint} (Ctrl-C to unmount)", file=sys.stderr)

    serve(image, mountpoint, options, ready=ready)
