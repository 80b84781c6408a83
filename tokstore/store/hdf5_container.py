"""The HDF5 container: one file, written in SWMR mode, commit record in the userblock.

Why this shape:
 - HDF5 keeps metadata in a cache and writes it at flush time; a writer killed mid-flush can leave
   an unreadable file. In SWMR (single-writer/multiple-reader) mode HDF5 orders its metadata
   writes so that the file on disk is consistent at every instant -- for concurrent readers and
   equally after a SIGKILL. SWMR needs `libver="latest"` and forbids new objects/attributes once
   on, so everything is created first and the commit record is kept outside HDF5's structures.
 - The commit record lives in the userblock, the first USERBLOCK bytes that HDF5 reserves for the
   user and never touches: two slots written alternately with plain `pwrite`, each framed with a
   sequence number and a crc32, so a torn record write leaves the other slot valid.
 - A SWMR writer releases HDF5's file lock, and a killed one leaves the superblock flagged "open
   for write", which HDF5 refuses to reopen. So writers hold their own `flock` on the file, and a
   writer that gets the lock knows the flags are stale and clears them (what `h5clear -s`
   does: flags to 0, end-of-file address to at least the file size, superblock checksum redone);
   a file a full disk left shorter than its end-of-file address is extended with zeros to it.
 - A reopened store is opened straight into SWMR-write mode (no r+ moment a kill could leave
   flagged "open for write, not SWMR", which no reader opens), so it is not truncated: SWMR
   cannot shrink a dataset, and data past the commit is invisible until overwritten.
 - Writes go through dataset handles kept open: a temporary h5py object closed by the garbage
   collector reports a failed write only as "Exception ignored", so a full disk went unnoticed
   and the commit record named chunks never written. Every HDF5 error now raises
   StoreWriteError (errno from HDF5's message), the file is closed at once, and nothing more is
   written: the store stays at its last commit.
 - Readers open as SWMR readers without HDF5's locking and read the record *before* HDF5's
   metadata, so every committed chunk is indexed. SWMR readers retry metadata that fails its
   checksum (HDF5: 100 times, with back-off that makes a truncated file hang for hours): here
   READ_ATTEMPTS. Chunk byte offsets are looked up once per array, and raw chunks are
   memory-mapped there: reads make no HDF5 call (also none in forked workers). A contiguous
   dataset (a repacked copy) is one range of that map, so its whole offset array is shared
   through the page cache; the chunks of a chunked one lie apart in the file, so `read_all()`
   of a chunked offset array is a copy in each process (HDF5 stores as written).
 - A new store is written to a temporary file beside its path and renamed into place after its
   first commit, in SWMR mode: a build killed while creating leaves no half store.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

from . import oscalls
from .chunks import ChunkedArray, map_file, write_growing
from .errors import (AFTER_COMMIT_POINT, NotAStoreError, StoreCorruptError, StoreError,
                     StoreFallbackWarning, StoreWriteError, refused_after_failure)
from .format import Record, chunk_length

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
USERBLOCK = 1 << 20
SLOT_SIZE = USERBLOCK // 2
SLOT_MAGIC = b"TOKSTORE"
SLOT_HEADER = struct.Struct("<8sQII")  # magic, sequence number, payload length, payload crc32


def superblock_position(fd: int) -> int | None:
    """HDF5 looks for its superblock at 0, 512, 1024, 2048, ... (after any userblock)."""
    size = os.fstat(fd).st_size
    position = 0
    while position + 8 <= size:
        if oscalls.pread(fd, 8, position) == HDF5_SIGNATURE:
            return position
        position = 512 if position == 0 else position * 2
    return None


READ_ATTEMPTS = 25  # HDF5's SWMR default of 100, with exponential back-off, takes hours


class HDF5Container:
    backend = "hdf5"

    def __init__(self, path: str, file, fd: int, writable: bool, sequence: int, lock=None,
                 creating: Path | None = None):
        self.path, self.writable = path, writable
        self._file, self._fd, self._sequence, self._lock = file, fd, sequence, lock
        self._creating = creating  # the temporary file while the store is being created
        self._datasets: dict = {}  # kept open: a dataset closed by the collector hides errors
        self._map = None
        self._failed: str | None = None  # an earlier write failed: nothing more is written

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, record: Record, dtypes: dict, chunk_bytes: int,
               overwrite: bool) -> "HDF5Container":
        target = Path(path)
        try:
            if target.is_dir():
                raise StoreError(f"{path} is a directory: an HDF5 store is one file")
            if target.exists():
                if not overwrite:
                    raise StoreError(f"{path} already exists (not replacing it: "
                                     f"TokenStore.create(..., overwrite=True) does)")
                if target.is_dir() or not _is_store_file(target):
                    raise StoreError(f"{path} exists and is not a tokstore HDF5 store: "
                                     f"not overwriting it")
                oscalls.discard_store(target, path)
            target.parent.mkdir(parents=True, exist_ok=True)
            oscalls.remove_abandoned(target)
            temporary, fd, lock = oscalls.claim_creation_path(
                target, path, undo=os.close, make=lambda new: os.open(
                    new, os.O_RDWR | os.O_CREAT | os.O_EXCL | oscalls.O_BINARY, 0o644))
        except OSError as exc:
            raise StoreWriteError.from_os_error(path, "creating the store", exc) from None
        self = cls(path, None, fd, writable=True, sequence=0, lock=lock, creating=temporary)
        try:
            self._file = _create_file(temporary, record, dtypes, chunk_bytes)
        except (OSError, RuntimeError) as exc:
            self.close()
            raise self._failure("creating the store", exc) from None
        except BaseException:
            self.close()
            raise
        return self

    @classmethod
    def open(cls, path: str, writable: bool, rollback: bool = False
             ) -> tuple["HDF5Container", Record]:
        try:
            fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | oscalls.O_BINARY)
        except OSError as exc:  # a read-only mount, a read-only file
            if not writable or isinstance(exc, FileNotFoundError):
                raise
            raise StoreWriteError.from_os_error(path, "opening for writing", exc) from None
        lock = None
        try:
            position = superblock_position(fd)
            if position is None:
                raise NotAStoreError(f"{path} is not a tokstore store (neither a Zarr directory "
                                     f"nor an HDF5 file)")
            if position != USERBLOCK:
                raise NotAStoreError(f"{path} is an HDF5 file but not a tokstore store")
            if writable:
                lock = oscalls.WriterLock.acquire(path, path)
                _clear_stale_write_flags(fd, position, path)
            record, sequence = _read_record(fd, path, rollback)  # before HDF5's metadata
            file = _open_file(path, writable)
        except BaseException:
            os.close(fd)
            if lock is not None:
                lock.release()
            raise
        return cls(path, file, fd, writable, sequence, lock), record

    def start_writing(self):
        """Enter SWMR mode (a new store; a reopened one is opened in it)."""
        if not self._file.swmr_mode:
            self._file.swmr_mode = True

    def publish(self):
        """Move a new store into place once its first commit is on disk: a build killed while
        creating leaves only a temporary file, which the next create removes."""
        if self._creating is None:
            return
        try:
            oscalls.move_into_place(self._creating, Path(self.path))
        except FileExistsError:
            raise StoreError(f"{self.path} already exists: another process created it "
                             f"meanwhile") from None
        except OSError as exc:
            raise self._failure("creating the store", exc) from None
        self._lock.moved_to(self._creating, self.path)
        self._creating = None
        try:
            oscalls.sync_dir(Path(self.path).parent)
        except OSError as exc:
            raise self._failure("creating the store", exc) from None

    # ---- reading -------------------------------------------------------------------------
    def _dataset(self, name: str):
        if name not in self._datasets:
            if self._file is None:
                raise StoreError(f"{self.path} is closed" + (f" after a failed write "
                                                             f"({self._failed})" if self._failed
                                                             else ""))
            try:
                self._datasets[name] = self._file[name]
            except KeyError as exc:
                reason = str(exc).strip("'\"").splitlines()[0]
                if "doesn't exist" in reason or "does not exist" in reason:
                    raise StoreCorruptError(f"{self.path}: array {name} is missing") from None
                raise StoreCorruptError(f"{self.path}: damaged HDF5 file: cannot open array "
                                        f"{name}: {reason}") from None
        return self._datasets[name]

    def array(self, name: str, dtype: np.dtype, length: int) -> ChunkedArray:
        dataset = self._dataset(name)
        if dataset.dtype != dtype or dataset.ndim != 1 or dataset.shape[0] < length:
            raise StoreCorruptError(f"{self.path}: {name}: HDF5 dataset is {dataset.dtype}"
                                    f"{list(dataset.shape)}, "
                                    f"the commit needs {dtype.name}[{length}]")
        if dataset.chunks is None:  # contiguous (a repacked copy): one range of the file
            offset = dataset.id.get_offset()
            if offset is None or length == 0:  # nothing allocated (or external): through h5py
                return ChunkedArray(name, dtype, length, max(length, 1),
                                    lambda k: dataset[:length], mapped=False)
            return ChunkedArray(name, dtype, length, length,
                                lambda k: self._file_range(offset, length * dtype.itemsize,
                                                           name).view(dtype), mapped=True)
        chunk_len = dataset.chunks[0]
        if dataset.id.get_create_plist().get_nfilters():  # compressed copy: read through h5py
            oscalls.warn_fallback(f"hdf5_filters:{self.path}",
                                  f"tokstore: {self.path}: array {name} is compressed (or "
                                  f"filtered): it is read through h5py, a chunk at a time, and "
                                  f"copied into each process", StoreFallbackWarning)
            return ChunkedArray(name, dtype, length, chunk_len,
                                lambda k: dataset[k * chunk_len:(k + 1) * chunk_len], mapped=False)
        nbytes = chunk_len * dtype.itemsize
        where: dict[int, int] = {}  # chunk -> byte offset, all found now: no HDF5 call per read
        try:
            dataset.id.chunk_iter(lambda info: where.__setitem__(info.chunk_offset[0] // chunk_len,
                                                                 info.byte_offset))
        except (OSError, RuntimeError) as exc:  # a damaged chunk index (checksum, truncation)
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreCorruptError(f"{self.path}: damaged HDF5 file: cannot index the chunks "
                                    f"of {name}: {reason}") from None

        def load(k: int) -> np.ndarray:
            offset = where.get(k)
            if offset is None:
                raise StoreCorruptError(f"{self.path}: {name}: chunk {k} is missing from the "
                                        f"HDF5 file")
            return self._file_range(offset, nbytes, f"chunk {k} of {name}").view(dtype)

        return ChunkedArray(name, dtype, length, chunk_len, load, mapped=True)

    def _file_range(self, offset: int, nbytes: int, what: str) -> np.ndarray:
        """Bytes [offset, offset + nbytes) of the file: a view of one read-only map of it, which
        every process reading the store shares through the page cache."""
        if self._map is None or offset + nbytes > len(self._map):
            self._map = map_file(self.path)  # the file grew since the last map
        if self._map is None or offset + nbytes > len(self._map):
            raise StoreCorruptError(f"{self.path}: damaged HDF5 file: {what} lies past the end "
                                    f"of the file")
        return self._map[offset:offset + nbytes]

    def chunk_location(self, name: str, k: int) -> tuple[int, int]:
        """(byte offset, size) of chunk k in the file: for tests that damage a chunk."""
        dataset = self._dataset(name)
        info = dataset.id.get_chunk_info_by_coord((k * dataset.chunks[0],))
        return info.byte_offset, info.size

    # ---- writing -------------------------------------------------------------------------
    def write(self, name: str, start: int, values: np.ndarray):
        self._check_writable()
        try:
            write_growing(self._dataset(name), start, values)
        except (OSError, RuntimeError) as exc:
            raise self._failure(f"writing {name}", exc) from None

    def truncate(self, name: str, length: int):
        """Nothing to do: SWMR mode cannot shrink a dataset, and a reopened store is opened in
        it (so that no moment leaves a file only a writer can open). Data past the commit is
        invisible, and the next appends overwrite it."""

    def write_record(self, record: Record):
        """Flush data and HDF5 metadata; the record's payload into the older slot; fsync; the
        slot's header (the commit point); fsync. A record torn by a crash keeps its older header,
        so it reads as the older slot's damage, never as a damaged newest commit."""
        self._check_writable()
        payload = json.dumps(record.to_dict(), separators=(",", ":")).encode()
        if SLOT_HEADER.size + len(payload) > SLOT_SIZE:
            raise StoreError(f"{self.path}: the commit record is {len(payload)} bytes, over the "
                             f"HDF5 limit of {SLOT_SIZE - SLOT_HEADER.size}: keep meta smaller")
        if self._lock is not None:
            self._lock.check()
        sequence = self._sequence + 1
        slot = (sequence % 2) * SLOT_SIZE
        header = SLOT_HEADER.pack(SLOT_MAGIC, sequence, len(payload), zlib.crc32(payload))
        try:
            self._file.flush()
        except (OSError, RuntimeError) as exc:
            raise self._failure("writing data before the commit", exc) from None
        try:
            oscalls.pwrite_all(self._fd, payload, slot + SLOT_HEADER.size)
            os.fsync(self._fd)
            oscalls.pwrite_all(self._fd, header, slot)
        except OSError as exc:
            raise self._failure("writing the commit record", exc) from None
        self._sequence = sequence  # past the commit point: a reopen may find this record
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise self._failure(AFTER_COMMIT_POINT, exc) from None

    def _check_writable(self):
        if self._failed is not None:
            raise refused_after_failure(self.path, self._failed)

    def _failure(self, action: str, exc: Exception) -> StoreWriteError:
        """A precise error for an HDF5 or OS failure; nothing more is written after it."""
        text = str(exc)
        number = getattr(exc, "errno", None)
        found = re.search(r"errno = (\d+)", text)
        if found:
            number = int(found.group(1))
        detail = re.search(r"error message = '([^']*)'", text)
        reason = detail.group(1) if detail else (exc.strerror if isinstance(exc, OSError)
                                                 and exc.strerror else text.splitlines()[0])
        error = StoreWriteError(self.path, action, number, reason)
        self._failed = str(error)
        self._discard_writes()
        self._close_file()  # now, so that no h5py object retries the write when collected
        return error

    def _discard_writes(self):
        """Point HDF5's own descriptor at /dev/null. Closing objects whose writes failed makes
        HDF5 retry them, and a second failure while a dataset closes leaves it half destroyed:
        the file's close then crashes (SIGSEGV in H5D__flush_all_cb). Nothing after a failure
        counts anyway: the last commit is what the store holds."""
        try:
            handle = self._file.id.get_vfd_handle() if self._file is not None else None
        except (OSError, RuntimeError, ValueError):
            return
        if not isinstance(handle, int) or handle < 0:
            return
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            os.dup2(null, handle, inheritable=False)
        finally:
            os.close(null)

    def _close_file(self):
        file, datasets, self._file, self._datasets = self._file, self._datasets, None, {}
        try:
            with _quiet_if(self._failed is not None):
                datasets.clear()  # each dataset closed here retries its failed write
                if file is not None:
                    file.close()  # closes every other object of the file too
        except (OSError, RuntimeError) as exc:
            if self._failed is None:
                raise self._failure("closing", exc) from None

    def close(self):
        try:
            self._close_file()
        finally:
            self._map = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock is not None:
                self._lock.release()
            if self._creating is not None:
                self._creating.unlink(missing_ok=True)
                self._creating = None


