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
   deleted or replaced. Without flock (no fcntl module: Windows) the lock is a file created with
   O_EXCL (`<store>/tokstore.writer`, or `<file>.writer` beside an HDF5 store) holding the
   writer's pid, deleted on release; a killed writer leaves it, and the next writer is refused
   with a message naming the file to delete.
 - `pread` / `pwrite_all`: positioned reads and writes; emulated with lseek where os lacks them.
 - `map_file` / `map_side_by_side`: read-only copy-on-write maps of store files (see chunks.py).
   Through libc (ctypes) on Linux, so that no descriptor stays open per map and the chunk files
   of an offset array can be mapped end to end (MAP_FIXED); elsewhere Python's mmap, and offset
   arrays are copied: both fallbacks warn once per process (PlatformFallbackWarning).
 - `loaded_function`: a C function of a shared library this process has mapped (Linux /proc +
   ctypes), for the one HDF5 setting h5py does not expose; None elsewhere.
 - `set_parent_death_signal` / `lock_holding_descriptors`: for a build's forked loader workers
   (tokstore/lifetime.py): prctl(PR_SET_PDEATHSIG) through libc, and the descriptors that hold a
   file lock as /proc/self/fdinfo lists them; False / None where the platform lacks them (the
   caller then watches its parent from a thread, and has no inherited flock to close).

This is the only module of tokstore that touches fcntl, ctypes, /proc or positioned I/O. What the
platform offers is decided once, at import, in the HAVE_* flags; TOKSTORE_PORTABLE=1 in the
environment turns them all off, so the tests run the fallbacks on Linux.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import importlib
import mmap
import os
import sys
import uuid
import shutil
import stat
import warnings
import weakref
from pathlib import Path

import numpy as np

from .errors import StoreCorruptError, StoreError, StoreLockedError


class PlatformFallbackWarning(RuntimeWarning):
    """This platform lacks a call the store uses; a fallback that costs memory, descriptors or
    robustness is used instead (each kind is reported once per process)."""


PORTABLE = os.environ.get("TOKSTORE_PORTABLE", "") not in ("", "0")


def _optional(module: str):
    if PORTABLE:
        return None
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


fcntl = _optional("fcntl")      # None on Windows
ctypes = _optional("ctypes")    # None on some embedded builds
HAVE_FLOCK = fcntl is not None
HAVE_PREAD = not PORTABLE and hasattr(os, "pread") and hasattr(os, "pwrite")
HAVE_PROC_MAPS = not PORTABLE and os.path.exists("/proc/self/maps")
HAVE_PROC_FDINFO = not PORTABLE and os.path.isdir("/proc/self/fdinfo")
O_BINARY = getattr(os, "O_BINARY", 0)  # Windows opens descriptors in text mode otherwise
_WARNED: set[str] = set()  # the kinds of fallback already reported in this process


def warn_fallback(kind: str, message: str, category: type = PlatformFallbackWarning) -> None:
    """Warn about a fallback, once per process and kind (the store's own fallbacks, which are
    not the platform's, pass StoreFallbackWarning and a kind naming the store)."""
    if kind not in _WARNED:
        _WARNED.add(kind)
        warnings.warn(message, category, stacklevel=3)

# errno values meaning "this file system cannot do that here", not "it failed"
UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.ENOLCK,
               errno.EISDIR, errno.EACCES, errno.EPERM}


def sync_file(path) -> None:
    """fsync a file by path (its data and size are on disk when this returns)."""
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # _commit needs write
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


def disk_bytes(info: os.stat_result) -> int:
    """The disk a file takes, from its stat: its blocks where the platform counts them (a hole
    takes none), else its length (Windows)."""
    blocks = getattr(info, "st_blocks", None)  # 512-byte units, whatever the block size
    return info.st_size if blocks is None else blocks * 512


