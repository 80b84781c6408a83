"""The operating-system calls the store's crash safety rests on, in one place, each with the
fallback used where the platform lacks it.

 - `sync_file` / `sync_dir`: fsync a file, and a directory (so that a new or renamed file in it
   survives a power cut). Where a directory cannot be opened or synced (Windows; some network
   file systems answer EINVAL), `sync_dir` does nothing: a rename is then as durable as the file
   system makes it.
 - `replace_file`: bytes into a unique temporary file beside the target, fsync, rename over the
   target, fsync the directory. On any error the temporary file is removed.
 - `WriterLock`: one writer per store, as an exclusive flock. A flock belongs to an open file
   description, which fork() shares with the child: a DataLoader worker outliving its parent
   would keep the store locked. So every held lock's descriptor is closed in each forked child
   (os.register_at_fork; the set of held locks is the one piece of module state, because fork
   hooks are process-wide). Not POSIX fcntl locks, although fork does not share those: any
   close() of the file anywhere in the process drops them, and HDF5 and the chunk maps open and
   close store files all the time. Where the lock is on a directory's descriptor, deleting a
   file cannot undo it; where a file system refuses flock on a directory, a lock file is used
   instead, and `check()` (called before every commit) stops a writer whose lock file was
   deleted or replaced. Without the fcntl module (Windows) there is no lock, as for remote URLs.
 - `loaded_library`: the path of a shared library this process has mapped (Linux /proc), for the
   one HDF5 setting h5py does not expose; None elsewhere.
"""
from __future__ import annotations

import errno
import glob
import os
import shutil
import uuid
import weakref
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

from .errors import StoreError, StoreLockedError

# errno values meaning "this file system cannot do that here", not "it failed"
UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.ENOLCK,
               errno.EISDIR, errno.EACCES, errno.EPERM}


def sync_file(path) -> None:
    """fsync a file by path (its data and size are on disk when this returns)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path) -> None:
    """fsync a directory, so that the entries just created or renamed in it are on disk."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in UNSUPPORTED:  # directories cannot be opened here (Windows)
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def temp_name(target: Path) -> Path:
    """A fresh name beside target (same directory, so the rename stays on one file system)."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")


def replace_file(target: Path, data: bytes) -> None:
    """Atomically and durably replace target's content: readers see the old or the new file."""
    target = Path(target)
    temporary = temp_name(target)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_dir(target.parent)


def _creating_prefix(target: Path) -> str:
    return f".{target.name[:100]}.creating-"  # short enough beside any name that fits


def creation_path(target: Path) -> Path:
    """Where a new store is built before it is renamed to `target` (see remove_abandoned)."""
    return target.with_name(f"{_creating_prefix(target)}{uuid.uuid4().hex[:16]}")


def move_into_place(source: Path, target: Path) -> None:
    """Rename source to target, never replacing a file that appeared at target meanwhile (a
    second process creating the same store): a hard link fails if target exists. Where hard links
    are not supported, a plain rename."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno == errno.EEXIST or exc.errno not in UNSUPPORTED | {errno.EXDEV, errno.EMLINK}:
            raise
        os.rename(source, target)
        return
    os.unlink(source)


def remove_abandoned(target: Path) -> None:
    """Delete what killed creations of `target` left beside it; one still locked is another
    process creating the store right now, and is left alone."""
    for leftover in target.parent.glob(f"{glob.escape(_creating_prefix(target))}*"):
        try:
            lock = WriterLock.acquire(leftover, str(leftover))
        except (StoreError, OSError):
            continue
        try:
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        finally:
            lock.release()


class WriterLock:
    """An exclusive lock on a store (see the module docstring)."""

    def __init__(self, fd: int | None, locked: Path, store: str, watched: bool):
        self._fd, self._locked, self._store, self._watched = fd, locked, store, watched
        self._identity = _identity(os.fstat(fd)) if fd is not None else None
        if fd is not None:
            _HELD.add(self)

    @classmethod
    def acquire(cls, target, store: str, fallback_file=None) -> "WriterLock":
        """Lock `target` (a store's file or directory); `fallback_file` is locked instead where
        the file system refuses flock on the directory. StoreLockedError if another process
        holds it."""
        target = Path(target)
        if fcntl is None:
            return cls(None, target, store, watched=False)
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            _flock(fd, store)
            return cls(fd, target, store, watched=False)
        except OSError as exc:
            os.close(fd)
            if fallback_file is None or exc.errno not in UNSUPPORTED:
                raise StoreError(f"{store}: cannot lock {target}: {exc.strerror}") from None
        fallback = Path(fallback_file)
        fd = os.open(fallback, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            _flock(fd, store)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, fallback, store, watched=True)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def check(self) -> None:
        """Raise StoreLockedError unless this process still owns the lock on what is at the path:
        a lock file deleted (or replaced) under a writer has let a second writer in."""
        if self._identity is None:
            if fcntl is not None and self._locked is not None:
                raise StoreLockedError(f"{self._store}: this process does not hold the writer "
                                       f"lock (it was taken by the parent of this forked process)")
            return
        try:
            here = _identity(os.stat(self._locked))
        except FileNotFoundError:
            here = None
        if here != self._identity:
            what = "lock file" if self._watched else "store"
            raise StoreLockedError(f"{self._store}: the {what} {self._locked} was removed or "
                                   f"replaced while this process was writing; another writer may "
                                   f"have opened the store, so nothing more is committed here")

    def moved_to(self, old, new) -> None:
        """`old` (the locked file or directory, or the one holding the lock file) was renamed
        to `new`: a new store moved into place."""
        if self._locked is not None:
            self._locked = Path(new) / Path(self._locked).relative_to(old)

    def release(self) -> None:
        if self._fd is not None:
            _HELD.discard(self)
            os.close(self._fd)  # closing the last descriptor of the description unlocks
            self._fd = None
        self._locked = None

    def _forget_in_child(self) -> None:
        os.close(self._fd)  # the parent's lock: the child must not keep it alive
        self._fd, self._identity = None, None


def _flock(fd: int, store: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass
    else:
        return
    try:  # a writer holds the lock exclusively; a shared holder is a reader (HDF5's own locking)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StoreLockedError(f"{store} is open for writing by another process") from None
    fcntl.flock(fd, fcntl.LOCK_UN)
    raise StoreLockedError(f"{store} is open in another program that holds a read lock on it "
                           f"(HDF5 locks the files it opens): close it there, or open it there "
                           f"with locking=False or HDF5_USE_FILE_LOCKING=FALSE")


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


_HELD: "weakref.WeakSet[WriterLock]" = weakref.WeakSet()


def _release_in_child() -> None:
    for lock in list(_HELD):
        lock._forget_in_child()
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_release_in_child)


def loaded_library(fragment: str) -> str | None:
    """Path of a mapped shared library whose file name starts with `fragment` (Linux only)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if os.path.basename(path).startswith(fragment):
                    return path
    except OSError:
        pass
    return None