@contextlib.contextmanager
def _quiet_if(failed: bool):
    """After a failed write, h5py reports the same failure again from every object it closes,
    (Cython prints it through sys.excepthook, then sys.unraisablehook, "Exception ignored in
    ..."): the error already raised says it."""
    if not failed:
        yield
        return
    hooks = sys.excepthook, sys.unraisablehook
    sys.excepthook, sys.unraisablehook = (lambda *args: None), (lambda unraisable: None)
    try:
        yield
    finally:
        sys.excepthook, sys.unraisablehook = hooks


def _create_file(path: Path, record: Record, dtypes: dict, chunk_bytes: int):
    import h5py

    file = h5py.File(path, "w", libver="latest", userblock_size=USERBLOCK, locking=False)
    for name, dtype in dtypes.items():
        if name == "counts":  # fixed size, two slots of one chunk each
            file.create_dataset(name, shape=(2 * record.counts_length,), dtype=dtype,
                                chunks=(record.counts_length,), fillvalue=0)
        else:
            file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                chunks=(chunk_length(dtype, chunk_bytes),), fillvalue=0)
    for key, value in record.to_dict().items():  # static facts, for h5dump and friends
        if isinstance(value, int):
            file.attrs[key] = np.int64(value)
        elif isinstance(value, str):
            file.attrs[key] = np.bytes_(value.encode())  # fixed-length, not vlen
    return file


