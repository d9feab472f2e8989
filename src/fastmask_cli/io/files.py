"""Files: written atomically (a reader never sees a half-written file, whatever interrupts the writer),
JSON read fast at any size, and memory handed back after a big read."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from ..errors import FastMaskError

NO_ROOM = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})  # a full disk, a file size limit (ulimit -f), a quota


class NoRoom(FastMaskError):
    """A write that failed for want of room. What was written before is kept (files are replaced
    atomically, the partial log is only appended to), so a resumable command continues with --resume."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"cannot write {path}: {reason} (a full disk, a quota or a file size limit); "
                         "nothing written before is lost")

    def __reduce__(self) -> tuple:  # rebuilt from its parts: it travels from worker processes (runs/jobs.py)
        return type(self), (self.path, self.reason)


@contextmanager
def room_for(path: Path) -> Iterator[None]:
    """Writes to `path` within: one that fails for want of room (`NO_ROOM`) is a NoRoom naming `path`;
    the operating system's error names no file when a write, not an open, fails."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_ROOM:
            raise
        raise NoRoom(Path(path), exc.strerror or os.strerror(exc.errno)) from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: dict[str, Path | None], inputs: dict[str, Path | None],
                  image_suffixes: frozenset[str] = frozenset()) -> None:
    """FastMaskError, before any work, where an output is one of the command's inputs: the same file
    after links, or (an input folder) an existing file of `image_suffixes` inside it, which the run
    reads. `outputs` and `inputs` map the option or argument that names each (say "--out") to its path;
    None is absent. Outputs that are results file stems write OUT_STEM.images.json too: checked as well."""
    named = [(flag, Path(p)) for flag, p in outputs.items() if p is not None]
    named += [(f"{flag}'s file list", Path(p).with_name(f"{Path(p).stem}.images.json")) for flag, p in outputs.items()
              if p is not None and flag == "--out"]
    for out_flag, out in named:
        for in_flag, source in ((f, Path(p)) for f, p in inputs.items() if p is not None):
            if _same_file(out, source):
                raise FastMaskError(f"{out_flag} {out} is {in_flag} {source}: writing it would replace an input; "
                                    "give another path")
            if (source.is_dir() and out.suffix.lower() in image_suffixes and out.is_file()
                    and out.resolve().is_relative_to(source.resolve())):
                raise FastMaskError(f"{out_flag} {out} is an image of {in_flag} {source}: writing it would "
                                    "replace an input; give another path")


def check_regular(path: Path, what: str = "output") -> None:
    """FastMaskError where `path` exists and is not a regular file (after links): a device such as
    /dev/null, a pipe, a socket. Files are written atomically, a temporary file renamed over the name,
    which would replace the special file itself (as root, the machine's /dev/null) and leave a pipe's
    reader waiting for ever."""
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():
        raise FastMaskError(f"{what} {path} is not a regular file (a device, pipe or socket): fastmask writes "
                            "a file and renames it into place; give a file path")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it is removed.
    A write that fails for want of room is a NoRoom naming `path`; a `path` that is a special file is
    refused first (`check_regular`)."""
    path = Path(path)
    check_regular(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with room_for(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# In every folder that fastmask fills (the png and labels results, overlays, viewers), naming what wrote it:
# its files are never read as input images (`images.list_images` passes over the folder), and a results
# folder may be replaced whole by a later run (`mask_files.check_folder_output`).
OUTPUT_MARKER = ".fastmask-output"


def mark_output(folder: Path, what: str) -> None:
    """Mark `folder` as one fastmask fills with `what` (OUTPUT_MARKER)."""
    (Path(folder) / OUTPUT_MARKER).write_text(what + "\n")


def output_kind(folder: Path) -> str | None:
    """What fastmask filled `folder` with (`mark_output`), or None for a folder it did not fill."""
    try:
        return (Path(folder) / OUTPUT_MARKER).read_text().strip()
    except OSError:
        return None


def writable_folder(folder: Path, what: str) -> Path:
    """Make `folder` (and its parents) and check that files can be created in it, before any work is
    done; a FastMaskError naming it (`what` says what it is for) otherwise."""
    folder = Path(folder)
    in_the_way = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if in_the_way is not None:
        raise FastMaskError(f"cannot write {what} in {folder}: {in_the_way} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".fastmask-write-test.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise FastMaskError(f"cannot write {what} in {folder}: {reason}") from None
    return folder


def writable_file(path: Path, what: str) -> Path:
    """Check, before any work, that `path` can be written: its folder made and writable, and `path`
    itself not a folder. A FastMaskError naming it otherwise."""
    path = Path(path)
    if path.is_dir():
        raise FastMaskError(f"{what} {path} is a folder; give a file name such as results.json")
    check_regular(path, what)
    writable_folder(path.parent, what)
    return path


_HELD: dict[str, int] = {}  # outputs this process holds the lock of -> its descriptor (a run's parts may lock again)
_UNSUPPORTED = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})  # file systems without flock


def _forget_locks() -> None:
    """In a forked child: close the inherited lock descriptors. The parent's own keep its locks held, and a
    child that outlives a killed parent must not keep them (later runs would be refused for nothing)."""
    for fd in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks)


@contextmanager
def output_lock(path: Path) -> Iterator[None]:
    """Hold the lock of output `path` (the file `<path>.lock`, holding the owner's pid) while writing it
    and its partial files: a second run on the same output is refused in one line instead of racing the
    first. An flock, which the kernel releases when its process ends however it ends: a crashed run
    leaves none held. Re-entrant within a process; the lock file is removed on release. Where the
    system or file system has no flock (Windows, NFS without its lock service), runs are not guarded."""
    path = Path(path)
    key = os.path.abspath(path)
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if key in _HELD or fcntl is None:
        yield
        return
    lock = path.with_name(path.name + ".lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a lock file another user left, a read-only folder: unguarded, as before locks
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                yield
                return
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            held = exc.errno in (errno.EAGAIN, errno.EACCES)  # EWOULDBLOCK is EAGAIN on Linux
            owner = os.read(fd, 32).decode(errors="replace").strip() if held else ""
            os.close(fd)
            if held:
                raise FastMaskError(f"another fastmask run is writing {path} (pid {owner or 'unknown'}): wait for it "
                                    "to end, or write elsewhere") from None
            if exc.errno in _UNSUPPORTED:
                yield
                return
            raise
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break  # else the holder removed the file as we opened it: lock the new one
        os.close(fd)
    _HELD[key] = fd
    try:
        with room_for(lock):
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        _HELD.pop(key, None)
        lock.unlink(missing_ok=True)
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())


@contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused: while millions of containers are created (a COCO-size JSON
    file), its full passes rescan all of them again and again (3x the time of the parse itself)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc's malloc_trim), so that processes
    forked afterwards (DataLoader workers) do not map, and count in their PSS, what is already garbage."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file; a missing or malformed file is a one-line FastMaskError naming `what` it is.

    orjson parses (about 1.5x faster than the standard library on COCO-size files); what it refuses
    and Python's json reads (NaN and Infinity, which Python and other tools write) is read by json."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FastMaskError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise FastMaskError(f"{what} {path} is a folder, not a JSON file") from None
    except OSError as exc:
        raise FastMaskError(f"cannot read {what} {path}: {exc.strerror}") from None
    with no_gc():
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise FastMaskError(f"{what} {path} is not JSON") from None