def temp_name(target: Path) -> Path:
    """A fresh name beside target (same directory, so the rename stays on one file system)."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")


def replace_file(target: Path, data: bytes, durable: bool = True,
                 temporary: Path | None = None, size: int = 0) -> None:
    """Atomically replace target's content: readers see the old or the new file. durable: the
    file and its directory synced too (else a later commit syncs them); temporary: the name
    written first (default temp_name(target)); size: the file's length where longer than
    `data`, zeros after it (a hole where the file system makes one: nothing written)."""
    target = Path(target)
    temporary = temporary or temp_name(target)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_BINARY, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if size > len(data):
                os.ftruncate(fd, size)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        sync_dir(target.parent)


def _creating_prefix(target: Path) -> str:
    return f".{target.name[:100]}.creating-"  # short enough beside any name that fits


def creation_path(target: Path) -> Path:
    """Where a new store is built before it is renamed to `target` (see remove_abandoned)."""
    return target.with_name(f"{_creating_prefix(target)}{uuid.uuid4().hex[:16]}")


def claim_creation_path(target: Path, store: str, make, undo, fallback_name: str | None = None,
                        tries: int = 8):
    """(path, what make(path) returned, its WriterLock): a new creation path for `target`, made
    and locked. Another process creating the same store clears unlocked leftovers beside it
    (remove_abandoned) and may clear this one between `make` and the lock: `undo(made)`, then a
    fresh path. `fallback_name`: the lock file inside a directory that refuses flock."""
    for _ in range(tries):
        path = creation_path(target)
        made = make(path)
        try:
            lock = WriterLock.acquire(path, store, path / fallback_name if fallback_name else None)
        except BaseException as exc:
            undo(made)
            if isinstance(exc, StoreLockedError) or (
                    isinstance(exc, (OSError, StoreError)) and not os.path.lexists(path)):
                continue  # another creator is clearing it, or has: a fresh path
            with contextlib.suppress(OSError):  # any other failure: nothing of it left
                _delete(path)
            raise
        if os.path.lexists(path):  # (without flock, a lock file beside a cleared path is taken)
            return path, made, lock
        lock.release()
        undo(made)
    raise StoreError(f"{store}: cannot start creating it: other processes creating it at the "
                     f"same time cleared {tries} new files in turn")


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
    """Delete what killed creations (and overwrites) of `target` left beside it; one still
    locked is another process creating the store (or discarding the one it replaces) right now,
    and is left alone."""
    for leftover in target.parent.glob(f"{glob.escape(_creating_prefix(target))}*"):
        if leftover.name.endswith(EXCLUSIVE_SUFFIX):
            continue  # the lock file of one (see WriterLock): goes with it
        try:
            lock = WriterLock.acquire(leftover, str(leftover))
        except (StoreError, OSError):
            continue
        try:
            _delete(leftover)
        finally:
            lock.release()


def _delete(path: Path) -> None:
    """A directory with what it holds, or a file (a link itself, not what it points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def discard_store(target: Path, store: str, fallback_file=None) -> None:
    """Delete the store at `target` (a file or a directory) that a new one replaces: refused
    (StoreLockedError) while another process writes it; first moved aside under a creation name
    in one rename, so that a process dying half-way through the deletion leaves the path empty
    (never a store missing half its files) and a leftover that remove_abandoned clears."""
    lock = WriterLock.acquire(target, store, fallback_file)
    doomed = creation_path(target)
    try:
        os.rename(target, doomed)
        lock.moved_to(target, doomed)
    finally:  # moved aside, no one writes it: without flock, a lock file left by a death here
        lock.release()  # would keep remove_abandoned from ever clearing it
    with contextlib.suppress(FileNotFoundError):  # another creator may be clearing it too
        _delete(doomed)


EXCLUSIVE_FILE = "tokstore.writer"   # the lock file without flock, in a store directory
EXCLUSIVE_SUFFIX = ".writer"         # ... and beside a store file


class WriterLock:
    """An exclusive lock on a store (see the module docstring)."""

    def __init__(self, fd: int | None, locked: Path, store: str, watched: bool,
                 exclusive: bool = False):
        self._fd, self._locked, self._store, self._watched = fd, locked, store, watched
        self._exclusive = exclusive  # an O_EXCL lock file, deleted on release
        self._identity = _identity(os.fstat(fd)) if fd is not None else None
        if fd is not None:
            _HELD.add(self)

    @classmethod
    def acquire(cls, target, store: str, fallback_file=None) -> "WriterLock":
        """Lock `target` (a store's file or directory); `fallback_file` is locked instead where
        the file system refuses flock on the directory. StoreLockedError if another process
        holds it."""
        target = Path(target)
        if not HAVE_FLOCK:
            return cls._create_exclusive(_exclusive_path(target), store)
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

    @classmethod
    def _create_exclusive(cls, path: Path, store: str) -> "WriterLock":
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_BINARY
                         | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileExistsError:
            try:
                holder = path.read_text(errors="replace").strip()[:40]
            except OSError:
                holder = "?"
            raise StoreLockedError(
                f"{store} is open for writing by another process (pid {holder}, lock file "
                f"{path}); if no tokstore process is writing it (one was killed), delete "
                f"{path}") from None
        except OSError as exc:
            raise StoreError(f"{store}: cannot create the lock file {path}: {exc.strerror}"
                             ) from None
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return cls(fd, path, store, watched=True, exclusive=True)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def check(self) -> None:
        """Raise StoreLockedError unless this process still owns the lock on what is at the path:
        a lock file deleted (or replaced) under a writer has let a second writer in."""
        if self._identity is None:
            if self._locked is not None:
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
        if self._locked is None:
            return
        old, new, locked = Path(old), Path(new), Path(self._locked)
        if locked.parent == old.parent and locked.name == old.name + EXCLUSIVE_SUFFIX:
            moved = _exclusive_path(new)  # beside the file: linked to the new name, never
            try:                          # over another writer's lock file
                move_into_place(locked, moved)
            except FileExistsError:
                raise StoreLockedError(f"{self._store} was opened for writing by another "
                                       f"process as it was created") from None
            self._locked = moved
        else:
            self._locked = new / locked.relative_to(old)

    def release(self) -> None:
        if self._fd is not None:
            _HELD.discard(self)
            ours = False
            if self._exclusive:  # delete the lock file, unless someone replaced it
                try:
                    ours = _identity(os.stat(self._locked)) == self._identity
                except OSError:
                    pass
            os.close(self._fd)  # closing the last descriptor of the description unlocks
            self._fd = None
            if ours:
                Path(self._locked).unlink(missing_ok=True)
        self._locked = None

    def _forget_in_child(self) -> None:
        os.close(self._fd)  # the parent's lock: the child must not keep it alive
        self._fd, self._identity = None, None


def _exclusive_path(target: Path) -> Path:
    if target.is_dir():
        return target / EXCLUSIVE_FILE
    return target.with_name(target.name + EXCLUSIVE_SUFFIX)


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


# ---- positioned I/O -----------------------------------------------------------------------

def pread(fd: int, size: int, offset: int) -> bytes:
    """Up to `size` bytes at `offset` (fewer only at the end of the file). The emulation moves
    the descriptor's position: only for descriptors one thread uses."""
    if HAVE_PREAD:
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    parts, left = [], size
    while left > 0:
        part = os.read(fd, left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """All of `data` at `offset`."""
    view = memoryview(data)
    if not HAVE_PREAD:
        os.lseek(fd, offset, os.SEEK_SET)
    while view:
        written = os.pwrite(fd, view, offset) if HAVE_PREAD else os.write(fd, view)
        view, offset = view[written:], offset + written


# ---- memory maps ---------------------------------------------------------------------------

def open_chunk(path: str) -> int:
    """A read-only descriptor of a regular file: a FIFO put in a chunk's place must not block the
    reader, and a directory or device is damage (StoreCorruptError naming it)."""
    fd = os.open(path, os.O_RDONLY | O_BINARY | getattr(os, "O_NONBLOCK", 0)
                 | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreCorruptError(f"{path} is not a regular file")
    return fd


def map_file(path: str) -> np.ndarray | None:
    """A whole file memory-mapped as uint8 (None when empty).

    Python's mmap keeps a duplicate file descriptor per map (until 3.13), and a store has a
    chunk file per 512 KiB: a reader touching them all would exceed the usual 1024-descriptor
    limit. So on Linux the map is made through libc and the descriptor closed at once. The map
    is private copy-on-write: pages come from the page cache, and a stray write cannot reach the
    file.
    """
    fd = open_chunk(path)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        if _libc is None:
            return _map_with_python(fd, size)
        address = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
    finally:
        os.close(fd)
    if address in (None, _MAP_FAILED):
        error = ctypes.get_errno()
        raise OSError(error, f"cannot map {path}: {os.strerror(error)}")
    buffer = (ctypes.c_ubyte * size).from_address(address)
    weakref.finalize(buffer, _libc.munmap, address, size)  # unmapped with its last view
    return np.frombuffer(buffer, dtype=np.uint8)


def _map_with_python(fd: int, size: int) -> np.ndarray:
    if sys.version_info >= (3, 13):
        mapped = mmap.mmap(fd, size, access=mmap.ACCESS_COPY, trackfd=False)
    else:
        warn_fallback("map_file", "tokstore: memory maps through Python's mmap, which keeps one "
                                  "file descriptor open per mapped chunk file (a reader touching "
                                  "many chunks may reach the descriptor limit: ulimit -n)")
        mapped = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
    return np.frombuffer(mapped, dtype=np.uint8)  # unmapped with its last view


def map_side_by_side(paths: list[str], size: int) -> np.ndarray | None:
    """Files of `size` bytes each mapped end to end in one address range, as uint8.

    Returns None (the caller copies instead) off Linux, when `size` is not a multiple of the page
    size, or when any file cannot be mapped or is not `size` bytes (the copy path names the
    damage). The range is reserved inaccessible first, then each file is mapped over its slot;
    like `map_file`, each map is private copy-on-write, and no descriptor stays open. Every
    copy but the damaged-file one warns (once): the copy is private to each process.
    """
    span = len(paths) * size
    if span == 0:
        return None
    copied = ("tokstore: offset arrays are copied into each process that reads them (DataLoader "
              "workers, DDP ranks) instead of shared through the page cache: ")
    if _libc is None:
        warn_fallback("side_by_side", copied + "this platform has no libc mmap with MAP_FIXED")
        return None
    if size % mmap.PAGESIZE:
        warn_fallback("side_by_side_pages", copied + f"chunks of {size} bytes are not a multiple "
                                                     f"of the page size {mmap.PAGESIZE}")
        return None
    address = _libc.mmap(None, span, _PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                         | _MAP_NORESERVE, -1, 0)
    if address in (None, _MAP_FAILED):
        warn_fallback("side_by_side_reserve", copied + f"cannot reserve {span} bytes of "
                                                       f"address space")
        return None
    try:
        for k, path in enumerate(paths):
            fd = open_chunk(path)
            try:
                if os.fstat(fd).st_size != size:
                    raise _WrongSize(f"{path} is not {size} bytes")
                slot = address + k * size
                mapped = _libc.mmap(slot, size, mmap.PROT_READ | mmap.PROT_WRITE,
                                    mmap.MAP_PRIVATE | _MAP_FIXED, fd, 0)
            finally:
                os.close(fd)
            if mapped != slot:
                raise OSError(ctypes.get_errno(), f"cannot map {path}")
    except (OSError, StoreCorruptError) as exc:  # the copy path then names the damage
        _libc.munmap(address, span)
        if not isinstance(exc, (_WrongSize, FileNotFoundError, StoreCorruptError)):  # the platform
            warn_fallback("side_by_side_map", copied + str(exc))
        return None
    buffer = (ctypes.c_ubyte * span).from_address(address)
    weakref.finalize(buffer, _libc.munmap, address, span)  # unmapped with its last view
    return np.frombuffer(buffer, dtype=np.uint8)


class _WrongSize(OSError):
    """A chunk file of another size than its neighbours: damage for the copy path to name."""


def _load_libc():
    """libc's mmap and munmap, on Linux only (MAP_FIXED and MAP_NORESERVE below are Linux's)."""
    if ctypes is None or sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_int64)
        libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()
HAVE_LIBC_MMAP = _libc is not None
_MAP_FAILED = ctypes.c_void_p(-1).value if ctypes is not None else None
_PROT_NONE, _MAP_FIXED, _MAP_NORESERVE = 0, 0x10, 0x4000  # Linux values, not in Python's mmap


# ---- processes -----------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def set_parent_death_signal(sig: int) -> bool:
    """Have the kernel send `sig` to this process when its parent ends (Linux prctl
    PR_SET_PDEATHSIG, through the libc already loaded: no library search); False where it
    cannot."""
    if _libc is None:
        return False
    try:
        return _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except AttributeError:
        return False


def lock_holding_descriptors() -> list[int] | None:
    """This process's descriptors that hold a file lock (flock or OFD lock), as
    /proc/self/fdinfo lists them; None where there is no such listing."""
    if not HAVE_PROC_FDINFO:
        return None
    try:
        names = os.listdir("/proc/self/fdinfo")
    except OSError:
        return None
    held = []
    for name in names:
        try:
            info = Path(f"/proc/self/fdinfo/{name}").read_text()
        except OSError:  # the listing's own descriptor, already closed
            continue
        if any(line.startswith("lock:") for line in info.splitlines()):
            held.append(int(name))
    return held


# ---- shared libraries ----------------------------------------------------------------------

def loaded_library(fragment: str) -> str | None:
    """Path of a mapped shared library whose file name starts with `fragment` (Linux only)."""
    if not HAVE_PROC_MAPS:
        return None
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if os.path.basename(path).startswith(fragment):
                    return path
    except OSError:
        pass
    return None


def loaded_function(fragments: tuple[str, ...], name: str, argtypes: tuple, restype):
    """C function `name` of the first mapped library matching one of `fragments`, typed with
    ctypes type names (e.g. ("c_int64", "c_uint"), "c_int"); None where it cannot be found."""
    if ctypes is None:
        return None
    library = next(filter(None, map(loaded_library, fragments)), None)
    if library is None:
        return None
    try:
        function = getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = tuple(getattr(ctypes, t) for t in argtypes)
    function.restype = getattr(ctypes, restype)
    return function