def _open_file(path: str, writable: bool):
    """The file in SWMR mode: a writer as SWMR writer from the first moment, readers as SWMR
    readers that give up on damaged metadata after READ_ATTEMPTS tries."""
    import h5py
    from h5py import h5f, h5p

    fapl = h5p.create(h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5f.LIBVER_LATEST, h5f.LIBVER_LATEST)
    fapl.set_file_locking(False, ignore_when_disabled=False)
    _limit_read_attempts(fapl)
    flags = (h5f.ACC_RDWR | h5f.ACC_SWMR_WRITE) if writable else (h5f.ACC_RDONLY
                                                                    | h5f.ACC_SWMR_READ)
    try:
        return h5py.File(h5f.open(os.fsencode(path), flags, fapl=fapl))
    except (OSError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0]
        if "already open for write" in reason:
            raise StoreError(f"{path} is open for writing by an HDF5 program other than "
                             f"tokstore (or one died): close it, or clear the flag with "
                             f"h5clear -s") from None
        raise StoreCorruptError(f"{path}: damaged HDF5 file: {reason}") from None


def _limit_read_attempts(fapl) -> None:
    """H5Pset_metadata_read_attempts, which h5py does not wrap: called in the libhdf5 h5py
    loaded. Where that library cannot be found, HDF5's default applies (a warning)."""
    function = _read_attempts_setter()
    if function is not None:
        function(fapl.id, READ_ATTEMPTS)


@functools.lru_cache(maxsize=None)
def _read_attempts_setter():
    function = oscalls.loaded_function(("libhdf5-", "libhdf5.", "libhdf5_serial."),
                                       "H5Pset_metadata_read_attempts",
                                       ("c_int64", "c_uint"), "c_int")
    if function is None:
        oscalls.warn_fallback("hdf5_read_attempts",
                              "tokstore: cannot reach libhdf5's H5Pset_metadata_read_attempts "
                              "here: a damaged or truncated HDF5 store is reported only after "
                              "HDF5's default of 100 retries with back-off (which can take "
                              "very long)")
    return function


def _is_store_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return superblock_position(f.fileno()) == USERBLOCK


def _read_record(fd: int, path: str, rollback: bool = False) -> tuple[Record, int]:
    """The newest slot, and its sequence number. Never a quiet rollback: a damaged slot that is,
    or may be, newer than the intact one is an error (a crash mid-commit cannot make one, see
    write_record) unless `rollback` asks for the intact one; a damaged slot known to be older is
    left for the next commit to overwrite."""
    valid, damaged = [], []  # (sequence, payload); damaged: sequence or None when unreadable
    for slot in range(2):
        header = oscalls.pread(fd, SLOT_HEADER.size, slot * SLOT_SIZE)
        if len(header) < SLOT_HEADER.size:
            raise StoreCorruptError(f"{path}: damaged file: it ends inside the userblock")
        magic, sequence, length, crc = SLOT_HEADER.unpack(header)
        if magic != SLOT_MAGIC:
            if header != bytes(SLOT_HEADER.size):
                damaged.append(None)
            continue
        payload = oscalls.pread(fd, min(length, SLOT_SIZE), slot * SLOT_SIZE + SLOT_HEADER.size)
        if len(payload) != length or zlib.crc32(payload) != crc:
            damaged.append(sequence)
            continue
        valid.append((sequence, payload))
    if not valid:
        if damaged:
            raise StoreCorruptError(f"{path}: damaged commit records: both slots in the "
                                    f"userblock fail their checksum")
        raise NotAStoreError(f"{path} is not a tokstore store (empty userblock)")
    sequence, payload = max(valid)
    if not rollback and any(other is None or other > sequence for other in damaged):
        raise StoreCorruptError(
            f"{path}: damaged newest commit record (it fails its checksum); the previous "
            f"commit is intact but is not used silently: restore the file from a copy, or go "
            f"back to the previous commit with TokenStore.open(path, rollback=True)")
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreCorruptError(f"{path}: damaged commit record: {exc}") from None
    return Record.from_dict(raw, path), sequence


# ---- clearing a killed writer's superblock flags -------------------------------------------
SUPERBLOCK = struct.Struct("<8sBBBBQQQQI")  # v2/v3: sig, version, sizes, flags, 4 addresses, crc


def _clear_stale_write_flags(fd: int, position: int, path: str):
    """We hold the writer lock, so 'open for write' flags are left over from a dead writer; and
    an end-of-file address past the file's end is space HDF5 allocated but could not write (a
    full disk): the file is extended with zeros to it, as HDF5 requires of a file it writes.
    Committed data never lies there: a commit flushes and fsyncs before its record."""
    raw = oscalls.pread(fd, SUPERBLOCK.size, position)
    if len(raw) < SUPERBLOCK.size:
        raise StoreCorruptError(f"{path}: damaged HDF5 file: it ends inside the superblock")
    sig, version, offsets, lengths, flags, base, extension, eof, root, crc = SUPERBLOCK.unpack(raw)
    if version < 2 or offsets != 8:
        raise StoreCorruptError(f"{path}: unexpected HDF5 superblock version {version}")
    if lookup3(raw[:-4]) != crc:
        raise StoreCorruptError(f"{path}: HDF5 superblock checksum mismatch")
    try:
        if eof > os.fstat(fd).st_size:
            os.ftruncate(fd, eof)
        if flags == 0:
            return
        eof = max(eof, os.fstat(fd).st_size)
        body = SUPERBLOCK.pack(sig, version, offsets, lengths, 0, base, extension, eof, root, 0)
        oscalls.pwrite_all(fd, body[:-4] + struct.pack("<I", lookup3(body[:-4])), position)
    except OSError as exc:
        raise StoreWriteError.from_os_error(path, "opening for writing", exc) from None


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 hashlittle, the checksum of HDF5 superblocks v2/v3."""
    mask = 0xFFFFFFFF

    def rot(x, k):
        return ((x << k) | (x >> (32 - k))) & mask

    a = b = c = (0xDEADBEEF + len(data) + initval) & mask
    words = data + bytes(-len(data) % 12)
    blocks = max(0, -(-len(data) // 12) - 1)
    for i in range(0, blocks * 12, 12):
        a = (a + int.from_bytes(words[i:i + 4], "little")) & mask
        b = (b + int.from_bytes(words[i + 4:i + 8], "little")) & mask
        c = (c + int.from_bytes(words[i + 8:i + 12], "little")) & mask
        a = (a - c) & mask; a ^= rot(c, 4); c = (c + b) & mask    # noqa: E702
        b = (b - a) & mask; b ^= rot(a, 6); a = (a + c) & mask    # noqa: E702
        c = (c - b) & mask; c ^= rot(b, 8); b = (b + a) & mask    # noqa: E702
        a = (a - c) & mask; a ^= rot(c, 16); c = (c + b) & mask   # noqa: E702
        b = (b - a) & mask; b ^= rot(a, 19); a = (a + c) & mask   # noqa: E702
        c = (c - b) & mask; c ^= rot(b, 4); b = (b + a) & mask    # noqa: E702
    if not data:
        return c
    i = blocks * 12
    a = (a + int.from_bytes(words[i:i + 4], "little")) & mask
    b = (b + int.from_bytes(words[i + 4:i + 8], "little")) & mask
    c = (c + int.from_bytes(words[i + 8:i + 12], "little")) & mask
    c ^= b; c = (c - rot(b, 14)) & mask   # noqa: E702
    a ^= c; a = (a - rot(c, 11)) & mask   # noqa: E702
    b ^= a; b = (b - rot(a, 25)) & mask   # noqa: E702
    c ^= b; c = (c - rot(b, 16)) & mask   # noqa: E702
    a ^= c; a = (a - rot(c, 4)) & mask    # noqa: E702
    b ^= a; b = (b - rot(a, 14)) & mask   # noqa: E702
    c ^= b; c = (c - rot(b, 24)) & mask   # noqa: E702
    return c
